"""The worker's task threads: they run tasks and hand back what happened.

Owns: the thread pool, the queue of runs handed to it, turning a run spec into a call
(unpickling the function and its arguments against the data store), measuring and
serializing the outcome, interrupting a thread on a forced cancel. Outcomes go back to
the event loop in batches, as ``ExecuteSucceeded`` / ``ExecuteFailed`` events.
Must not: decide anything about tasks (``core.worker_state`` does), or touch the
connection to the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import queue
import threading
import time
import traceback
from collections import ChainMap
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import cloudpickle

from regrow.config import Settings
from regrow.core import worker_events as wev
from regrow.errors import RemoteError, explain
from regrow.protocol import shm
from regrow.protocol.framing import Buffer
from regrow.protocol.serialize import dumps, loads, loads_with_refs, sizeof

if TYPE_CHECKING:
    from regrow.worker.shell import Worker

_thread_state = threading.local()

# Unpickling imports modules (numpy, say, on its first use in this process). When two
# threads import the same package at once, one of them can get it half-initialised
# ("ImportError: ... partially initialized module"), so the worker unpickles in one
# thread at a time: the IO thread (data from peers and clients) and the task threads.
unpickle_lock = threading.RLock()


def loads_locked(frames: Sequence[Buffer]) -> Any:
    with unpickle_lock:
        return loads(frames)


# What an interpreter says once a package's import failed half-way: the C extension it
# had loaded cannot be loaded again (numpy's words; PyO3's), so every later import of the
# package fails in this process. Two threads importing one package at once can leave it
# so (see serialize._import_in_order): _DeadlockError is Python's word for that.
_CANNOT_IMPORT_AGAIN = (
    "cannot load module more than once per process",
    "may only be initialized once per interpreter process",
)


def broken_imports(exc: BaseException) -> str | None:
    """Why ``exc`` shows that this interpreter can no longer import some package, or
    None. Its causes are searched too: numpy wraps the ImportError it met in its own."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__name__ == "_DeadlockError":  # importlib's: not public
            return f"two threads' imports deadlocked ({cause})"
        if isinstance(cause, ImportError):
            for text in _CANNOT_IMPORT_AGAIN:
                if text in str(cause):  # numpy's own message quotes it among many lines
                    return f"a package can no longer be imported here (ImportError: {text})"
        cause = cause.__cause__ or cause.__context__
    return None


def get_worker() -> Worker:
    """The worker running the current task (call from inside a task)."""
    worker = getattr(_thread_state, "worker", None)
    if worker is None:
        raise ValueError("get_worker() called outside of a task running on a regrow worker")
    return worker  # type: ignore[no-any-return]


def _current_run(name: str) -> tuple[Worker, Run]:
    run = getattr(_thread_state, "run", None)
    worker = getattr(_thread_state, "worker", None)
    if run is None or worker is None:
        raise ValueError(f"{name}() called outside of a task running on a regrow worker")
    return worker, run


def secede() -> None:
    """Give this task's thread place to the next task while it waits on other tasks (as
    dask.distributed's ``secede``): call it before waiting on futures submitted from
    the task, so that tasks waiting on tasks never hold every thread. The worker starts
    another thread; the scheduler counts this task in none of the worker's slots. Does
    nothing in a task that already seceded."""
    worker, run = _current_run("secede")
    worker.threads.secede(run)


def rejoin() -> None:
    """Take a thread's place again after ``secede()``: waits until one of the worker's
    threads is free (it then leaves), so the worker runs no more tasks at once than it
    has threads. Does nothing in a task that has not seceded."""
    worker, run = _current_run("rejoin")
    worker.threads.rejoin(run)


class TaskInterrupted(BaseException):
    """Raised inside a task's thread by ``cancel(force=True)``.

    A BaseException, so that user code catching ``Exception`` does not swallow it.
    """


def serialize_error(exc: BaseException) -> tuple[bytes, bytes, str]:
    """Pickle an exception so it arrives as itself, or as a RemoteError naming it."""
    text = explain(exc)
    tb = exc.__traceback__
    tb_text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        cloudpickle.loads(blob)  # an exception that pickles but cannot unpickle is no use
    except Exception:
        blob = cloudpickle.dumps(RemoteError(type(exc).__name__, str(exc)), protocol=5)
    return blob, tb_text.encode(), text


Outcome = wev.ExecuteSucceeded | wev.ExecuteFailed


