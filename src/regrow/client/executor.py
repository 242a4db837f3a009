"""``Client.get_executor()``: the cluster as a concurrent.futures.Executor.

It keeps the contract of the standard library's executors, with the differences a
remote cluster makes (the client hears when a task finishes, not when it starts):

- A future stays PENDING until its task's outcome reaches the client (``running()``
  is True only while a finished task's result is being fetched). So ``cancel()``
  succeeds until then, and cancels the task on the cluster: one not started never
  runs; one already running on a worker finishes there, and its result is dropped.
- ``shutdown(cancel_futures=True)`` therefore cancels every future not finished yet.
  Cancelled futures report ``cancelled()`` and ``done()``, their ``result()`` raises
  ``concurrent.futures.CancelledError``, and ``wait``/``as_completed`` count them done.
- ``map(..., chunksize=n)`` sends ``n`` calls per task, as ProcessPoolExecutor does
  (an exception then surfaces when its chunk is reached); ``buffersize=`` (Python
  3.14's) keeps at most that many tasks in flight and reads the inputs lazily.
- Done-callbacks run in the client's callback thread: they must not wait for the
  result of another future of the same client.

The keywords of ``get_executor(**kwargs)`` (``workers``, ``retries``, ``priority``,
``pure``) apply to every task; ``submit(fn, ..., workers=...)`` (and ``key``,
``retries``, ``priority``, ``pure``) sets them for one task, as dask's executor does:
those names never reach ``fn``. Every other keyword does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from regrow.client.submission import funcname

if TYPE_CHECKING:
    from regrow.client.client import Client
    from regrow.client.futures import Future

logger = logging.getLogger("regrow.client")

# Options of Client.submit that the executor takes from submit()'s keywords.
_OPTIONS = frozenset({"key", "pure", "workers", "retries", "priority"})
# ...and those that may be set for every task, in get_executor(**kwargs).
_EXECUTOR_OPTIONS = _OPTIONS - {"key"}
# Parameters of Client.submit that a keyword meant for ``fn`` would collide with.
_CLASHING = frozenset({"self", "func"})
# Keywords of the standard library's executors that size or set up a local pool.
_POOL_KEYWORDS = frozenset(
    {"max_workers", "thread_name_prefix", "initializer", "initargs", "mp_context"}
)


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """Run on a worker: ``fn`` over a chunk of ``map``'s argument tuples."""
    return [fn(*args) for args in chunk]


class ExecutorFuture(concurrent.futures.Future[Any]):
    """A ``concurrent.futures.Future`` of a task on the cluster; ``cancel()`` cancels
    the task too."""

    def __init__(self, executor: ClientExecutor) -> None:
        super().__init__()
        self._executor = executor
        self._remote: Future | None = None

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        remote = self._remote
        if remote is not None:
            self._executor._cancel_remote([remote])
        return True

    def _cancel_here(self) -> Future | None:
        """Cancel this future alone: its task, for the caller to cancel, or None."""
        return self._remote if super().cancel() else None


