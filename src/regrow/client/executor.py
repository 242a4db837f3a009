"""``Client.get_executor()``: the cluster as a concurrent.futures.Executor."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from regrow.errors import CancelledError

if TYPE_CHECKING:
    from regrow.client.client import Client
    from regrow.client.futures import Future


class ClientExecutor(concurrent.futures.Executor):
    """Each ``submit`` becomes a (non-pure) task; the returned future is a real
    ``concurrent.futures.Future``, so ``concurrent.futures.wait``/``as_completed``
    and ``Executor.map`` work unchanged."""

    def __init__(self, client: Client, **submit_kwargs: Any) -> None:
        self._client = client
        self._kwargs = {"pure": False, **submit_kwargs}
        self._lock = threading.Lock()
        self._live: dict[concurrent.futures.Future[Any], Future] = {}
        self._shutdown = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            remote = self._client.submit(fn, *args, **self._kwargs, **kwargs)
            local: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._live[local] = remote
        local.set_running_or_notify_cancel()

        def settle(f: Future) -> None:
            try:
                if f.cancelled():
                    # ``local`` is already running, so cancel() cannot settle it: fail it.
                    if not local.cancel():
                        local.set_exception(CancelledError(f"future {f.key!r} was cancelled"))
                    return
                exc = f.exception()
                if exc is not None:
                    local.set_exception(exc)
                else:
                    local.set_result(f.result())
            except BaseException as err:  # delivery itself failed: the caller must see it
                if not local.done():
                    local.set_exception(err)
            finally:
                with self._lock:
                    self._live.pop(local, None)

        remote.add_done_callback(settle)
        return local

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            live = dict(self._live)
        if cancel_futures and live:
            self._client.cancel(list(live.values()))
            for local in live:
                local.cancel()
        if wait:
            concurrent.futures.wait(list(live))