@dataclass(slots=True, eq=False)
class RunSpec:
    """What a compute order carries to run a task: the pickled function (the first
    ``fnf`` frames), its arguments, and inputs that came with the order, serialized."""

    fnf: int
    frames: list[Buffer]
    inputs: dict[str, bytes]


@dataclass(slots=True, eq=False)
class Run:
    """One run of a task handed to the threads."""

    key: str
    attempt: int
    spec: RunSpec
    abandoned: bool = False
    thread: int = 0
    in_user_code: bool = False
    seceded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


# Put on the threads' queue by ``rejoin``: the thread that takes it leaves.
_LEAVE = "leave"


def _seal(value: Any) -> tuple[Any, shm.Sealed | None]:
    """A large result, rebuilt on a sealed shared-memory copy of its buffers (shm.seal).

    The copy is made once, here in the task's thread, so that peers on this host later
    take the value with no copy. Only kept when the rebuilt value really lives on the
    shared pages (numpy arrays and the like do; a type that copies its buffers when
    unpickled would only double its memory): else the value stays as it was.
    """
    try:
        frames = dumps(value)
        made = shm.seal(frames)
    except Exception:
        return value, None  # not picklable: it stays in memory, fetched (or not) as before
    if made is None:
        return value, None
    record, mine = made
    mapping = cast(memoryview, mine[record.layout[0][0]]).obj
    try:
        rebuilt = loads_locked(mine)
    except Exception:
        rebuilt = None
    del mine
    try:
        mapping.close()  # type: ignore[attr-defined]
    except BufferError:
        return rebuilt, record  # the rebuilt value holds the mapping: it is zero-copy
    record.close()
    return value, None


