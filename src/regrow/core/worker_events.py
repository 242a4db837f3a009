"""Inputs to the worker core: things that happened to one worker, named in the past tense.

Orders from the scheduler, outcomes from task threads and transfers, memory samples.
Values (results, errors, run specs) travel through as opaque objects: the core never
looks inside them, it only decides what becomes of them.

Not frozen, unlike the scheduler's events: a frozen dataclass takes ~2 us more to make
(each field set through object.__setattr__), and a worker makes about six events and
instructions per task. Nothing changes them once made.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class WorkerEvent:
    stimulus_id: str = ""


# ------------------------------------------------------------ from the scheduler
@dataclass(slots=True, kw_only=True)
class ComputeRequested(WorkerEvent):
    """The scheduler asks for ``key`` to be computed here (run ``run_id``)."""

    key: str
    run_id: int
    priority: tuple[int, ...]
    # Every dependency, and the workers that hold it.
    who_has: dict[str, list[str]]
    # Dependencies whose values came with the order (small results the scheduler keeps).
    inline: tuple[str, ...] = ()
    # What a task thread needs to run it; opaque here.
    run_spec: object = None


@dataclass(slots=True, kw_only=True)
class KeysFreed(WorkerEvent):
    """The scheduler no longer wants these keys here: neither the data nor the task."""

    keys: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class StealRequested(WorkerEvent):
    """The scheduler would move ``key`` elsewhere if it has not started here."""

    key: str


@dataclass(slots=True, kw_only=True)
class InterruptRequested(WorkerEvent):
    """``cancel(force=True)``: stop ``key`` even while it runs."""

    key: str


@dataclass(slots=True, kw_only=True)
class ReplicasRequested(WorkerEvent):
    """Fetch a copy of each key from one of its holders (scatter with replicas)."""

    who_has: dict[str, list[str]]


@dataclass(slots=True, kw_only=True)
class StateDropped(WorkerEvent):
    """``restart`` of a worker without a nanny: forget every task and every result."""


@dataclass(slots=True, kw_only=True)
class SchedulerLost(WorkerEvent):
    """The connection to the scheduler broke: its orders are void (given to others)."""


@dataclass(slots=True, kw_only=True)
class SchedulerReconnected(WorkerEvent):
    """Registered again. ``drop``: the scheduler had removed us; what we hold is stale."""

    drop: bool = False


# ------------------------------------------------------------- from this process
@dataclass(slots=True, kw_only=True)
class ExecuteSucceeded(WorkerEvent):
    key: str
    attempt: int
    value: object
    nbytes: int
    type_name: str
    duration: float
    # The result serialized, when small enough to go to the scheduler with the news.
    inline: bytes | None = None
    # A sealed shared-memory copy of a large result (shm.seal); opaque here.
    sealed: object = None


@dataclass(slots=True, kw_only=True)
class ExecuteFailed(WorkerEvent):
    key: str
    attempt: int
    error: BaseException
    duration: float


@dataclass(slots=True, kw_only=True)
class TaskSeceded(WorkerEvent):
    """Run ``attempt`` of ``key`` called ``secede()``: it waits on other tasks and gives
    its thread's place to the next task (the threads start another one)."""

    key: str
    attempt: int


@dataclass(slots=True, kw_only=True)
class TaskRejoined(WorkerEvent):
    """Run ``attempt`` of ``key``, seceded, called ``rejoin()`` and has a thread's place
    again (another thread left for it)."""

    key: str
    attempt: int


@dataclass(slots=True, kw_only=True)
class GatherFinished(WorkerEvent):
    """A transfer from ``holder`` ended. ``got``: the keys now stored here, with their
    sizes and types. ``refusal``: the holder answered, but its data cannot reach us (it
    does not pickle there or does not unpickle here); None if it simply was not reached."""

    holder: str
    keys: tuple[str, ...]
    got: dict[str, tuple[int, str]] = field(default_factory=dict)
    refusal: BaseException | None = None


@dataclass(slots=True, kw_only=True)
class DataPut(WorkerEvent):
    """A client stored values here (scatter): key -> (nbytes, type name)."""

    data: dict[str, tuple[int, str]]


@dataclass(slots=True, kw_only=True)
class MemorySampled(WorkerEvent):
    """The process's memory use. ``after_spill``: sampled right after a ``Spill``."""

    rss: int
    after_spill: bool = False


@dataclass(slots=True, kw_only=True)
class InterruptDeadlinePassed(WorkerEvent):
    """``cancel_grace`` after an ``Interrupt`` of run ``attempt`` of ``key``.
    ``started``: its thread had begun it (it was not still queued behind another)."""

    key: str
    attempt: int
    started: bool
