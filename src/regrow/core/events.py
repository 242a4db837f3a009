"""Inputs to the scheduler core: things that happened, named in the past tense."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    stimulus_id: str = ""
    now: float = 0.0


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
class KeysCancelled(Event):
    client: str
    keys: tuple[str, ...]
    force: bool = False


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
    worker: str
    name: str = ""
    nthreads: int = 1
    pid: int = 0
    memory_limit: int = 0
    nanny: str = ""
    # Results it already holds, as (key, nbytes): a worker that outlived a scheduler.
    keys: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRemoved(Event):
    worker: str
    reason: str = ""
    # A clean retirement: its running tasks do not become suspicious.
    graceful: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFinished(Event):
    worker: str
    key: str
    run_id: int
    nbytes: int
    type_name: str = ""
    duration: float = 0.0
    # A small result, serialized by the worker (opaque to the scheduler).
    inline: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskErred(Event):
    worker: str
    key: str
    run_id: int
    exception: bytes
    traceback: bytes
    text: str
    duration: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyMissing(Event):
    """``worker`` gave up on ``key``: it could not fetch ``dependency`` from any of ``holders``."""

    worker: str
    key: str
    dependency: str
    holders: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicasMissing(Event):
    """A client asked these holders for these keys and they answered without them."""

    holders: tuple[tuple[str, tuple[str, ...]], ...]  # (key, workers)


@dataclass(frozen=True, slots=True, kw_only=True)
class TasksStarted(Event):
    """``worker`` began running ``keys`` (handed them to a task thread)."""

    worker: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class StealAnswered(Event):
    """The victim of a steal request says whether it gave the task up."""

    worker: str
    key: str
    stolen: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPaused(Event):
    """The worker is short of memory (paused) and takes no new tasks, or recovered."""

    worker: str
    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartRequested(Event):
    """Forget everything: every client's futures are cancelled, every task is dropped."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticked(Event):
    """Time passed (``now``); periodic duties such as balancing run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicasAdded(Event):
    """``worker`` now also holds ``keys`` (fetched as inputs for its tasks)."""

    worker: str
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
class RecoveryFinished(Event):
    """The workers that were coming back are back: compute what is still missing."""
