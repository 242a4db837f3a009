"""joblib on a regrow cluster: the ``"regrow"`` parallel backend.

::

    with joblib.parallel_config(backend="regrow"):
        results = Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

Each batch of calls that joblib dispatches becomes one (impure) regrow task, run on the
cluster of the current default client (``regrow.get_client()``, looked up at every
Parallel call) or of the one given as ``parallel_config(backend="regrow", client=c)``.

- ``n_jobs=-1`` (joblib's "all of them", and this backend's default) is the cluster's
  total number of worker threads, ``-2`` all but one, and so on; a positive ``n_jobs``
  is taken as it is (it bounds how many batches are in flight). ``n_jobs=1`` is joblib's
  "no parallelism": joblib then runs the calls itself, in this process.
- Results come back in order; a call that raises makes Parallel raise that exception
  (its original type, with the remote traceback as a note) after cancelling, on the
  cluster, every batch of the call not finished yet.
- An argument larger than ``scatter_threshold`` bytes (by regrow's size estimate: numpy
  arrays, pandas frames, bytes...) is scattered once per Parallel call and every task
  gets a reference to it, resolved on the worker; it is released when the call ends.
- Parallel calls made inside a task run on a local thread pool of that worker (at the
  next level of nesting, sequentially), never on the cluster: a task never waits for
  cluster threads that its siblings may all be holding.

Like joblib's own backends, one backend instance serves one Parallel call at a time.
Importing this module registers the backend; so does opening a regrow Client (when
joblib is installed).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

from joblib.parallel import (
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
    parallel_config,
    register_parallel_backend,
)

from regrow.client.client import Client, get_client
from regrow.client.futures import Future
from regrow.client.submission import funcname
from regrow.protocol.serialize import sizeof

__all__ = ["SCATTER_THRESHOLD", "RegrowBackend", "register"]

logger = logging.getLogger("regrow.joblib")

# Arguments estimated above this many bytes travel to the cluster once per Parallel call.
SCATTER_THRESHOLD = 1_000_000

# Types never worth measuring: their values are small whatever they hold.
_SMALL = frozenset({int, float, complex, bool, type(None), range, slice})

_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _run_calls(calls: list[_Call], nested: Any, nested_n_jobs: int | None) -> list[Any]:
    """A batch of joblib calls, run in order on a worker; the joblib calls they make
    themselves run on ``nested`` (a local backend of the worker)."""
    with parallel_config(backend=nested, n_jobs=nested_n_jobs):
        return [fn(*args, **kwargs) for fn, args, kwargs in calls]


def _name(calls: list[_Call]) -> str:
    names = {funcname(fn) for fn, _, _ in calls}
    return names.pop() if len(names) == 1 else "mixed"


class _NotSent:
    """What ``submit`` hands joblib for a batch it could not send: the reason, for
    ``retrieve_result_callback`` to raise in joblib's stead."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class RegrowBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's ``ParallelBackendBase`` protocol, served by a regrow cluster.

    Keywords (given to ``parallel_config(backend="regrow", ...)``):
    ``client`` the Client to use (default: the current default client, at each call);
    ``scatter_threshold`` bytes above which an argument is scattered (None: never);
    ``workers``, ``retries``, ``priority`` as for ``Client.submit``.
    """

    default_n_jobs = -1
    uses_threads = False
    supports_sharedmem = False
    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    # A cluster round trip costs milliseconds: batches of calls that each run for less
    # than this are grown by joblib until a batch takes about this long.
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0

    def __init__(
        self,
        client: Client | None = None,
        *,
        scatter_threshold: int | None = SCATTER_THRESHOLD,
        workers: str | list[str] | None = None,
        retries: int = 0,
        priority: int = 0,
        nesting_level: int | None = None,
    ) -> None:
        super().__init__(nesting_level=nesting_level)
        if client is not None and not isinstance(client, Client):
            raise TypeError(
                f"the regrow joblib backend takes a regrow Client, got {type(client).__name__}"
            )
        if scatter_threshold is not None and (
            not isinstance(scatter_threshold, int) or scatter_threshold < 0
        ):
            raise ValueError(
                f"scatter_threshold must be a number of bytes or None, got {scatter_threshold!r}"
            )
        self._given_client = client
        self.scatter_threshold = scatter_threshold
        self._submit_kwargs: dict[str, Any] = {
            "workers": workers,
            "retries": retries,
            "priority": priority,
        }
        self._client: Client | None = None
        self._lock = threading.Lock()
        # Batches sent and not yet retrieved, by key: what an abort cancels.
        self._pending: dict[str, Future] = {}
        # id(argument) -> (argument, its Future): the argument is kept, so that its id
        # names no other object while the call runs.
        self._scattered: dict[int, tuple[Any, Future]] = {}
        self._aborting = False
        # Each call (and each abort) is a generation: a batch's callback reaches joblib
        # only while its generation lasts. Cancelling an aborted call's batches settles
        # them, and their callbacks, in the client's callback thread, may otherwise run
        # after joblib reset its flags for the next call and before it changed its call
        # id: an aborted call's CancelledError then aborted the next call, which
        # returned [] (1 run in 5 of test_managed_parallel_is_reusable_after_an_error).
        self._generation = 0
        self._callback_lock = threading.RLock()

    # ------------------------------------------------------------ the client
    @property
    def client(self) -> Client:
        """The client this backend sends work to (resolved at each Parallel call)."""
        client = self._client
        if client is None or client.status not in ("running", "reconnecting"):
            client = self._client = self._resolve_client()
        return client

    def _resolve_client(self) -> Client:
        client = self._given_client
        if client is None:
            try:
                client = get_client()
            except ValueError:
                raise RuntimeError(
                    "joblib's 'regrow' backend needs a running regrow Client: create one "
                    "(regrow.Client(...)) or pass parallel_config(backend='regrow', client=...)"
                ) from None
        if client.status not in ("running", "reconnecting"):
            raise RuntimeError(f"joblib's 'regrow' backend: its client is {client.status}")
        if client.asynchronous:
            raise RuntimeError(
                "joblib's 'regrow' backend needs a synchronous Client (joblib waits for "
                "results; an asynchronous client's are awaited)"
            )
        return client

    # ------------------------------------------------------------- protocol
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is not None and n_jobs > 0:
            return int(n_jobs)
        total = sum(self.client.nthreads().values())
        if total == 0:
            raise RuntimeError("joblib's 'regrow' backend: the cluster has no workers")
        return max(total + 1 + (-1 if n_jobs is None else int(n_jobs)), 1)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **_: Any) -> int:
        # joblib passes its process-pool settings (max_nbytes, mmap_mode...): none apply.
        self.parallel = parallel
        self._client = self._resolve_client()
        return self.effective_n_jobs(n_jobs)

    def start_call(self) -> None:
        with self._callback_lock:
            self._generation += 1
        with self._lock:
            self._aborting = False
            self._pending = {}
            self._scattered = {}

    def stop_call(self) -> None:
        with self._lock:
            left = list(self._pending.values())
            scattered = [future for _, future in self._scattered.values()]
            self._pending = {}
            self._scattered = {}
        if left:  # only after an abort or a timeout: a finished call has retrieved all
            self._cancel(left)
        for future in scattered:
            future.release()

    def terminate(self) -> None:
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """Parallel calls inside a task: threads of its worker, then sequential."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    def submit(self, func: Any, callback: Callable[[Any], Any] | None = None) -> Any:
        """Send one batch (a joblib ``BatchedCalls``) as one task; ``callback(job)``
        once it settled, in the client's callback thread."""
        try:
            future = self._send(func)
        except Exception as exc:  # pickling, a closed client...: joblib raises it
            job = _NotSent(exc)
            if callback is not None:
                callback(job)
            return job
        if future is None:  # aborting: joblib no longer waits for anything
            return _NotSent(RuntimeError("the Parallel call was aborted"))
        if callback is not None:
            generation = self._generation

            def settled(fut: Future) -> None:
                with self._callback_lock:
                    if generation == self._generation:
                        callback(fut)

            future.add_done_callback(settled)
        return future

    def retrieve_result_callback(self, out: Any) -> Any:
        if isinstance(out, _NotSent):
            raise out.error
        try:
            return out.result()
        finally:
            with self._lock:
                mine = self._pending.pop(out.key, None) is not None
            if mine:
                out.release()  # its result is here: the cluster may forget it

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call raised (or the caller gave up): cancel every batch not yet retrieved.

        Calls already running on a worker finish there; their results are dropped.
        """
        with self._callback_lock:  # after any callback under way: no more for this call
            self._generation += 1
        with self._lock:
            self._aborting = True
            doomed = list(self._pending.values())
            self._pending = {}
        self._cancel(doomed)
        # joblib 1.6 keeps the batches it had prepared but not dispatched, and a reused
        # Parallel (``with Parallel() as p``) would send them first in its next call,
        # their results mixed into that call's (loky does it too): they are dead now.
        ready = getattr(getattr(self, "parallel", None), "_ready_batches", None)
        if isinstance(ready, queue.Queue):
            with contextlib.suppress(queue.Empty):
                while True:
                    ready.get_nowait()

    # ------------------------------------------------------------- helpers
    def _send(self, func: Any) -> Future | None:
        client = self.client
        options = {k: v for k, v in self._submit_kwargs.items() if v}
        calls: list[_Call] | None = getattr(func, "items", None)
        if calls is None:  # not a joblib batch: send it as it is
            with self._lock:
                if self._aborting:
                    return None
                future = client.submit(func, pure=False, **options)
                self._pending[future.key] = future
            return future
        shipped: list[_Call] = [
            (
                fn,
                tuple(self._ship(client, a) for a in args),
                {k: self._ship(client, v) for k, v in kwargs.items()},
            )
            for fn, args, kwargs in calls
        ]
        nested, nested_n_jobs = self.get_nested_backend()
        with self._lock:
            if self._aborting:
                return None
            future = client.submit(
                _run_calls,
                shipped,
                nested,
                nested_n_jobs,
                key=f"joblib-{_name(shipped)}-{uuid.uuid4().hex}",
                pure=False,
                **options,
            )
            self._pending[future.key] = future
        return future

    def _ship(self, client: Client, value: Any) -> Any:
        """``value``, or a Future of it on the cluster if it is large (scattered once
        per Parallel call, however many tasks use it)."""
        threshold = self.scatter_threshold
        if threshold is None or type(value) in _SMALL or isinstance(value, Future):
            return value
        with self._lock:
            known = self._scattered.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        try:
            nbytes = sizeof(value)
        except Exception:
            return value
        if nbytes <= threshold:
            return value
        with self._lock:
            known = self._scattered.get(id(value))
            if known is not None and known[0] is value:
                return known[1]
            # A list as the one value to scatter: scatter([x]) is x, whatever x is.
            future: Future = client.scatter([value], hash=False)[0]
            self._scattered[id(value)] = (value, future)
        return future

    def _cancel(self, futures: list[Future]) -> None:
        client = self._client  # the one these were sent with, even if another is default now
        if not futures or client is None:
            return
        try:
            client.cancel(futures)
        except Exception as exc:  # the client closed meanwhile: nothing runs for it now
            logger.info("could not cancel %d joblib batches: %s", len(futures), exc)


def register() -> None:
    """Make ``"regrow"`` a joblib backend name (idempotent)."""
    register_parallel_backend("regrow", RegrowBackend)


register()