class ClientExecutor(concurrent.futures.Executor):
    """Each ``submit`` becomes a (non-pure) task; the returned future is a real
    ``concurrent.futures.Future``, so ``concurrent.futures.wait``/``as_completed``
    work unchanged."""

    def __init__(self, client: Client, **submit_kwargs: Any) -> None:
        if getattr(client, "asynchronous", False):
            raise RuntimeError(
                "get_executor() needs a synchronous Client (an asynchronous one's futures "
                "are awaited, not waited for)"
            )
        pool = sorted(_POOL_KEYWORDS.intersection(submit_kwargs))
        if pool:
            raise TypeError(
                f"get_executor() takes no {', '.join(pool)}: the cluster's worker threads "
                "run its tasks (size the cluster instead)"
            )
        unknown = sorted(set(submit_kwargs) - _EXECUTOR_OPTIONS)
        if unknown:
            raise TypeError(
                f"get_executor() got unexpected keyword(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(_EXECUTOR_OPTIONS))}"
            )
        self._client = client
        self._kwargs = {"pure": False, **submit_kwargs}
        self._lock = threading.Lock()
        # Futures whose task has not settled yet, with the task's Future.
        self._live: set[ExecutorFuture] = set()
        self._shutdown = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        options = {k: kwargs.pop(k) for k in _OPTIONS.intersection(kwargs)}
        clashing = {k: kwargs.pop(k) for k in _CLASHING.intersection(kwargs)}
        call = functools.partial(fn, **clashing) if clashing else fn
        if clashing and "key" not in options:
            options["key"] = f"{funcname(fn)}-{uuid.uuid4().hex}"
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            remote = self._client.submit(call, *args, **{**self._kwargs, **options}, **kwargs)
            local = ExecutorFuture(self)
            local._remote = remote
            self._live.add(local)
        remote.add_done_callback(functools.partial(self._settle, local))
        return local

    def _settle(self, local: ExecutorFuture, remote: Future) -> None:
        """The task settled: so does ``local`` (in the client's callback thread)."""
        try:
            if remote.cancelled():
                # Cancelled on the cluster (by us, or by a cancel() or restart elsewhere).
                local._cancel_here()
            if not local.set_running_or_notify_cancel():
                return  # cancelled: now waiters see it done, too
            exc = remote.exception()
            if exc is not None:
                local.set_exception(exc)
            else:
                local.set_result(remote.result())
        except BaseException as err:  # delivery itself failed: the caller must see it
            if not local.done():
                local.set_exception(err)
        finally:
            local._remote = None
            with self._lock:
                self._live.discard(local)

    def _cancel_remote(self, remotes: list[Future]) -> None:
        try:
            self._client.cancel(remotes)
        except Exception as exc:  # the client closed: its tasks are gone anyway
            logger.info("could not cancel %d executor tasks: %s", len(remotes), exc)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """``map(fn, *iterables)`` on the cluster: results in order, lazily.

        ``timeout`` counts from this call: ``next()`` raises TimeoutError once it passed
        with the next result not in, and the calls not finished are cancelled (as they
        are when the iterator is closed early). ``chunksize`` calls go in one task.
        ``buffersize`` limits the tasks in flight; without it every call is sent now.
        """
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        end = None if timeout is None else time.monotonic() + timeout
        calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        units: Iterator[Any]
        if chunksize == 1:
            units = calls

            def send(args: Any) -> concurrent.futures.Future[Any]:
                return self.submit(fn, *args)

        else:
            units = iter(lambda: list(itertools.islice(calls, chunksize)), [])

            def send(args: Any) -> concurrent.futures.Future[Any]:
                return self.submit(_run_chunk, fn, args)  # args: a chunk of tuples

        fs: collections.deque[concurrent.futures.Future[Any]] = collections.deque()
        try:
            for unit in itertools.islice(units, buffersize) if buffersize else units:
                fs.append(send(unit))
        except BaseException:  # a call that cannot be sent: the ones sent are no use
            for future in fs:
                future.cancel()
            raise
        return _results(fs, units if buffersize else None, send, end, chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks after this. ``cancel_futures`` cancels every future not finished
        (see the module's notes); ``wait`` waits until every future is done."""
        with self._lock:
            self._shutdown = True
            live = list(self._live)
        if cancel_futures and live:
            doomed = [r for r in (f._cancel_here() for f in live) if r is not None]
            if doomed:
                self._cancel_remote(doomed)
        if wait and live:
            concurrent.futures.wait(live)


def _results(
    fs: collections.deque[concurrent.futures.Future[Any]],
    units: Iterator[Any] | None,
    send: Callable[[Any], concurrent.futures.Future[Any]],
    end: float | None,
    chunked: bool,
) -> Iterator[Any]:
    """``map``'s results, in order, holding none once yielded; with ``units``, each
    result taken out sends the next unit of work first."""
    try:
        while fs:
            if units is not None:
                unit = next(units, None)
                if unit is not None:
                    fs.append(send(unit))
                del unit
            # popleft, not a loop variable: a consumed future must not stay referenced.
            if chunked:
                values = _result_or_cancel(fs.popleft(), end)
                values.reverse()
                while values:
                    yield values.pop()
            else:
                yield _result_or_cancel(fs.popleft(), end)
    finally:
        for future in fs:
            future.cancel()


def _result_or_cancel(future: concurrent.futures.Future[Any], end: float | None) -> Any:
    try:
        return future.result(None if end is None else end - time.monotonic())
    finally:
        future.cancel()
