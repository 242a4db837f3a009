"""Futures: the client's handle on a remote result, plus ``wait`` and ``as_completed``.

A ``Future`` is a reference: while any Future for a key lives in the client,
the scheduler keeps the key's result. Status changes arrive from the IO thread (or,
for an asynchronous client, in its event loop); reads and waits happen in user
threads, or are awaited in an event loop without blocking it. Names follow
concurrent.futures and dask.distributed.

A Future asks its client for what it cannot do alone only through ``FutureOwner``
(holding and releasing its key, fetching its value, cancelling, running callbacks):
this module must not import the client module, nor touch a client's internals.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import cloudpickle

from regrow import interrupts
from regrow.client.loop import deferred
from regrow.errors import (
    CancelledError,
    FutureLostError,
    KilledWorker,
    LostDataError,
    RemoteError,
    SchedulerLostError,
    TooManyTasksError,
    explain,
)

PENDING = "pending"
FINISHED = "finished"
ERROR = "error"
CANCELLED = "cancelled"
LOST = "lost"

ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"


def _when_settled(states: list[FutureState], stop_on_error: bool, fire: Callable[[], None]) -> bool:
    """Call ``fire()`` (from any thread, maybe more than once) when every state is
    settled, or with ``stop_on_error`` when one errs or is cancelled; or return True at
    once, without calling it, if that is so already."""
    failed = (ERROR, CANCELLED)
    waiting = [s for s in states if not s.done()]
    if not waiting or (stop_on_error and any(s.done() and s.status in failed for s in states)):
        return True
    lock = threading.Lock()
    pending = len(waiting)

    def one(state: FutureState) -> None:
        nonlocal pending
        with lock:
            pending -= 1
            if pending == 0 or (stop_on_error and state.status in failed):
                fire()

    for state in waiting:
        state.add_listener(one)  # called at once if it settled meanwhile
    return False


def settle_all(
    states: list[FutureState], timeout: float | None, stop_on_error: bool = False
) -> bool:
    """Wait until every state is settled (or, with ``stop_on_error``, one errs or is
    cancelled): whether that happened within ``timeout`` s.

    One wake-up for the lot: waiting on each state in turn would wake this thread once
    per result, each time taking the GIL from the thread that delivers them.
    """
    done = threading.Event()
    return _when_settled(states, stop_on_error, done.set) or done.wait(timeout)


def _loop_waker() -> tuple[asyncio.Future[None], Callable[[], None]]:
    """A future of the running event loop, and a function that completes it from any
    thread: state listeners run in the IO thread of a synchronous client, or in the
    event loop of an asynchronous one."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    owner = threading.get_ident()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def fire() -> None:
        # The loop may have closed meanwhile: then nobody waits any more.
        with contextlib.suppress(RuntimeError):
            if threading.get_ident() == owner:
                wake()  # in the loop itself: no wake-up through its self-pipe
            else:
                loop.call_soon_threadsafe(wake)

    return waiter, fire


async def _wait_for(waiter: asyncio.Future[None], timeout: float | None) -> bool:
    """Await ``waiter`` for up to ``timeout`` s: whether it completed."""
    try:
        async with asyncio.timeout(timeout):
            await waiter
    except TimeoutError:
        return False
    return True


