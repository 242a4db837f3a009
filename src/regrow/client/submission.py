"""Turning ``submit`` and ``map`` calls into task entries for the scheduler.

Owns a task's key (named after its function: hashed from function and arguments when
pure, numbered otherwise), its entry (dependencies, options) and its frames (the
function pickled once and cached, the arguments with Futures as references), and
cutting a long ``map`` into batches.

Also owns the outbox: batches queued by any thread, taken by the IO thread as
submission messages.

It must not send anything nor check the client's state: it hands each batch to the
``send`` it is given (the client's, which queues it in the outbox), after making the
batch's Futures.
"""

from __future__ import annotations

import itertools
import operator
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from regrow.client.futures import Future
from regrow.config import Settings
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import SubmitMsg, TaskEntry
from regrow.protocol.serialize import digest, dumps, dumps_with_refs

# Task entries per submission message (and ``Client.map``'s default batch).
MAP_BATCH = 1000

# Where a batch of task entries goes: ``send(entries, frames, wanted keys)``.
Send = Callable[[list[TaskEntry], list[Buffer], list[str]], None]

# What a task entry can carry (see protocol.messages: TaskEntry).
_INT64 = 2**63 - 1


def check_options(retries: Any, priority: Any) -> tuple[int, int]:
    """``retries=`` and ``priority=`` as the ints a task entry carries, else ValueError
    (here, in the caller's thread: not as a message the scheduler must refuse)."""
    if not isinstance(retries, int) or not 0 <= retries <= _INT64:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    try:
        prio = operator.index(priority)
    except TypeError:
        raise ValueError(f"priority must be an int, got {priority!r}") from None
    if not -_INT64 <= prio <= _INT64:
        raise ValueError(f"priority must fit in 64 bits, got {priority!r}")
    return int(retries), prio


def funcname(fn: Callable[..., Any]) -> str:
    """The name a task's key starts with."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else str(name)


def check_workers(workers: Any) -> list[str] | None:
    """The ``workers=`` argument as a list of addresses or names (None: any worker)."""
    if workers is None:
        return None
    if isinstance(workers, str):
        return [workers]
    ws = list(workers)
    if not all(isinstance(w, str) for w in ws):
        raise TypeError(f"workers= takes worker addresses or names, got {workers!r}")
    return ws


def future_ref(obj: object) -> str | None:
    """A Future's key, to pickle it as a reference (see serialize.dumps_with_refs)."""
    return obj.key if isinstance(obj, Future) else None


