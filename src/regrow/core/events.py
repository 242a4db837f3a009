"""Inputs to the scheduler core: things that happened, named in the past tense."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    stimulus_id: str = ""
    # The shell's clock (monotonic seconds) when it happened: the core reads no clock.
    now: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FromWorker(Event):
    """A message the worker itself sent: besides what it says, a sign of life (``now``)."""

    worker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """One task as a client submits it. ``run_spec`` is opaque to the scheduler."""

    key: str
    dependencies: tuple[str, ...] = ()
    run_spec: object = None
    priority: int = 0
    retries: int = 0
    workers: tuple[str, ...] | None = None
    pure: bool = True
    # Abstract resources it needs from a worker while it runs (``{"GPU": 1}``).
    resources: dict[str, float] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConnected(Event):
    client: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientDisconnected(Event):
    client: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksSubmitted(Event):
    """A client submitted tasks (dependencies first) and holds futures for ``wanted``."""

    client: str
    tasks: tuple[TaskSpec, ...]
    wanted: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysReplicated(Event):
    """A client asks for ``n`` copies of each of ``keys`` (0: one on every worker),
    kept from now on (a lost copy is made again)."""

    keys: tuple[str, ...]
    n: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceRequested(Event):
    """Spread the results of ``keys`` (None: all) evenly over ``workers`` (addresses or
    names; None: all), moving copies (core.rebalance)."""

    keys: tuple[str, ...] | None = None
    workers: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Coordinate(Event):
    """A client's request to a coordination primitive (core.coordination): ``kind``
    (lock, semaphore, event, variable, queue, dataset, pubsub), its ``name`` and
    ``op``; ``payload``: a value, pickled by the client (never unpickled here), with the
    ``keys`` of the futures in it; ``number``: max_leases, maxsize or override;
    ``ident``: a lease or subscriber id; ``timeout``: how long it may wait (None: for
    ever). Answered by ``cmd.Answer`` to ``request``."""

    client: str
    request: str
    kind: str
    name: str
    op: str
    payload: bytes | None = None
    keys: tuple[str, ...] = ()
    number: float = 0.0
    ident: str = ""
    timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysDesired(Event):
    """A client holds (new) futures for keys the scheduler may already know."""

    client: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysReleased(Event):
    """A client dropped its last future for each of ``keys``."""

    client: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EventLogged(Event):
    """A client logged an event (``Client.log_event``): ``data`` is a plain dict."""

    client: str
    topic: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysCancelled(Event):
    client: str
    keys: tuple[str, ...]
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class KeysFiredAndForgotten(Event):
    """A client asks for ``keys`` to be computed even once it holds no future for them
    (``fire_and_forget``): the scheduler wants them itself until they are done."""

    client: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRequested(Event):
    """A client asks for its erred ``keys`` to be computed again (``Future.retry``)."""

    client: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScatteredKey:
    key: str
    nbytes: int
    type_name: str
    workers: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DataScattered(Event):
    """A client placed data on workers directly; it wants those keys.

    With ``replicas`` > 1 the scheduler keeps that many copies on distinct workers,
    making a new copy whenever one is lost.
    """

    client: str
    keys: tuple[ScatteredKey, ...]
    replicas: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerAdded(Event):
    """A worker registered (``now``: when). It is answered with ``AcceptWorker``."""

    worker: str
    # Stable across its reconnections (unlike a connection): a worker the core removed
    # must drop what it holds when it comes back. Empty: the address.
    id: str = ""
    name: str = ""
    nthreads: int = 1
    pid: int = 0
    memory_limit: int = 0
    nanny: str = ""
    # Results it already holds, as (key, nbytes): a worker that outlived a scheduler.
    keys: tuple[tuple[str, int], ...] = ()
    # Its abstract resources (``{"GPU": 2}``): tasks that need some run only where
    # enough are free.
    resources: dict[str, float] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRemoved(Event):
    """The worker is gone for this reason: remove it now (tools and tests; the shell reports
    what it sees instead, ``WorkerConnectionClosed`` and the rest, and the core decides)."""

    worker: str
    reason: str = ""
    # A clean retirement: its running tasks do not become suspicious.
    graceful: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFinished(FromWorker):
    key: str
    run_id: int
    nbytes: int
    type_name: str = ""
    duration: float = 0.0
    # A small result, serialized by the worker (opaque to the scheduler).
    inline: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskErred(FromWorker):
    key: str
    run_id: int
    exception: bytes
    traceback: bytes
    text: str
    duration: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyMissing(FromWorker):
    """``worker`` gave up on ``key``: it could not fetch ``dependency`` from any of ``holders``."""

    key: str
    dependency: str
    holders: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicasMissing(Event):
    """A client asked these holders for these keys and they answered without them."""

    holders: tuple[tuple[str, tuple[str, ...]], ...]  # (key, workers)


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksStarted(FromWorker):
    """``worker`` began running ``keys`` (handed them to a task thread)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSeceded(FromWorker):
    """Run ``run_id`` of ``key`` left its thread to wait on other tasks (``secede()``):
    it holds no slot of ``worker`` from now on."""

    key: str
    run_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StealAnswered(FromWorker):
    """The victim of a steal request says whether it gave the task up."""

    key: str
    stolen: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPaused(FromWorker):
    """The worker is short of memory (paused) and takes no new tasks, or recovered."""

    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartRequested(Event):
    """Forget everything: every client's futures are cancelled, every task is dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticked(Event):
    """Time passed (``now``); periodic duties run: balancing, heartbeat and death-report
    deadlines, retirement progress."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatReceived(FromWorker):
    """The worker's periodic sign of life, with its metrics (opaque to the core: shown in
    ``info()``)."""

    metrics: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConnectionClosed(Event):
    """The worker's connection closed (``reason``: what the connection knew)."""

    worker: str
    reason: str = "connection closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerDeathReported(Event):
    """The worker's nanny saw it die, and says why (signal, exit code, memory limit)."""

    worker: str
    reason: str
    # Its nanny killed it for passing its memory limit.
    out_of_memory: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NannyJoined(Event):
    """A nanny registered; ``replaces``: it was started in place of one that died."""

    nanny: str
    name: str = ""
    replaces: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRetiring(Event):
    """The worker is about to leave on purpose (it said so, or the scheduler restarts it):
    its removal is graceful, and it takes no new tasks."""

    worker: str
    reason: str = "retiring"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetireWorkersRequested(Event):
    """A client asks to retire these workers (addresses or names) gracefully: their data
    moves to other workers first. Answered with ``ReportRetired`` naming ``request``."""

    request: str
    workers: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicasAdded(FromWorker):
    """``worker`` now also holds ``keys`` (fetched as inputs for its tasks)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord:
    """Why a task erred, as the journal kept it."""

    blame: str
    text: str
    exception: bytes = b""
    traceback: bytes = b""
    kind: str = ""
    workers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoredTask:
    """A task as the journal kept it."""

    key: str
    dependencies: tuple[str, ...]
    run_spec: object
    priority: int = 0
    retries: int = 0
    workers: tuple[str, ...] | None = None
    pure: bool = True
    replicas: int = 1
    # Set for a task that had erred.
    error: ErrorRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StateRestored(Event):
    """A restarted scheduler read its journal: these tasks existed, these clients wanted these
    keys. Nothing is computed until ``RecoveryFinished``, so results that workers still hold
    can be reported first and are not computed twice."""

    tasks: tuple[RestoredTask, ...]
    wants: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinationRestored(Event):
    """A restarted scheduler read its journal: what the coordination primitives held
    (``(kind, name, row)``, as ``Coordination.row`` made them) and the answers to
    changes that clients may ask for again."""

    rows: tuple[tuple[str, str, Any], ...]
    answers: tuple[Answered, ...]


@dataclass(frozen=True, slots=True)
class Answered:
    """A remembered answer (``cmd.Answer`` without its being durable)."""

    client: str
    request: str
    ok: bool
    payload: bytes | None
    number: float
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReattachGraceEnded(Event):
    """Clients back from a scheduler restart had ``client_grace`` to resend submissions
    the journal may have missed: restored tasks nobody needs now may be forgotten."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryFinished(Event):
    """The workers that were coming back are back: compute what is still missing."""
