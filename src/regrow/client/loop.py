"""Where a client's session runs: the IO loop thread, or the caller's own event loop.

A synchronous client's session lives in one daemon thread per process running an
asyncio loop (``LoopThread``); every such client shares it. Blocking calls hand a
coroutine to it and wait on the result. An asynchronous client's session lives in the
event loop that started it (``CallerLoop``): no thread; its methods return the
coroutines themselves. That is the whole sync facade: no method is written twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


def deferred(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` itself, typed as its result.

    An asynchronous client's blocking methods return their coroutine for the caller to
    await, where a synchronous client's return the result. Their annotations describe
    the synchronous client (as dask.distributed's do); this is the one place that says so.
    """
    return cast(T, coro)


async def within(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """Await ``coro``, cancelling it after ``timeout`` s (raising TimeoutError, as
    ``ClientLoop.run`` does for a synchronous client)."""
    if timeout is None:
        return await coro
    try:
        async with asyncio.timeout(timeout) as scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise TimeoutError(f"operation did not finish within {timeout} s") from None
        raise


class ClientLoop:
    """An event loop a client's session runs in, seen from any thread."""

    loop: asyncio.AbstractEventLoop
    _blocking_inside = "a blocking regrow call was made from inside the client's event loop"

    def in_loop(self) -> bool:
        """Whether the caller runs in this loop (and so must not block on it)."""
        raise NotImplementedError

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` in the loop; block this (other) thread until it is done."""
        if self.in_loop():
            coro.close()
            raise RuntimeError(self._blocking_inside)
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            # The same class as TimeoutError: one the coroutine raised is its own.
            if fut.done():
                return fut.result()
            fut.cancel()
            raise TimeoutError(f"operation did not finish within {timeout} s") from None

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` in the loop, from whichever event loop is awaiting (without
        blocking it: from another loop the work is handed over and its result awaited)."""
        if self.in_loop():
            return await coro
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("the client's event loop is closed")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in the loop soon; safe from any thread."""
        if self.loop.is_closed():
            return
        # The loop may close during interpreter shutdown; then there is no one to tell.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)


class CallerLoop(ClientLoop):
    """The running event loop an asynchronous client was started in (no thread)."""

    _blocking_inside = (
        "a blocking call was made from inside the event loop of an asynchronous "
        "regrow client: await it instead"
    )

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def in_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:  # no loop runs in this thread
            return False

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.in_loop():
            self.loop.call_soon(fn, *args)  # no wake-up needed: we are the loop
        else:
            super().call_soon(fn, *args)


class LoopThread(ClientLoop):
    _blocking_inside = (
        "a blocking regrow call was made from inside regrow's IO thread; "
        "call it from another thread (callbacks already run elsewhere)"
    )

    def __init__(self, name: str = "regrow-io") -> None:
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        self._started.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def in_loop(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.in_loop():
            raise RuntimeError("cannot stop the IO loop from inside it")

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.thread.is_alive():
            _shared = LoopThread()
        return _shared