class TaskBuilder:
    """A client's task entries: its function cache and its numbering of impure keys."""

    def __init__(self, new_future: Callable[[str], Future]) -> None:
        self._new_future = new_future
        self._fn_cache: dict[Any, list[Buffer]] = {}
        self._unique = itertools.count()
        self._uid = uuid.uuid4().hex[:16]
        # The largest frame the scheduler accepts (its scheduler_max_frame_bytes): a task
        # past it is refused here, not dropped with the connection there.
        self.max_frame_bytes = Settings().scheduler_max_frame_bytes

    def _check_size(self, frames: list[Buffer], what: str) -> None:
        """Refuse here what the scheduler would refuse by dropping the connection."""
        for frame in frames:
            n = memoryview(frame).nbytes
            if n > self.max_frame_bytes:
                raise ValueError(
                    f"{what} carries {n:,} bytes in one piece, more than the scheduler "
                    f"accepts ({self.max_frame_bytes:,}, scheduler_max_frame_bytes): scatter "
                    "large arguments first (client.scatter) and pass their futures"
                )

    def fn_frames(self, fn: Callable[..., Any]) -> list[Buffer]:
        """``fn`` pickled: once per function while it is among the last 1000 used."""
        try:
            cached = self._fn_cache.get(fn)
        except TypeError:  # unhashable callable
            frames = dumps(fn)
            self._check_size(frames, f"function {funcname(fn)!r}")
            return frames
        if cached is None:
            cached = dumps(fn)
            self._check_size(cached, f"function {funcname(fn)!r}")
            if len(self._fn_cache) > 1000:
                self._fn_cache.clear()
            self._fn_cache[fn] = cached
        return cached

    def task(
        self,
        fn: Callable[..., Any],
        fn_frames: list[Buffer],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        key: str | None,
        pure: bool,
        workers: list[str] | None,
        retries: int,
        priority: int,
        resources: dict[str, float] | None = None,
    ) -> tuple[TaskEntry, list[Buffer]]:
        """One call's task entry and its frames."""
        arg_frames, deps = dumps_with_refs((args, dict(kwargs)), future_ref)
        if key is None:
            if pure:
                key = f"{funcname(fn)}-{digest([*fn_frames, *arg_frames])}"
            else:
                # Unique without a uuid4 per task (os.urandom is a syscall): this client's
                # id is random, a counter numbers its tasks.
                key = f"{funcname(fn)}-{self._uid}{next(self._unique):x}"
        elif not isinstance(key, str):
            raise TypeError(f"key must be a string, got {type(key).__name__}")
        self._check_size(arg_frames, f"task {key!r}")
        frames = [*fn_frames, *arg_frames]
        entry = TaskEntry(
            key=key,
            dependencies=deps,
            fn_frames=len(fn_frames),
            frames=len(frames),
            priority=priority,
            retries=retries,
            workers=workers or None,
            pure=bool(pure),
            resources=resources or None,
        )
        return entry, frames

    def submit(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        key: str | None,
        pure: bool,
        workers: list[str] | None,
        retries: int,
        priority: int,
        send: Send,
        resources: dict[str, float] | None = None,
    ) -> Future:
        """One task, sent: its Future."""
        entry, frames = self.task(
            func,
            self.fn_frames(func),
            args,
            kwargs,
            key=key,
            pure=pure,
            workers=workers,
            retries=retries,
            priority=priority,
            resources=resources,
        )
        future = self._new_future(entry.key)
        send([entry], frames, [future.key])
        return future

    def map(
        self,
        func: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        kwargs: Mapping[str, Any],
        *,
        key: str | list[str] | None,
        pure: bool,
        workers: list[str] | None,
        retries: int,
        priority: int,
        batch_size: int,
        send: Send,
        resources: dict[str, float] | None = None,
    ) -> list[Future]:
        """A task per item of the zipped iterables, sent ``batch_size`` at a time: their
        Futures. ``key``: a name prefix, or one key per task."""
        fn_frames = self.fn_frames(func)
        if isinstance(key, list | tuple):
            keys: Iterator[str | None] = iter(key)
            name_prefix = None
        else:
            keys = itertools.repeat(None)
            name_prefix = key
        futures: list[Future] = []
        entries: list[TaskEntry] = []
        frames: list[Buffer] = []
        wanted: list[str] = []
        for args in zip(*iterables, strict=False):
            k = next(keys, None)
            entry, fr = self.task(
                func,
                fn_frames,
                args,
                kwargs,
                key=k,
                pure=pure,
                workers=workers,
                retries=retries,
                priority=priority,
                resources=resources,
            )
            if name_prefix is not None:
                entry.key = f"{name_prefix}-{entry.key.rpartition('-')[2]}"
            fut = self._new_future(entry.key)
            futures.append(fut)
            entries.append(entry)
            frames.extend(fr)
            wanted.append(fut.key)
            if len(entries) >= batch_size:
                send(entries, frames, wanted)
                entries, frames, wanted = [], [], []
        if entries:
            send(entries, frames, wanted)
        return futures


class Outbox:
    """Task batches waiting for the IO thread, which sends them as few messages (of at
    most ``MAP_BATCH`` entries): waking it costs a syscall, so submissions made before
    it runs share one wake-up. Safe from any thread."""

    def __init__(self) -> None:
        # Re-entrant, as the client's other locks: garbage collection (a Future's
        # __del__) may run inside any critical section.
        self._lock = threading.RLock()
        self._batches: list[tuple[list[TaskEntry], list[Buffer], list[str]]] = []
        self._scheduled = False

    def put(self, entries: list[TaskEntry], frames: list[Buffer], wanted: list[str]) -> bool:
        """Queue a batch: whether the caller must have ``take`` called (none pending)."""
        with self._lock:
            self._batches.append((entries, frames, wanted))
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def take(self) -> list[tuple[SubmitMsg, list[Buffer]]]:
        """Empty the outbox: the submission messages to send, with their frames."""
        with self._lock:
            batch, self._batches = self._batches, []
            self._scheduled = False
        out: list[tuple[SubmitMsg, list[Buffer]]] = []
        entries: list[TaskEntry] = []
        frames: list[Buffer] = []
        wanted: list[str] = []
        for e, f, w in batch:
            entries.extend(e)
            frames.extend(f)
            wanted.extend(w)
            if len(entries) >= MAP_BATCH:
                out.append((SubmitMsg(tasks=entries, wanted=wanted), frames))
                entries, frames, wanted = [], [], []
        if entries:
            out.append((SubmitMsg(tasks=entries, wanted=wanted), frames))
        return out
