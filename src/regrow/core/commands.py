"""Outputs of the scheduler core: what the shell must do, named in the imperative."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    # The event that caused it; not part of what the order is (two equal orders are equal).
    stimulus_id: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compute(Command):
    worker: str
    key: str
    run_id: int
    run_spec: object
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]
    priority: tuple[int, int]
    # Inputs kept by the scheduler (small results), serialized: no fetch needed.
    inline: dict[str, bytes] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FreeKeys(Command):
    """The worker drops these keys: data, or a task not yet finished."""

    worker: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Steal(Command):
    """Ask ``worker`` to give up ``key`` if it has not started it."""

    worker: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportInMemory(Command):
    client: str
    key: str
    type_name: str
    nbytes: int
    # The result itself, serialized, when it is small.
    inline: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportErred(Command):
    """The client's future for ``key`` errs.

    ``exception``/``traceback`` are the worker's pickled objects (opaque here), or
    empty when the scheduler itself decided the error; then ``kind`` names the
    regrow exception to raise (``KilledWorker``, ``LostDataError``...).
    """

    client: str
    key: str
    exception: bytes
    traceback: bytes
    text: str
    kind: str = ""
    blame: str = ""
    workers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportCancelled(Command):
    client: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportLost(Command):
    """The only copy of ``key`` was lost; it is being recomputed."""

    client: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRetried(Command):
    """``key`` erred and is computed again (a client asked, ``Future.retry``): the
    client's future for it is pending again."""

    client: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrupt(Command):
    """Stop ``key`` on ``worker`` even though it is running (``cancel(force=True)``)."""

    worker: str
    key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AcquireReplicas(Command):
    """``worker`` should fetch a copy of each key from one of its holders."""

    worker: str
    who_has: dict[str, list[str]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportEvent(Command):
    """Something a client should see in its event log (topic: workers, recovery, warnings):
    ``data`` is the whole event (core.timeline), its ``text`` included."""

    client: str
    topic: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer(Command):
    """The answer to a coordination ``request`` of ``client`` (core.coordination):
    ``ok`` (granted, found, set...), a held value's pickled bytes, a count, or why not."""

    client: str
    request: str
    ok: bool
    payload: bytes | None = None
    number: float = 0.0
    error: str = ""
    # It answers a change (coordination.CHANGES): a journaled scheduler sends it once
    # the journal holds the change.
    durable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportInterrupted(Command):
    """``key`` was running on ``worker`` when it died; it runs again elsewhere."""

    client: str
    key: str
    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptWorker(Command):
    """Answer the worker's registration; with ``drop`` it must first drop everything it
    holds and runs (the scheduler removed it while it was away: that is all stale)."""

    worker: str
    drop: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseWorkerConnection(Command):
    """Abort the worker's connection now (it is removed already: silent past the
    heartbeat timeout, or reported dead by its nanny)."""

    worker: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseWorker(Command):
    """Stop the worker process for good, after its retirement: through its ``nanny`` when
    it has one (which stops it and does not start another), else by asking the worker."""

    worker: str
    nanny: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportRetired(Command):
    """The retirement ``request`` is over: ``workers`` left gracefully (the others it named
    were unknown, died on the way, or had to stay: see the ``workers`` ReportEvents)."""

    request: str
    workers: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Command):
    """Write ``message`` to the scheduler's log (``level``: "info" or "warning")."""

    level: str
    message: str
