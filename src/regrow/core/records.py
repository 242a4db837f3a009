"""What the scheduler core remembers: one record per task, worker and client.

Owns: ``TaskState``, ``TaskError``, ``WorkerRecord``, ``ClientState`` and the small
collections (``Bag``: a tuple that becomes a set past ``SMALL`` items) they are made of.
Must not: hold rules. What moves these records is ``scheduler_state`` and the modules it
delegates to (``client_requests``, ``recovery``, ``liveness``, ``retirement``...).
"""

from __future__ import annotations

from typing import Any, TypeAlias, TypeVar

from regrow.core.transitions import RELEASED

T = TypeVar("T")

# A task's six collections (dependencies, dependents, waiting_on, waiters, who_wants,
# who_has) are empty or tiny almost always: one client wants it, one worker holds it.
# A set costs 216 bytes even with one element, a 1-tuple 48, so each starts as the empty
# tuple and stays a tuple (insertion-ordered, compared by identity) up to SMALL items;
# past that it becomes a set. Six sets per task were 1.3 KB of the ~2.1 KB a held task
# took; see benchmarks/scale.py.
SMALL = 8
EMPTY: tuple[Any, ...] = ()
Bag: TypeAlias = tuple[T, ...] | set[T]


def added(bag: Bag[T], item: T) -> Bag[T]:
    """``bag`` with ``item`` in it (the same set, or a new tuple or set)."""
    if isinstance(bag, set):
        bag.add(item)
        return bag
    if item in bag:
        return bag
    if len(bag) < SMALL:
        return (*bag, item)
    return {*bag, item}


def discarded(bag: Bag[T], item: T) -> Bag[T]:
    """``bag`` without ``item``; EMPTY once nothing is left, so the set can be freed."""
    if isinstance(bag, set):
        bag.discard(item)
        return bag if bag else EMPTY
    if item in bag:
        return tuple(x for x in bag if x is not item)
    return bag


class TaskState:
    __slots__ = (
        "dependencies",
        "dependents",
        "error",
        "inline",
        "key",
        "memory_losses",
        "nbytes",
        "priority",
        "processing_on",
        "pure",
        "resources",
        "restrictions",
        "retries",
        "run_id",
        "run_spec",
        "started",
        "state",
        "steal_pending",
        "suspicious",
        "type_name",
        "waiters",
        "waiting_on",
        "who_has",
        "who_wants",
    )

    def __init__(self, key: str, run_spec: object, priority: tuple[int, int]) -> None:
        self.key = key
        self.run_spec = run_spec
        self.priority = priority
        self.state = RELEASED
        self.dependencies: Bag[TaskState] = EMPTY
        self.dependents: Bag[TaskState] = EMPTY
        self.waiting_on: Bag[TaskState] = EMPTY
        self.waiters: Bag[TaskState] = EMPTY
        self.who_wants: Bag[ClientState] = EMPTY
        self.who_has: Bag[WorkerRecord] = EMPTY
        self.processing_on: WorkerRecord | None = None
        # Which dispatch of this key counts: a report naming another run is stale.
        self.run_id = 0
        self.nbytes = 0
        self.type_name = ""
        self.retries = 0
        self.restrictions: frozenset[str] | None = None
        # Abstract resources it takes from its worker while it runs there (``GPU``: 1).
        self.resources: dict[str, float] | None = None
        self.pure = True
        self.suspicious = 0
        # Times its result was lost with its holder killed for its memory limit while
        # no task ran there (recovery.remove_worker).
        self.memory_losses = 0
        # Its worker said it began running it (not merely holding it in a queue).
        self.started = False
        self.steal_pending = False
        self.error: TaskError | None = None
        # A small result's serialized bytes, kept here (opaque) so that losing the
        # workers that hold it loses nothing; None when only workers have it.
        self.inline: bytes | None = None

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.state}>"

    # Hashed by name, not by address (equality stays identity): sets of tasks then
    # iterate in the same order whenever the same events are replayed in a process,
    # so the core's commands are reproducible.
    def __hash__(self) -> int:
        return hash(self.key)


class TaskError:
    """Why a task erred; shared by the task that failed and every dependent."""

    __slots__ = ("blame", "exception", "kind", "text", "traceback", "workers")

    def __init__(
        self,
        *,
        blame: str,
        text: str,
        exception: bytes = b"",
        traceback: bytes = b"",
        kind: str = "",
        workers: tuple[str, ...] = (),
    ) -> None:
        self.blame = blame
        self.text = text
        self.exception = exception
        self.traceback = traceback
        self.kind = kind
        self.workers = workers


# A worker's status: what it may be given, and how its removal will count.
RUNNING = "running"  # takes tasks
RETIRING = "retiring"  # retirement requested: takes no tasks, its data is copied away
LEAVING = "leaving"  # goes on purpose (it said so, or a restart): removal is graceful
CLOSED = "closed"  # connection closed: waits for its nanny's reason, then is removed


class WorkerRecord:
    __slots__ = (
        "address",
        "closed_at",
        "draining",
        "has_what",
        "id",
        "isolated",
        "last_done",
        "last_seen",
        "memory_limit",
        "metrics",
        "moving",
        "name",
        "nanny",
        "nbytes",
        "nthreads",
        "paused",
        "pid",
        "processing",
        "reason",
        "resources",
        "slotless",
        "slots",
        "status",
        "used",
    )

    def __init__(
        self, address: str, name: str, nthreads: int, pid: int, memory_limit: int, slots: int
    ) -> None:
        self.nanny = ""
        self.id = address
        # Short of memory: takes no new tasks.
        self.paused = False
        # Runs a suspect task alone (see recovery.isolate).
        self.isolated: TaskState | None = None
        # Takes no new tasks until it is empty, to run a suspect alone.
        self.draining = False
        self.address = address
        self.name = name
        self.nthreads = nthreads
        self.pid = pid
        self.memory_limit = memory_limit
        self.slots = slots
        self.processing: dict[TaskState, None] = {}
        # Of those, the tasks that hold no slot: those that seceded from their thread
        # (``secede()``, they wait on other tasks), and short ones sent beside their
        # inputs (``SchedulerState._beside_inputs``), which take a thread only briefly.
        self.slotless: set[TaskState] = set()
        # Its abstract resources (``--resources GPU=2``), and those its tasks take now.
        self.resources: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        # Liveness (see core.liveness): when it last said anything (the shell's clock),
        # its status, why it leaves (LEAVING) or how its connection closed (CLOSED), when.
        self.last_seen = 0.0
        # When it last finished a task (or joined): how long its queue has stood still.
        self.last_done = 0.0
        self.status = RUNNING
        self.reason = ""
        self.closed_at = 0.0
        # Retiring: keys only it holds, being copied -> (to which worker, due by, attempts).
        self.moving: dict[TaskState, tuple[str, float, int]] = {}
        # What its heartbeats say (memory, spilled...), opaque: shown in info().
        self.metrics: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<Worker {self.address} {self.status} processing={len(self.processing)}>"

    def __hash__(self) -> int:  # see TaskState.__hash__
        return hash(self.address)


class ClientState:
    __slots__ = ("id", "wants")

    def __init__(self, client_id: str) -> None:
        self.id = client_id
        self.wants: set[TaskState] = set()

    def __repr__(self) -> str:
        return f"<Client {self.id}>"

    def __hash__(self) -> int:  # see TaskState.__hash__
        return hash(self.id)
