"""Outputs of the worker core: what the worker's shell must do, named in the imperative.

Not frozen (see ``worker_events``); only the core sets ``stimulus_id``, as it emits one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class Instruction:
    # The event that caused it; not part of what the order is (two equal orders are equal).
    stimulus_id: str = field(default="", compare=False)


# ---------------------------------------------------------------- this process
@dataclass(slots=True, kw_only=True)
class Execute(Instruction):
    """Hand ``key`` to the task threads (run ``attempt`` of it)."""

    key: str
    attempt: int
    run_spec: object


@dataclass(slots=True, kw_only=True)
class Abandon(Instruction):
    """Run ``attempt`` of ``key`` is no longer wanted: a thread that has not begun it
    skips it (one that has cannot be stopped; its outcome comes back all the same)."""

    key: str
    attempt: int


@dataclass(slots=True, kw_only=True)
class InterruptThread(Instruction):
    """Raise TaskInterrupted in the thread running ``key``; report back after the grace."""

    key: str
    attempt: int


@dataclass(slots=True, kw_only=True)
class Gather(Instruction):
    """Fetch ``keys`` from ``holder``, store what arrives, report a GatherFinished."""

    holder: str
    keys: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class StoreData(Instruction):
    """Keep a task's result in the data store."""

    key: str
    value: object
    nbytes: int
    sealed: object = None


@dataclass(slots=True, kw_only=True)
class DiscardResult(Instruction):
    """A result nobody wants: release what it holds (its sealed copy)."""

    key: str
    sealed: object


@dataclass(slots=True, kw_only=True)
class DeleteData(Instruction):
    keys: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class Spill(Instruction):
    """Free about ``nbytes`` of memory: idle buffers first, then results to disk."""

    nbytes: int


@dataclass(slots=True, kw_only=True)
class ExitForNanny(Instruction):
    """Tell the scheduler why, then exit: the nanny starts a fresh worker."""

    reason: str


@dataclass(slots=True, kw_only=True)
class LogWarning(Instruction):
    text: str


# ------------------------------------------------------------- to the scheduler
@dataclass(slots=True, kw_only=True)
class SendLongRunning(Instruction):
    """Tell the scheduler that run ``run_id`` of ``key`` seceded: it holds no slot."""

    key: str
    run_id: int


@dataclass(slots=True, kw_only=True)
class SendStarted(Instruction):
    """Tell the scheduler these tasks are about to run (before any can kill us)."""

    keys: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class SendFinished(Instruction):
    key: str
    run_id: int
    nbytes: int
    type_name: str
    duration: float | None = None
    inline: bytes | None = None


@dataclass(slots=True, kw_only=True)
class SendErred(Instruction):
    key: str
    run_id: int
    error: BaseException
    duration: float | None = None


@dataclass(slots=True, kw_only=True)
class SendDependencyMissing(Instruction):
    key: str
    dependency: str
    holders: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class SendStealResponse(Instruction):
    key: str
    stolen: bool


@dataclass(slots=True, kw_only=True)
class SendAddReplicas(Instruction):
    keys: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class SendPaused(Instruction):
    paused: bool