async def settle_all_async(
    states: list[FutureState], timeout: float | None, stop_on_error: bool = False
) -> bool:
    """``settle_all`` for a coroutine: awaits without blocking the running loop."""
    waiter, fire = _loop_waker()
    return _when_settled(states, stop_on_error, fire) or await _wait_for(waiter, timeout)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class FutureState:
    """What the client knows of one key; shared by all Futures for that key."""

    __slots__ = (
        "_done",
        "_event",
        "_exception",
        "_lock",
        "blame",
        "exception_blob",
        "inline",
        "kind",
        "listeners",
        "nbytes",
        "status",
        "text",
        "traceback_text",
        "type_name",
        "workers",
    )

    def __init__(self) -> None:
        self.status = PENDING
        self._done = False
        # Made only when somebody waits on an unsettled state: a map of 100,000 tasks
        # whose results are gathered once done should not build 100,000 Conditions.
        self._event: threading.Event | None = None
        self._lock = threading.Lock()
        self.listeners: list[Callable[[FutureState], None]] = []
        self.type_name = ""
        self.nbytes = 0
        self.exception_blob = b""
        self.traceback_text = ""
        self.text = ""
        self.kind = ""
        self.blame = ""
        self.workers: tuple[str, ...] = ()
        self._exception: BaseException | None = None
        # A small result, serialized, as the scheduler sent it with the news.
        self.inline: bytes | None = None

    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until settled or ``timeout`` s passed; whether it is settled."""
        with self._lock:
            if self._done:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def _unsettle(self, status: str) -> None:
        with self._lock:
            self.status = status
            self.inline = None
            self._done = False
            if self._event is not None:
                self._event.clear()

    def _settle(self, status: str) -> None:
        with self._lock:
            self.status = status
            self._done = True
            if self._event is not None:
                self._event.set()
            listeners, self.listeners = self.listeners, []
        for fn in listeners:
            fn(self)

    def finish(self, type_name: str = "", nbytes: int = 0, inline: bytes | None = None) -> None:
        self.type_name = type_name
        self.nbytes = nbytes
        self.inline = inline
        self._exception = None
        self._settle(FINISHED)

    def set_error(
        self,
        *,
        exception: bytes,
        traceback: bytes,
        text: str,
        kind: str = "",
        blame: str = "",
        workers: tuple[str, ...] = (),
    ) -> None:
        self.exception_blob = exception
        self.traceback_text = traceback.decode(errors="replace")
        self.text = text
        self.kind = kind
        self.blame = blame
        self.workers = workers
        self._exception = None
        self._settle(ERROR)

    def set_local_error(self, exc: BaseException) -> None:
        self.exception_blob = b""
        self.text = explain(exc)
        self._exception = exc
        self._settle(ERROR)

    def cancel(self) -> None:
        self._settle(CANCELLED)

    def lost(self) -> None:
        self._unsettle(LOST)

    def reset(self) -> None:
        self._unsettle(PENDING)

    def add_listener(self, fn: Callable[[FutureState], None]) -> None:
        """Call ``fn(state)`` once the state settles (now, if it has)."""
        with self._lock:
            if not self._done:
                self.listeners.append(fn)
                return
        fn(self)

    def exception(self) -> BaseException:
        """The exception to raise for an erred key: a new instance on every call.

        Never a cached one: raising an exception attaches a traceback to it, whose
        frames hold the Future being waited on; kept here, that would keep the Future,
        and so its key on the cluster, alive for as long as the client runs.
        """
        if self._exception is not None:
            return copy.copy(self._exception)
        exc: BaseException
        if self.kind == "KilledWorker":
            exc = KilledWorker(self.blame, list(self.workers), self.text)
        elif self.kind == "LostDataError":
            exc = LostDataError(self.text)
        elif self.kind == "FutureLostError":
            exc = FutureLostError(self.text)
        elif self.kind == "SchedulerLostError":
            exc = SchedulerLostError(self.text)
        elif self.kind == "TooManyTasksError":
            exc = TooManyTasksError(self.text)
        else:
            try:
                exc = cloudpickle.loads(self.exception_blob)
                if not isinstance(exc, BaseException):
                    raise TypeError("not an exception")
            except Exception:
                type_name, _, message = self.text.partition(": ")
                exc = RemoteError(type_name or "Exception", message)
            if self.traceback_text and hasattr(exc, "add_note"):
                exc.add_note(f"remote traceback:\n{self.traceback_text}")
        return exc


class FutureOwner(Protocol):
    """What a Future needs of the client that holds it: all it ever calls on it.

    ``Client`` implements it. A Future counts as a hold on its key from creation to
    release (or garbage collection); the owner keeps one ``FutureState`` per key.
    """

    @property
    def asynchronous(self) -> bool:
        """Whether the owner's blocking methods return coroutines to await."""
        ...

    @property
    def scheduler_address(self) -> str:
        """The scheduler the keys belong to: what a pickled Future carries."""
        ...

    def hold_key(self, key: str) -> FutureState:
        """Count one more Future for ``key``; the state all its Futures share."""
        ...

    def release_key(self, key: str) -> None:
        """Count one Future fewer for ``key``; with none left the scheduler may forget
        it. Called from any thread, also from ``__del__``."""
        ...

    def want_keys(self, keys: list[str]) -> None:
        """Ask the scheduler for the news of ``keys`` (Futures made here, unasked)."""
        ...

    def fetch_values(self, futures: list[Future], timeout: float | None = None) -> dict[str, Any]:
        """The values of finished futures, by key; a key left out was lost meanwhile."""
        ...

    async def fetch_values_async(
        self, futures: list[Future], timeout: float | None = None
    ) -> dict[str, Any]:
        """``fetch_values``, awaited."""
        ...

    def holders(self, key: str, timeout: float) -> list[str]:
        """The workers that hold ``key`` now, asked of the scheduler within ``timeout``
        ([] if unknown, or if it cannot be asked from here)."""
        ...

    def run_done_callback(self, fn: Callable[[Future], Any], future: Future) -> None:
        """Call ``fn(future)`` in the owner's callback thread (never the IO thread)."""
        ...

    def cancel(self, futures: Future | Iterable[Future], force: bool = False) -> None:
        """``Client.cancel``: awaitable on an asynchronous owner."""
        ...

    def retry(self, futures: Future | Iterable[Future]) -> None:
        """``Client.retry``: awaitable on an asynchronous owner."""
        ...

    def fire_and_forget_keys(self, keys: list[str]) -> None:
        """Have the scheduler compute ``keys`` even once no Future holds them
        (``fire_and_forget``); sent after every submission made before."""
        ...