class TaskThreads:
    """``nthreads`` threads taking runs from one queue; outcomes come back to the loop
    through ``deliver`` in batches (one wake-up of the event loop per batch)."""

    def __init__(
        self,
        worker: Worker,
        nthreads: int,
        settings: Settings,
        data: MutableMapping[str, Any],
        deliver: Callable[[list[Outcome]], None],
        seal_results: bool,
    ) -> None:
        self.worker = worker
        self.settings = settings
        self.data = data
        self.deliver = deliver
        self.seal_results = seal_results
        self.runs: dict[str, Run] = {}
        self._work: queue.SimpleQueue[Run | str | None] = queue.SimpleQueue()
        # One release per thread that left for a rejoining task (``rejoin``).
        self._left = threading.Semaphore(0)
        self._stopping = False
        self._outcomes: list[Outcome] = []
        self._outcomes_lock = threading.Lock()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fn_cache: dict[bytes, Any] = {}
        self._threads = [
            threading.Thread(target=self._task_thread, name=f"regrow-task-{i}", daemon=True)
            for i in range(nthreads)
        ]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._threads = [t for t in self._threads if t.is_alive()]
        for _ in self._threads:
            self._work.put(None)

    # --------------------------------------------------- from a task's thread
    def secede(self, run: Run) -> None:
        """``run``'s thread gives its place up: another thread takes runs meanwhile."""
        if run.seceded or self._stopping:
            return
        run.seceded = True
        thread = threading.Thread(
            target=self._task_thread, name=f"regrow-task-{len(self._threads)}", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        self._tell(wev.TaskSeceded(key=run.key, attempt=run.attempt, stimulus_id="secede"))

    def rejoin(self, run: Run) -> None:
        """``run``'s thread takes a place again once another thread has left one."""
        if not run.seceded:
            return
        self._work.put(_LEAVE)
        while not self._left.acquire(timeout=1.0):
            if self._stopping:
                return
        run.seceded = False
        self._tell(wev.TaskRejoined(key=run.key, attempt=run.attempt, stimulus_id="rejoin"))

    def _tell(self, event: wev.WorkerEvent) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                self._loop.call_soon_threadsafe(self.worker.handle, event)

    # -------------------------------------------------------- from the loop
    def submit(self, key: str, attempt: int, spec: RunSpec) -> None:
        run = self.runs[key] = Run(key, attempt, spec)
        self._work.put(run)

    def abandon(self, key: str, attempt: int) -> None:
        """A run not yet begun is skipped (one under way cannot be stopped)."""
        run = self.runs.get(key)
        if run is not None and run.attempt == attempt:
            run.abandoned = True

    def interrupt(self, key: str, attempt: int) -> None:
        """Raise TaskInterrupted in the thread running ``key``, if it is in user code."""
        run = self.runs.get(key)
        if run is None or run.attempt != attempt:
            return
        run.abandoned = True
        with run.lock:
            if run.in_user_code:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(run.thread), ctypes.py_object(TaskInterrupted)
                )

    def began(self, key: str, attempt: int) -> bool:
        """Whether a thread has begun run ``attempt`` of ``key`` and not yet returned."""
        run = self.runs.get(key)
        return run is not None and run.attempt == attempt and bool(run.thread)

    # ------------------------------------------------------------ threads
    def _task_thread(self) -> None:
        while True:
            run = self._work.get()
            if run is None:
                return
            if isinstance(run, str):  # _LEAVE: a rejoining task takes this place
                self._left.release()
                return
            outcome = self._execute(run)
            _thread_state.run = None
            with self._outcomes_lock:
                self._outcomes.append(outcome)
                wake = not self._drain_scheduled
                self._drain_scheduled = True
            if wake and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                    self._loop.call_soon_threadsafe(self._drain)
            if run.seceded:
                return  # it gave its place to another thread when it seceded: it leaves

    def _drain(self) -> None:
        with self._outcomes_lock:
            outcomes, self._outcomes = self._outcomes, []
            self._drain_scheduled = False
        for event in outcomes:
            run = self.runs.get(event.key)
            if run is not None and run.attempt == event.attempt:
                del self.runs[event.key]
        self.deliver(outcomes)
        for event in outcomes:
            if isinstance(event, wev.ExecuteFailed):
                self.worker.check_imports(event.error, f"task {event.key!r} failed")

    def _execute(self, run: Run) -> Outcome:
        start = time.perf_counter()
        _thread_state.worker = self.worker
        _thread_state.run = run
        sid = f"execute-{run.key}"
        if run.abandoned:  # freed while it waited in the threads' queue
            return wev.ExecuteFailed(
                key=run.key,
                attempt=run.attempt,
                error=TaskInterrupted(f"{run.key!r} cancelled before it started"),
                duration=0.0,
                stimulus_id=sid,
            )
        spec = run.spec
        try:
            fn_frames = spec.frames[: spec.fnf]
            fn_bytes = bytes(fn_frames[0]) if spec.fnf == 1 else b""
            fn = self._fn_cache.get(fn_bytes) if fn_bytes else None
            with unpickle_lock:
                if fn is None:
                    fn = loads(fn_frames)
                    if fn_bytes and len(self._fn_cache) < 256:
                        self._fn_cache[fn_bytes] = fn
                data: Mapping[str, Any] = self.data
                if spec.inputs:
                    given = {k: loads([v]) for k, v in spec.inputs.items() if k not in self.data}
                    data = ChainMap(given, self.data)
                args, kwargs = loads_with_refs(spec.frames[spec.fnf :], data)
            with run.lock:
                run.thread = threading.get_ident()
                run.in_user_code = True
            try:
                result = fn(*args, **kwargs)
            finally:
                # An interrupt can only be aimed at this thread while this flag is up.
                with run.lock:
                    run.in_user_code = False
            duration = time.perf_counter() - start
            nbytes = sizeof(result)
            inline = self._inline(result, nbytes)
            sealed = None
            if shm.MEMFD and nbytes >= shm.MIN_BYTES and self.seal_results:
                result, sealed = _seal(result)
            return wev.ExecuteSucceeded(
                key=run.key,
                attempt=run.attempt,
                value=result,
                nbytes=nbytes,
                type_name=type(result).__name__,
                duration=duration,
                inline=inline,
                sealed=sealed,
                stimulus_id=sid,
            )
        except BaseException as exc:
            return wev.ExecuteFailed(
                key=run.key,
                attempt=run.attempt,
                error=exc,
                duration=time.perf_counter() - start,
                stimulus_id=sid,
            )

    def _inline(self, result: object, estimate: int) -> bytes | None:
        """``result`` serialized, if it is small enough to travel with its task's news."""
        limit = self.settings.inline_result_bytes
        if estimate > limit:
            return None
        try:
            frames = dumps(result)
        except Exception:
            # It stays here alone, as large results do; whoever fetches it gets the
            # pickling error then, with the holder named.
            return None
        if len(frames) != 1 or len(frames[0]) > limit:
            return None
        return bytes(frames[0])


def run_function(frames: list[Buffer], worker: Worker) -> tuple[bool, list[Buffer]]:
    """``client.run``: call a function in this worker, outside the task threads."""
    _thread_state.worker = worker
    try:
        fn, args, kwargs = loads_locked(frames)
        return True, dumps(fn(*args, **kwargs))
    except BaseException as exc:
        blob, _, _ = serialize_error(exc)
        return False, [blob]
    finally:
        _thread_state.worker = None