# How an unpickled Future finds its client: the client module sets this when it is
# imported (this module must not import it). Unset, this process has no client.
_owner_lookup: Callable[[str], FutureOwner | None] | None = None


def set_owner_lookup(lookup: Callable[[str], FutureOwner | None]) -> None:
    """Install ``lookup(scheduler_address)``: the live owner an unpickled Future of that
    scheduler belongs to, or None."""
    global _owner_lookup
    _owner_lookup = lookup


class Future:
    """A remote result, named by ``key``. Picklable: it travels as its key."""

    __slots__ = ("__weakref__", "_client", "_state", "key")

    # dask recognises a Future inside its graphs and delayed calls by this mark, and
    # names it by its key when it hashes a graph.
    __dask_future__ = True

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("regrow.Future", self.key)

    def __init__(self, key: str, client: FutureOwner) -> None:
        self.key = key
        self._client = client
        self._state = client.hold_key(key)

    @property
    def client(self) -> FutureOwner:
        return self._client

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == CANCELLED

    def _asynchronous(self) -> bool:
        """Whether its client is asynchronous (False once released: it has none)."""
        client = self._client
        return client is not None and client.asynchronous

    def _wait(self, timeout: float | None) -> None:
        if not self._state.wait(timeout):
            raise TimeoutError(f"future {self.key!r} not done within {timeout} s")

    async def _wait_async(self, timeout: float | None) -> None:
        if not await settle_all_async([self._state], timeout):
            raise TimeoutError(f"future {self.key!r} not done within {timeout} s")

    def _raise_if_failed(self) -> None:
        """Raise what ``result()`` raises for a settled future that erred or was cancelled.

        Never binds the exception to a local: raised, it would hold this frame, which
        would hold it, a cycle keeping the Future (and its key) until a GC pass.
        """
        st = self._state
        if st.status == ERROR:
            raise st.exception()
        if st.status == CANCELLED:
            raise CancelledError(f"future {self.key!r} was cancelled")

    def result(self, timeout: float | None = None) -> Any:
        """The task's value, once it is there; raises its exception if it erred.

        On an asynchronous client it returns a coroutine to await instead.
        """
        if self._asynchronous():
            return self._result_async(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._wait(_left(deadline))
            self._raise_if_failed()
            values = self._client.fetch_values([self], timeout=_left(deadline))
            if self.key in values:
                return values[self.key]
            # The data vanished between 'finished' and the fetch; wait for the recompute.

    async def _result_async(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            await self._wait_async(_left(deadline))
            self._raise_if_failed()
            values = await self._client.fetch_values_async([self], timeout=_left(deadline))
            if self.key in values:
                return values[self.key]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The erred task's exception (None if it finished); awaitable on an
        asynchronous client."""
        if self._asynchronous():
            return deferred(self._exception_async(timeout))
        self._wait(timeout)
        return self._exception_now()

    async def _exception_async(self, timeout: float | None) -> BaseException | None:
        await self._wait_async(timeout)
        return self._exception_now()

    def _exception_now(self) -> BaseException | None:
        if self._state.status == CANCELLED:
            raise CancelledError(f"future {self.key!r} was cancelled")
        if self._state.status == ERROR:
            return self._state.exception()
        return None

    def traceback(self, timeout: float | None = None) -> str | None:
        """The remote traceback of an erred task, as text (None if it did not err);
        awaitable on an asynchronous client."""
        if self._asynchronous():
            return deferred(self._traceback_async(timeout))
        self._wait(timeout)
        return self._traceback_now()

    async def _traceback_async(self, timeout: float | None) -> str | None:
        await self._wait_async(timeout)
        return self._traceback_now()

    def _traceback_now(self) -> str | None:
        if self._state.status != ERROR:
            return None
        return self._state.traceback_text or None

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` when the future settles, in a callback thread."""
        client = self._client

        def listener(_: FutureState) -> None:
            client.run_done_callback(fn, self)

        self._state.add_listener(listener)

    def cancel(self, force: bool = False) -> None:
        """Cancel this future (``Client.cancel``: awaitable on an asynchronous client)."""
        return self._client.cancel([self], force=force)

    def retry(self) -> None:
        """Compute this future's task again if it erred, as dask.distributed's
        (``Client.retry``: awaitable on an asynchronous client). It is pending once
        this returns; a future that did not err is left as it is."""
        client = self._client
        if client is None:
            raise ValueError(f"future {self.key!r} was released: it cannot be retried")
        return client.retry([self])

    def release(self) -> None:
        """Drop this future's hold on its key now (instead of at garbage collection)."""
        client, self._client = self._client, None  # type: ignore[assignment]
        if client is not None:
            client.release_key(self.key)

    def __del__(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            # interrupts.quietly, written out: this runs for every Future.
            try:
                client.release_key(self.key)
            except KeyboardInterrupt:  # the user's Ctrl-C, not ours to drop
                interrupts.pass_on()
            except Exception:  # interpreter shutdown: nothing left to tell
                pass

    def __reduce__(self) -> tuple[Callable[..., Future], tuple[str, str]]:
        return (_rebuild_future, (self.key, self._client.scheduler_address))

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future``: its result, without blocking the running event loop (of
        an asynchronous client, or any loop for a synchronous client's future)."""
        return self._result_async().__await__()

    def __repr__(self) -> str:
        extra = f", type: {self._state.type_name}" if self._state.type_name else ""
        return f"<Future: {self.status}{extra}, key: {self.key}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: status (coloured), type and size once known, the worker
        that holds it (asked of the scheduler, briefly), key."""
        from html import escape

        colour = {"finished": "green", "error": "red", "cancelled": "grey"}.get(
            self.status, "#b45309"
        )
        parts = [f'<span style="color:{colour}">{escape(self.status)}</span>']
        if self._state.type_name:
            parts.append(f"type: {escape(self._state.type_name)}")
        if self._state.nbytes:
            parts.append(f"{self._state.nbytes:,} bytes")
        if self.status == "finished":
            holders = self._client.holders(self.key, timeout=2.0)
            if holders:
                parts.append(f"worker: {escape(', '.join(holders))}")
        return f"<strong>Future:</strong> {escape(self.key)} " + ", ".join(parts)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Future) and other.key == self.key


def _rebuild_future(key: str, scheduler_address: str) -> Future:
    owner = None if _owner_lookup is None else _owner_lookup(scheduler_address)
    if owner is None:
        raise ValueError(
            f"a Future of the scheduler at {scheduler_address} was unpickled in a process "
            "with no client connected to it"
        )
    future = Future(key, owner)
    owner.want_keys([key])
    return future


class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def _as_list(fs: Future | Iterable[Future]) -> list[Future]:
    if isinstance(fs, Future):
        return [fs]
    out = list(fs)
    for f in out:
        if not isinstance(f, Future):
            raise TypeError(f"expected regrow Futures, got {type(f).__name__}")
    return out


def wait(
    fs: Future | Iterable[Future],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDoneFutures:
    """Wait until futures settle; raises TimeoutError if ``timeout`` passes first.

    Futures of an asynchronous client: returns a coroutine to await instead.
    """
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(
            f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or FIRST_EXCEPTION, "
            f"got {return_when!r}"
        )
    futures = _as_list(fs)
    if futures and futures[0]._asynchronous():
        return deferred(_wait_async(futures, timeout, return_when))
    signal = threading.Event()
    _when_returning(futures, return_when, signal.set)
    if not signal.wait(timeout):
        raise _wait_timeout(futures, timeout)
    return _done_and_not(futures)


async def _wait_async(
    futures: list[Future], timeout: float | None, return_when: str
) -> DoneAndNotDoneFutures:
    waiter, fire = _loop_waker()
    _when_returning(futures, return_when, fire)
    if not await _wait_for(waiter, timeout):
        raise _wait_timeout(futures, timeout)
    return _done_and_not(futures)


def _wait_timeout(futures: list[Future], timeout: float | None) -> TimeoutError:
    left = sum(not f.done() for f in futures)
    return TimeoutError(f"{left} of {len(futures)} futures not done within {timeout} s")


def _done_and_not(futures: list[Future]) -> DoneAndNotDoneFutures:
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, set(futures) - done)


def _when_returning(futures: list[Future], return_when: str, fire: Callable[[], None]) -> None:
    """Call ``fire()`` (from any thread, maybe more than once) once ``wait`` may return."""
    lock = threading.Lock()
    counts = {"done": 0, "erred": 0}
    n = len(futures)

    def poke(state: FutureState) -> None:
        # Called once per future as it settles: O(1), so waiting on many futures is O(n).
        with lock:
            counts["done"] += 1
            counts["erred"] += state.status == ERROR
            done, erred = counts["done"], counts["erred"]
        if (
            done == n
            or (return_when == FIRST_COMPLETED)
            or (return_when == FIRST_EXCEPTION and erred)
        ):
            fire()

    if n == 0:
        fire()
    for f in futures:
        f._state.add_listener(poke)


def _futures_arg(futures: Any, what: str) -> list[Future]:
    """``futures`` (one Future, or an iterable of them) as a list; TypeError naming
    ``what`` for anything else."""
    if isinstance(futures, Future):
        return [futures]
    if isinstance(futures, str | bytes | dict) or not isinstance(futures, Iterable):
        raise TypeError(f"{what} takes regrow Futures, got {type(futures).__name__}")
    out = list(futures)
    for f in out:
        if not isinstance(f, Future):
            raise TypeError(f"{what} takes regrow Futures, got a {type(f).__name__} among them")
    return out


def fire_and_forget(obj: Any) -> None:
    """Compute the tasks of ``obj``'s futures even once nothing holds them, as
    dask.distributed's: the scheduler keeps them running after every Future for them is
    gone, and after their client has closed, then lets their results go once each is
    done (in memory or erred). ``obj``: a Future, lists, tuples, sets or dicts of them
    (nested as deep as you like; other values in them are skipped), or a dask
    collection persisted on a regrow client."""
    futures = _fired(obj)
    by_owner: dict[int, tuple[FutureOwner, dict[str, None]]] = {}
    for f in futures:
        owner = f._client
        if owner is None:
            raise ValueError(f"fire_and_forget(): future {f.key!r} was released")
        by_owner.setdefault(id(owner), (owner, {}))[1][f.key] = None
    for owner, keys in by_owner.values():
        owner.fire_and_forget_keys(list(keys))


def _fired(obj: Any) -> list[Future]:
    """The futures in ``fire_and_forget``'s argument; TypeError if it can hold none."""
    if not (
        isinstance(obj, Future | list | tuple | set | frozenset | dict)
        or hasattr(obj, "__dask_graph__")
    ):
        raise TypeError(
            "fire_and_forget() takes a Future, lists, tuples, sets or dicts of Futures, "
            f"or a persisted dask collection, got {type(obj).__name__}"
        )
    out: list[Future] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Future):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        elif hasattr(item, "__dask_graph__"):
            # A persisted collection: its graph's values are Futures, or dask's nodes
            # wrapping one (DataNode.value).
            graph = item.__dask_graph__()
            for value in dict(graph or {}).values():
                inner = getattr(value, "value", None)
                stack.append(value if isinstance(value, Future) else inner)
    return out


class as_completed(Iterator[Any], AsyncIterator[Any]):
    """Iterate over futures as they complete (any order), as dask.distributed's.

    Each future is yielded once per time it was added (``add``, ``update``), which may
    be at any time, also while iterating; iteration ends once every future added is
    yielded. ``with_results=True`` yields ``(future, result)`` pairs; an erred
    future's exception is then raised, or with ``raise_errors=False`` yielded in place
    of the result (a cancelled future gives its CancelledError, raising nothing).
    ``timeout``: TimeoutError when no future completes within that many seconds of a
    wait (each ``next``, or batch, waits up to that long: the pipeline driver polls
    with it). ``batches()`` yields lists of all the futures completed so
    far instead, at once; ``next_batch``, ``count``, ``is_empty``, ``has_ready`` and
    ``clear`` as dask's. Safe from several threads; ``async for`` iterates without
    blocking the running event loop.
    """

    def __init__(
        self,
        futures: Iterable[Future] | Future | None = None,
        with_results: bool = False,
        raise_errors: bool = True,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None:
            if not isinstance(timeout, int | float) or isinstance(timeout, bool):
                raise TypeError(
                    f"as_completed() timeout= takes seconds or None, got {type(timeout).__name__}"
                )
            if not timeout >= 0:
                raise ValueError(f"as_completed() timeout= must be >= 0 seconds, got {timeout!r}")
        self.with_results = bool(with_results)
        self.raise_errors = bool(raise_errors)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        # Completed, not yet yielded, in the order they completed.
        self._ready: collections.deque[Future] = collections.deque()
        # Added and not completed yet.
        self._waiting = 0
        # Bumped by clear(): futures added before then are not waited for any more.
        self._epoch = 0
        # What wakes each ``async for`` waiting for a future (see _take_async).
        self._wakers: list[Callable[[], None]] = []
        if futures is not None:
            self.update(futures)

    # ------------------------------------------------------------- adding
    def add(self, future: Future) -> None:
        """Yield ``future`` too, once it completes (at once if it has)."""
        if not isinstance(future, Future):
            raise TypeError(
                f"as_completed.add() takes a regrow Future, got {type(future).__name__}"
            )
        with self._lock:
            self._waiting += 1
            epoch = self._epoch

        def arrived(_: FutureState) -> None:
            with self._lock:
                if self._epoch != epoch:
                    return  # cleared meanwhile
                self._waiting -= 1
                self._ready.append(future)
                self._arrived.notify_all()
                wakers, self._wakers = self._wakers, []
            for fire in wakers:
                fire()

        future._state.add_listener(arrived)  # called at once if it settled already

    def update(self, futures: Iterable[Future] | Future) -> None:
        """``add`` each of ``futures``."""
        for f in _futures_arg(futures, "as_completed.update()"):
            self.add(f)

    def clear(self) -> None:
        """Forget every future added: those completed not yet yielded, and those still
        to complete (they will not be yielded); iteration then ends."""
        with self._lock:
            self._epoch += 1
            self._ready.clear()
            self._waiting = 0
            self._arrived.notify_all()
            wakers, self._wakers = self._wakers, []
        for fire in wakers:
            fire()

    # ------------------------------------------------------------ looking
    def count(self) -> int:
        """How many futures are still to be yielded: completed or not."""
        with self._lock:
            return self._waiting + len(self._ready)

    def is_empty(self) -> bool:
        return self.count() == 0

    def has_ready(self) -> bool:
        """Whether a completed future waits to be yielded (``next`` would not block)."""
        with self._lock:
            return bool(self._ready)

    def _timed_out(self) -> TimeoutError:
        """What to raise past the deadline (the caller holds the lock)."""
        return TimeoutError(
            f"as_completed: {self._waiting} future(s) not completed within {self.timeout} s"
        )

    # ------------------------------------------------------- synchronous
    def __iter__(self) -> as_completed:
        return self

    def __next__(self) -> Any:
        with self._lock:
            self._wait_ready()
            future = self._ready.popleft()
        return self._pair(future) if self.with_results else future

    def _deadline(self) -> float | None:
        """When a wait starting now gives up (``timeout``, read at each wait)."""
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _wait_ready(self) -> None:
        """Holding the lock: block until a completed future is ready; StopIteration when
        none is to come, TimeoutError after ``timeout`` s."""
        deadline = self._deadline()
        while not self._ready:
            if not self._waiting:
                raise StopIteration
            left = _left(deadline)
            if left is not None and left <= 0:
                raise self._timed_out()
            self._arrived.wait(left)

    def next_batch(self, block: bool = True) -> list[Any]:
        """Every future completed and not yet yielded (with its result if
        ``with_results``); with ``block``, waits for one first if none is, unless none
        is to come (then []). With ``raise_errors``, an erred future's exception is
        raised when it comes first; one later in the batch ends it, to be raised next."""
        with self._lock:
            if block:
                try:
                    self._wait_ready()
                except StopIteration:
                    return []
            batch = list(self._ready)
            self._ready.clear()
        if not self.with_results:
            return batch
        return self._pairs(batch)

    def batches(self) -> Iterator[list[Any]]:
        """Yield lists of the futures completed so far (or ``(future, result)`` pairs),
        each as soon as one is there, until every future added is yielded."""
        while True:
            batch = self.next_batch(block=True)
            if not batch:
                return
            yield batch

    def _pair(self, future: Future) -> tuple[Future, Any]:
        if future.status in (ERROR, CANCELLED):
            return self._failed(future)
        # Completed: ``timeout`` bounds waiting for completion, not fetching values.
        return future, future.result()

    def _failed(self, future: Future) -> tuple[Future, BaseException]:
        """The pair of an erred or cancelled future; raises an erred one's exception
        with ``raise_errors``."""
        st = future._state
        if st.status == CANCELLED:
            return future, CancelledError(f"future {future.key!r} was cancelled")
        if self.raise_errors:
            raise st.exception()
        return future, st.exception()

    def _split(self, batch: list[Future]) -> list[Future]:
        """With ``raise_errors``: the batch up to its first erred future (that one, when
        first), the rest put back to be yielded next."""
        if not self.raise_errors:
            return batch
        cut = next((i for i, f in enumerate(batch) if f.status == ERROR), None)
        if cut is None:
            return batch
        keep, rest = batch[: max(cut, 1)], batch[max(cut, 1) :]
        if rest:
            with self._lock:
                self._ready.extendleft(reversed(rest))
        return keep

    def _pairs(self, batch: list[Future]) -> list[tuple[Future, Any]]:
        batch = self._split(batch)
        finished = [f for f in batch if f.status not in (ERROR, CANCELLED)]
        values: dict[str, Any] = {}
        for owner, fs in _by_owner(finished):  # one fetch per client for the lot
            values.update(owner.fetch_values(fs))
        out: list[tuple[Future, Any]] = []
        for f in batch:
            if f.key in values:
                out.append((f, values[f.key]))
            else:  # erred or cancelled; or lost since it finished: waited for again
                out.append(self._pair(f))
        return out

    # ------------------------------------------------------ asynchronous
    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        future = await self._take_async()
        if not self.with_results:
            return future
        if future.status in (ERROR, CANCELLED):
            return self._failed(future)
        return future, await future._result_async()

    async def _take_async(self) -> Future:
        deadline = self._deadline()
        while True:
            with self._lock:
                if self._ready:
                    return self._ready.popleft()
                if not self._waiting:
                    raise StopAsyncIteration
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise self._timed_out()
                waiter, fire = _loop_waker()
                self._wakers.append(fire)
            await _wait_for(waiter, left)  # woken, or timed out: look again


def _by_owner(futures: list[Future]) -> list[tuple[FutureOwner, list[Future]]]:
    """``futures`` grouped by the client that holds them (released ones left out)."""
    out: dict[int, tuple[FutureOwner, list[Future]]] = {}
    for f in futures:
        owner = f._client
        if owner is not None:
            out.setdefault(id(owner), (owner, []))[1].append(f)
    return list(out.values())
