"""Every task, worker and client the scheduler knows, and the rules that move them.

``SchedulerState.handle(*events)`` is the only way in; it returns the commands
the shell must carry out. It does no IO and reads no clock.

Task states::

    released --> waiting --> queued --> processing --> memory
        ^           |           |           |             |
        |           +-----------+-----------+--> erred    |
        +------------------------------------------------+ (unwanted / lost)
    released/erred with no client and no dependents --> forgotten (deleted)

A task is *needed* while a client wants it or a dependent still waits on it
(``waiters``). Unneeded results are freed on workers at once (reference
counting); their TaskState stays as long as a dependent exists, so lost results
can be recomputed from lineage.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias, TypeVar

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.placement import decide_worker

RELEASED = "released"
WAITING = "waiting"
QUEUED = "queued"
PROCESSING = "processing"
MEMORY = "memory"
ERRED = "erred"
FORGOTTEN = "forgotten"


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


class InvalidTransition(RuntimeError):
    """The core was asked to do something its rules forbid; carries the key's story."""


class TaskState:
    __slots__ = (
        "dependencies",
        "dependents",
        "error",
        "inline",
        "key",
        "nbytes",
        "priority",
        "processing_on",
        "pure",
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
        self.who_has: Bag[WorkerState] = EMPTY
        self.processing_on: WorkerState | None = None
        # Which dispatch of this key counts: a report naming another run is stale.
        self.run_id = 0
        self.nbytes = 0
        self.type_name = ""
        self.retries = 0
        self.restrictions: frozenset[str] | None = None
        self.pure = True
        self.suspicious = 0
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


class WorkerState:
    __slots__ = (
        "address",
        "draining",
        "has_what",
        "isolated",
        "memory_limit",
        "name",
        "nanny",
        "nbytes",
        "nthreads",
        "paused",
        "pid",
        "processing",
        "slots",
    )

    def __init__(
        self, address: str, name: str, nthreads: int, pid: int, memory_limit: int, slots: int
    ) -> None:
        self.nanny = ""
        # Short of memory: takes no new tasks.
        self.paused = False
        # Runs a suspect task alone (see SchedulerState._isolate).
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
        self.has_what: set[TaskState] = set()
        self.nbytes = 0

    def __repr__(self) -> str:
        return f"<Worker {self.address} processing={len(self.processing)}>"

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


class SchedulerState:
    """The scheduler's whole state; mutated only by ``handle``."""

    def __init__(
        self,
        *,
        worker_saturation: float = 4.0,
        default_task_duration: float = 0.001,
        bandwidth: float = 500e6,
        allowed_failures: int = 3,
        first_run_id: int = 1,
        inline_limit: int = 256 * 2**20,
        validate: bool = False,
    ) -> None:
        self.worker_saturation = worker_saturation
        self.bandwidth = bandwidth
        self.allowed_failures = allowed_failures
        self.validate = validate
        # Small results kept here stop at this many bytes in all: past it, new ones stay
        # with their workers only (as large ones always do).
        self.inline_limit = inline_limit
        self.inline_bytes = 0
        # Called as (task, start, finish) on every transition; the journal listens here.
        self.on_transition: Callable[[TaskState, str, str], None] | None = None
        # Between StateRestored and RecoveryFinished: held results are collected, nothing runs.
        self.recovering = False
        self.avg_duration = default_task_duration
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: dict[str, ClientState] = {}
        # Workers with at least one free slot, in arrival order.
        self.free: dict[WorkerState, None] = {}
        # Tasks that were running when a worker died: each runs alone before it is judged.
        self.suspects: list[TaskState] = []
        # Why each suspect's workers died: key -> [(worker, reason)].
        self.deaths: dict[str, list[tuple[str, str]]] = {}
        # Keys to keep that many copies of (scatter(..., replicas=k)).
        self.replicas: dict[str, int] = {}
        self._queue: list[tuple[tuple[int, int], str]] = []
        self._undrain_pending = False
        self._queued_count = 0
        self._seq = itertools.count()
        # A restarted scheduler starts above any run id its predecessor handed out (the
        # shell passes a clock reading), so no report from before a crash matches a run.
        self._run_ids = itertools.count(first_run_id)
        self._out: list[cmd.Command] = []
        self._stimulus = ""
        # Bounded story of transitions: (key, start, finish, stimulus_id).
        self.log: deque[tuple[str, str, str, str]] = deque(maxlen=100_000)
        self.counts = {
            "finished": 0,
            "erred": 0,
            "recomputed": 0,
            "rescheduled": 0,
            "stolen": 0,
            "lost": 0,
            "workers_lost": 0,
        }

    # ------------------------------------------------------------------ entry
    def handle(self, *events: ev.Event) -> list[cmd.Command]:
        for event in events:
            self._stimulus = event.stimulus_id
            match event:
                case ev.TasksSubmitted():
                    self._tasks_submitted(event)
                case ev.TaskFinished():
                    self._task_finished(event)
                case ev.TaskErred():
                    self._task_erred(event)
                case ev.KeysReleased():
                    self._keys_released(event.client, event.keys)
                case ev.KeysDesired():
                    self._keys_desired(event)
                case ev.KeysCancelled():
                    self._keys_cancelled(event)
                case ev.DataScattered():
                    self._data_scattered(event)
                case ev.WorkerAdded():
                    self._worker_added(event)
                case ev.WorkerRemoved():
                    self._worker_removed(event)
                case ev.DependencyMissing():
                    self._dependency_missing(event)
                case ev.StealAnswered():
                    self._steal_answered(event)
                case ev.ReplicasAdded():
                    self._replicas_added(event)
                case ev.ReplicasMissing():
                    for key, holders in event.holders:
                        dep = self.tasks.get(key)
                        if dep is not None:
                            self._drop_holders(dep, holders)
                case ev.TasksStarted():
                    ws = self.workers.get(event.worker)
                    for key in event.keys:
                        ts = self.tasks.get(key)
                        if ts is not None and ts.processing_on is ws and ws is not None:
                            ts.started = True
                case ev.ClientConnected():
                    self.clients.setdefault(event.client, ClientState(event.client))
                case ev.ClientDisconnected():
                    self._client_disconnected(event.client)
                case ev.WorkerPaused():
                    self._worker_paused(event)
                case ev.RestartRequested():
                    self._restart()
                case ev.Ticked():
                    if not self.recovering:
                        self._balance()
                case ev.StateRestored():
                    self._state_restored(event)
                case ev.RecoveryFinished():
                    self._recovery_finished()
                case _:
                    raise TypeError(f"unknown event {event!r}")
            if self.suspects:
                self._isolate()
            elif self._undrain_pending:
                self._undrain()
            self._undrain_pending = False
        out, self._out = self._out, []
        if self.validate:
            from regrow.core.invariants import validate_state

            validate_state(self)
        return out

    # --------------------------------------------------------------- helpers
    def _emit(self, command: cmd.Command) -> None:
        self._out.append(command)

    def _set_state(self, ts: TaskState, finish: str) -> None:
        self.log.append((ts.key, ts.state, finish, self._stimulus))
        if self.on_transition is not None:
            self.on_transition(ts, ts.state, finish)
        ts.state = finish

    def story(self, key: str) -> list[tuple[str, str, str, str]]:
        return [entry for entry in self.log if entry[0] == key]

    def _illegal(self, ts: TaskState, what: str) -> InvalidTransition:
        return InvalidTransition(f"{what} for {ts!r}; story: {self.story(ts.key)[-10:]}")

    def _client(self, client_id: str) -> ClientState:
        cs = self.clients.get(client_id)
        if cs is None:
            cs = self.clients[client_id] = ClientState(client_id)
        return cs

    @staticmethod
    def _needed(ts: TaskState) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _slots_for(self, nthreads: int) -> int:
        return max(1, math.ceil(nthreads * self.worker_saturation))

    # ------------------------------------------------------------ submission
    def _tasks_submitted(self, event: ev.TasksSubmitted) -> None:
        client = self._client(event.client)
        fresh: list[TaskState] = []
        for spec in event.tasks:
            ts = self.tasks.get(spec.key)
            if ts is not None:
                continue  # a pure key already known: the work is shared
            ts = TaskState(spec.key, spec.run_spec, (-spec.priority, next(self._seq)))
            ts.retries = spec.retries
            ts.pure = spec.pure
            if spec.workers:
                ts.restrictions = frozenset(spec.workers)
            missing = [d for d in spec.dependencies if d not in self.tasks]
            for dep_key in spec.dependencies:
                dep = self.tasks.get(dep_key)
                if dep is not None:
                    ts.dependencies = added(ts.dependencies, dep)
                    dep.dependents = added(dep.dependents, ts)
            self.tasks[spec.key] = ts
            if missing:
                # Erred in place, not through _err: nobody wants it yet, and _err would
                # forget it before the client's want (and its report) is registered below.
                self._set_state(ts, ERRED)
                ts.error = TaskError(
                    blame=ts.key,
                    kind="FutureLostError",
                    text=f"task {ts.key!r} depends on {missing[0]!r}, which the scheduler "
                    "no longer knows (was its future released?)",
                )
            fresh.append(ts)
        for key in event.wanted:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            self._want(client, ts)
        for ts in fresh:
            if ts.state in (RELEASED, ERRED) and not self._needed(ts):
                self._check_forget(ts)

    def _want(self, client: ClientState, ts: TaskState, report: bool = False) -> None:
        new = report or client not in ts.who_wants
        ts.who_wants = added(ts.who_wants, client)
        client.wants.add(ts)
        if ts.state == RELEASED:
            self._compute(ts)
        elif new and ts.state == MEMORY:
            self._emit(
                cmd.ReportInMemory(
                    client=client.id,
                    key=ts.key,
                    type_name=ts.type_name,
                    nbytes=ts.nbytes,
                    inline=ts.inline,
                )
            )
        elif new and ts.state == ERRED:
            self._report_erred(client, ts)

    def _keys_desired(self, event: ev.KeysDesired) -> None:
        client = self._client(event.client)
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None:
                self._emit(
                    cmd.ReportErred(
                        client=client.id,
                        key=key,
                        exception=b"",
                        traceback=b"",
                        kind="FutureLostError",
                        text=f"the scheduler does not know key {key!r} (it was released)",
                        blame=key,
                    )
                )
                continue
            self._want(client, ts, report=True)

    # ----------------------------------------------------------- computation
    def _compute(self, root: TaskState) -> None:
        """Bring a released task (and, recursively, its released inputs) to be computed."""
        stack = [root]
        while stack:
            ts = stack.pop()
            # An input pushed for a dependent that erred meanwhile is not needed any more.
            if ts.state != RELEASED or not self._needed(ts):
                continue
            if ts.run_spec is None:
                self._err(
                    ts,
                    TaskError(
                        blame=ts.key,
                        kind="LostDataError",
                        text=f"scattered data {ts.key!r} was lost with its worker and cannot be "
                        "recomputed (scatter with replicas=k to keep copies)",
                    ),
                )
                continue
            if ts.type_name and not ts.pure:
                self._broadcast(
                    "warnings",
                    f"impure task {ts.key!r} (pure=False) is computed again after a loss; "
                    "its new result may differ from the first",
                )
            self._set_state(ts, WAITING)
            erred_dep: TaskState | None = None
            for dep in ts.dependencies:
                dep.waiters = added(dep.waiters, ts)
                if dep.state == MEMORY:
                    continue
                if dep.state == ERRED:
                    erred_dep = dep
                    continue
                ts.waiting_on = added(ts.waiting_on, dep)
                if dep.state == RELEASED:
                    stack.append(dep)
            if erred_dep is not None:
                assert erred_dep.error is not None
                self._err(ts, erred_dep.error)
            elif not ts.waiting_on:
                self._ready(ts)

    def _ready(self, ts: TaskState, prefer: WorkerState | None = None) -> None:
        if ts.suspicious:
            self._set_state(ts, QUEUED)
            self._queued_count += 1
            self.suspects.append(ts)
            return
        if prefer is not None and self._allowed(ts, prefer) and prefer in self.free:
            ws: WorkerState | None = prefer
        else:
            ws = decide_worker(ts, self.free, self.bandwidth, self.avg_duration)
        if ws is None:
            self._set_state(ts, QUEUED)
            heapq.heappush(self._queue, (ts.priority, ts.key))
            self._queued_count += 1
            return
        self._send_to(ts, ws)

    @staticmethod
    def _allowed(ts: TaskState, ws: WorkerState) -> bool:
        r = ts.restrictions
        return r is None or ws.address in r or ws.name in r or (bool(ws.nanny) and ws.nanny in r)

    def _update_free(self, ws: WorkerState) -> None:
        """A worker takes new tasks while it has a free slot and is not held back."""
        if (
            len(ws.processing) < ws.slots
            and not ws.paused
            and ws.isolated is None
            and not ws.draining
            and ws.address in self.workers
        ):
            # Re-inserting moves it to the end: ``free`` stays ordered from the worker given
            # work least recently to the one given work last (placement relies on it).
            self.free.pop(ws, None)
            self.free[ws] = None
        else:
            self.free.pop(ws, None)

    def _send_to(self, ts: TaskState, ws: WorkerState) -> None:
        self._set_state(ts, PROCESSING)
        ts.processing_on = ws
        ts.run_id = next(self._run_ids)
        ws.processing[ts] = None
        self._update_free(ws)
        self._emit(
            cmd.Compute(
                stimulus_id=self._stimulus,
                worker=ws.address,
                key=ts.key,
                run_id=ts.run_id,
                run_spec=ts.run_spec,
                who_has={d.key: [w.address for w in d.who_has] for d in ts.dependencies},
                nbytes={d.key: d.nbytes for d in ts.dependencies},
                priority=ts.priority,
                inline={d.key: d.inline for d in ts.dependencies if d.inline is not None},
            )
        )

    def _stop_processing(self, ts: TaskState) -> WorkerState | None:
        ws = ts.processing_on
        ts.processing_on = None
        ts.steal_pending = False
        ts.started = False
        if ws is not None:
            ws.processing.pop(ts, None)
            if ws.isolated is ts:
                ws.isolated = None
            self._update_free(ws)
        return ws

    def _fill(self, ws: WorkerState) -> None:
        """Give a worker with free slots queued tasks, best priority first."""
        if self.suspects:
            self._isolate()
        if ws not in self.free:
            return
        skipped: list[tuple[tuple[int, int], str]] = []
        while self._queue and ws in self.free:
            prio, key = heapq.heappop(self._queue)
            ts = self.tasks.get(key)
            if ts is None or ts.state != QUEUED or ts.priority != prio:
                continue
            if not self._allowed(ts, ws):
                skipped.append((prio, key))
                continue
            self._queued_count -= 1
            self._send_to(ts, ws)
        for item in skipped:
            heapq.heappush(self._queue, item)

    def _fill_all(self) -> None:
        for ws in list(self.free):
            if not self._queued_count:
                return
            self._fill(ws)

    def _unqueue(self, ts: TaskState) -> None:
        # Lazy deletion: the heap entry is skipped when popped.
        self._queued_count -= 1
        if ts.suspicious and ts in self.suspects:
            self.suspects.remove(ts)
            if not self.suspects:
                # Not now: a fill in the middle of a transition (results being marked
                # lost, say) could send out a task whose inputs are gone. handle()
                # undrains once the event is dealt with.
                self._undrain_pending = True

    def _undrain(self) -> None:
        for ws in self.workers.values():
            if ws.draining:
                ws.draining = False
                self._update_free(ws)
                self._fill(ws)

    def _isolate(self) -> None:
        """Run each suspect alone on a worker, so a death names the culprit.

        A task that was running when its worker died may be the cause, or may have
        been unlucky to share the worker. Run alone, it either finishes (and is
        cleared) or kills the worker again (and takes the blame alone).
        """
        while self.suspects:
            empty = [
                ws
                for ws in self.workers.values()
                if not ws.processing and not ws.paused and ws.isolated is None
            ]
            ts = self.suspects[0]
            target = next((ws for ws in empty if self._allowed(ts, ws)), None)
            if target is None:
                # Hold back the least busy allowed worker until it is empty.
                if not any(ws.draining for ws in self.workers.values()):
                    allowed = [
                        ws
                        for ws in self.workers.values()
                        if self._allowed(ts, ws) and not ws.paused and ws.isolated is None
                    ]
                    if allowed:
                        drain = min(allowed, key=lambda w: len(w.processing))
                        drain.draining = True
                        self._update_free(drain)
                return
            self.suspects.pop(0)
            self._queued_count -= 1
            target.draining = False
            target.isolated = ts
            self._send_to(ts, target)
        self._undrain()

    # --------------------------------------------------------------- results
    def _task_finished(self, event: ev.TaskFinished) -> None:
        ws = self.workers.get(event.worker)
        if ws is None:
            return  # a removed worker's late report: never let stale results in
        ts = self.tasks.get(event.key)
        if ts is None or ts.state not in (PROCESSING, MEMORY):
            self._emit(cmd.FreeKeys(worker=ws.address, keys=(event.key,)))
            return
        if self._stale(ts, ws, event.run_id):
            return
        if ts.state == MEMORY:
            if ws not in ts.who_has:  # the worker already held it when sent the run
                ts.who_has = added(ts.who_has, ws)
                ws.has_what.add(ts)
                ws.nbytes += ts.nbytes
            return
        self.counts["finished"] += 1
        if event.duration > 0:
            self.avg_duration = 0.9 * self.avg_duration + 0.1 * event.duration
        owner = self._stop_processing(ts)
        self._set_state(ts, MEMORY)
        ts.nbytes = event.nbytes
        ts.type_name = event.type_name
        self._keep_inline(ts, event.inline)
        if ts.suspicious:
            ts.suspicious = 0
            self.deaths.pop(ts.key, None)
        ts.who_has = added(ts.who_has, ws)
        ws.has_what.add(ts)
        ws.nbytes += ts.nbytes
        self._arrived(ts, event.inline)
        for dep in ts.dependencies:
            dep.waiters = discarded(dep.waiters, ts)
            self._check_release(dep)
        if not self._needed(ts):
            self._release(ts)
            self._check_forget(ts)
        if owner is not None and owner is not ws and owner.address in self.workers:
            self._fill(owner)
        self._fill(ws)

    def _keep_inline(self, ts: TaskState, inline: bytes | None) -> None:
        if inline is not None and self.inline_bytes + len(inline) <= self.inline_limit:
            ts.inline = inline
            self.inline_bytes += len(inline)

    def _drop_inline(self, ts: TaskState) -> None:
        if ts.inline is not None:
            self.inline_bytes -= len(ts.inline)
            ts.inline = None

    def _stale(self, ts: TaskState, ws: WorkerState, run_id: int) -> bool:
        """Is this report from a run that no longer counts (freed, moved, pre-crash)?

        The classic race: a worker finishes a run just as the scheduler frees it (cancel,
        release) and the key is submitted again. The late report must not be taken for
        the new run, or the scheduler would list a holder that has dropped the data.
        """
        if run_id == ts.run_id:
            return False
        if ws is not ts.processing_on and ws not in ts.who_has:
            # What the worker still holds or runs of that old run is garbage now; a later
            # order for the key reaches it after this one, on the same stream.
            self._emit(cmd.FreeKeys(worker=ws.address, keys=(ts.key,)))
        return True

    def _task_erred(self, event: ev.TaskErred) -> None:
        ws = self.workers.get(event.worker)
        if ws is None:
            return
        ts = self.tasks.get(event.key)
        if ts is None or ts.state != PROCESSING or self._stale(ts, ws, event.run_id):
            return
        owner = self._stop_processing(ts)
        if ts.retries > 0:
            ts.retries -= 1
            self._set_state(ts, RELEASED)
            self._compute(ts)
        else:
            self.counts["erred"] += 1
            self._err(
                ts,
                TaskError(
                    blame=ts.key,
                    text=event.text,
                    exception=event.exception,
                    traceback=event.traceback,
                ),
            )
        if owner is not None:
            self._fill(owner)

    def _err(self, root: TaskState, error: TaskError) -> None:
        """``root`` errs with ``error``, and so does every dependent still waiting on it."""
        stack = [root]
        while stack:
            ts = stack.pop()
            if ts.state == ERRED:
                continue
            if ts.state == QUEUED:
                self._unqueue(ts)
            elif ts.state == PROCESSING:
                ws = self._stop_processing(ts)
                if ws is not None:
                    self._emit(cmd.FreeKeys(worker=ws.address, keys=(ts.key,)))
                    self._fill(ws)
            elif ts.state == MEMORY:
                continue
            self._set_state(ts, ERRED)
            ts.error = error
            # Its inputs lose a waiter: free those nobody needs now, even running ones.
            self._drop_waiting(ts)
            for client in ts.who_wants:
                self._report_erred(client, ts)
            for dependent in ts.dependents:
                if dependent.state in (WAITING, QUEUED, PROCESSING):
                    stack.append(dependent)
            if not self._needed(ts):
                self._check_forget(ts)

    def _report_erred(self, client: ClientState, ts: TaskState) -> None:
        error = ts.error
        assert error is not None
        self._emit(
            cmd.ReportErred(
                client=client.id,
                key=ts.key,
                exception=error.exception,
                traceback=error.traceback,
                text=error.text,
                kind=error.kind,
                blame=error.blame,
                workers=error.workers,
            )
        )

    # ------------------------------------------------------------ releasing
    def _check_release(self, ts: TaskState) -> None:
        if ts.state == MEMORY and not self._needed(ts):
            self._release(ts)
            self._check_forget(ts)

    def _release(self, ts: TaskState) -> None:
        """Drop a task's result or pending work; keep its lineage."""
        if self._release_one(ts):
            self._drop_waiting(ts)

    def _release_one(self, ts: TaskState) -> bool:
        """Stop ``ts`` alone (not its inputs); False if it was released or erred already."""
        if ts.state == MEMORY:
            for ws in ts.who_has:
                ws.has_what.discard(ts)
                ws.nbytes -= ts.nbytes
                self._emit(cmd.FreeKeys(worker=ws.address, keys=(ts.key,)))
            ts.who_has = EMPTY
            self._drop_inline(ts)
        elif ts.state == PROCESSING:
            owner = self._stop_processing(ts)
            if owner is not None:
                self._emit(cmd.FreeKeys(worker=owner.address, keys=(ts.key,)))
                self._fill(owner)
        elif ts.state == QUEUED:
            self._unqueue(ts)
        elif ts.state == WAITING:
            pass
        elif ts.state in (RELEASED, ERRED):
            return False
        else:
            raise self._illegal(ts, f"release from {ts.state}")
        self._set_state(ts, RELEASED)
        return True

    def _drop_waiting(self, root: TaskState) -> None:
        """``root`` no longer needs its inputs: release those nobody else needs.

        Iterative, not recursive: releasing a long chain must not hit the recursion limit.
        """
        stack = [root]
        dropped: list[TaskState] = []
        while stack:
            ts = stack.pop()
            ts.waiting_on = EMPTY
            for dep in ts.dependencies:
                if ts in dep.waiters:
                    dep.waiters = discarded(dep.waiters, ts)
                    if dep.state != MEMORY and not self._needed(dep):
                        if self._release_one(dep):
                            stack.append(dep)
                        dropped.append(dep)
                    else:
                        self._check_release(dep)
        # Only once nothing waits any more: forgetting unlinks a task from its inputs.
        for dep in dropped:
            self._check_forget(dep)

    def _check_forget(self, root: TaskState) -> None:
        stack = [root]
        while stack:
            ts = stack.pop()
            if ts.state not in (RELEASED, ERRED) or ts.who_wants or ts.dependents:
                continue
            if self.tasks.get(ts.key) is not ts:
                continue
            del self.tasks[ts.key]
            self.deaths.pop(ts.key, None)
            self.replicas.pop(ts.key, None)
            self._set_state(ts, FORGOTTEN)
            for dep in ts.dependencies:
                dep.dependents = discarded(dep.dependents, ts)
                dep.waiters = discarded(dep.waiters, ts)
                if dep.state == MEMORY:
                    self._check_release(dep)
                else:
                    stack.append(dep)

    def _keys_released(self, client_id: str, keys: Iterable[str]) -> None:
        client = self.clients.get(client_id)
        if client is None:
            return
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None or client not in ts.who_wants:
                continue
            ts.who_wants = discarded(ts.who_wants, client)
            client.wants.discard(ts)
            if not self._needed(ts):
                self._release(ts)
                self._check_forget(ts)

    def _client_disconnected(self, client_id: str) -> None:
        client = self.clients.get(client_id)
        if client is None:
            return
        self._keys_released(client_id, [ts.key for ts in list(client.wants)])
        del self.clients[client_id]

    def _keys_cancelled(self, event: ev.KeysCancelled) -> None:
        client = self._client(event.client)
        doomed: dict[TaskState, None] = {}
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None:
                self._emit(cmd.ReportCancelled(client=client.id, key=key))
                continue
            others = any(c is not client for c in ts.who_wants)
            if others and not event.force:
                if client in ts.who_wants:
                    self._emit(cmd.ReportCancelled(client=client.id, key=key))
                self._keys_released(client.id, [key])
                continue
            stack = [ts]
            while stack:
                t = stack.pop()
                if t in doomed:
                    continue
                doomed[t] = None
                stack.extend(t.dependents)
            if client not in ts.who_wants:
                self._emit(cmd.ReportCancelled(client=client.id, key=key))
        for ts in doomed:
            for c in ts.who_wants:
                c.wants.discard(ts)
                self._emit(cmd.ReportCancelled(client=c.id, key=ts.key))
            ts.who_wants = EMPTY
        if event.force:
            for ts in doomed:
                if ts.state == PROCESSING and ts.processing_on is not None:
                    self._emit(cmd.Interrupt(worker=ts.processing_on.address, key=ts.key))
        # Dependents first, so their inputs lose their last waiter afterwards (and no
        # queued dependent is sent out while one of its inputs is already freed).
        for ts in self._dependents_first(doomed):
            if ts.state == ERRED:
                self._set_state(ts, RELEASED)
            self._release(ts)
        for ts in doomed:
            self._check_forget(ts)

    @staticmethod
    def _dependents_first(tasks: Iterable[TaskState]) -> list[TaskState]:
        """``tasks`` (closed under dependents), each after all of its dependents."""
        order: list[TaskState] = []
        seen: set[TaskState] = set()
        for root in tasks:
            if root in seen:
                continue
            seen.add(root)
            stack = [(root, iter(root.dependents))]
            while stack:
                ts, rest = stack[-1]
                nxt = next((d for d in rest if d not in seen), None)
                if nxt is None:
                    stack.pop()
                    order.append(ts)
                else:
                    seen.add(nxt)
                    stack.append((nxt, iter(nxt.dependents)))
        return order

    # --------------------------------------------------------------- scatter
    def _data_scattered(self, event: ev.DataScattered) -> None:
        client = self._client(event.client)
        for item in event.keys:
            holders = [self.workers[w] for w in item.workers if w in self.workers]
            ts = self.tasks.get(item.key)
            if ts is None:
                ts = TaskState(item.key, None, (0, next(self._seq)))
                self.tasks[item.key] = ts
            if ts.state not in (MEMORY, RELEASED):
                continue
            if not holders:
                ts.who_wants = added(ts.who_wants, client)
                client.wants.add(ts)
                self._err(
                    ts,
                    TaskError(
                        blame=ts.key,
                        kind="LostDataError",
                        text=f"scattered data {ts.key!r} has no live worker holding it",
                    ),
                )
                continue
            if ts.state == RELEASED:
                self._set_state(ts, MEMORY)
            if event.replicas > 1:
                self.replicas[ts.key] = event.replicas
            ts.nbytes = item.nbytes
            ts.type_name = item.type_name
            for ws in holders:
                if ws not in ts.who_has:
                    ts.who_has = added(ts.who_has, ws)
                    ws.has_what.add(ts)
                    ws.nbytes += ts.nbytes
            self._want(client, ts)
            self._wake_dependents(ts)

    # --------------------------------------------------------------- workers
    def _worker_added(self, event: ev.WorkerAdded) -> None:
        if event.worker in self.workers:
            return
        ws = WorkerState(
            event.worker,
            event.name or event.worker,
            max(1, event.nthreads),
            event.pid,
            event.memory_limit,
            self._slots_for(max(1, event.nthreads)),
        )
        ws.nanny = event.nanny
        self.workers[ws.address] = ws
        self._update_free(ws)
        self._broadcast("workers", f"worker {ws.address} ({ws.name}) joined")
        if event.keys:
            self._adopt(ws, event.keys)
        self._replicate(list(self.replicas))
        self._fill(ws)

    def _adopt(self, ws: WorkerState, keys: tuple[tuple[str, int], ...]) -> None:
        """A worker arrives holding results: keep those the graph can use, free the rest."""
        stale: list[str] = []
        for key, nbytes in keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state not in (MEMORY, RELEASED):
                stale.append(key)
                continue
            if ts.state == RELEASED and not (self.recovering or self._needed(ts)):
                stale.append(key)
                continue
            if ts.state == RELEASED:
                self._set_state(ts, MEMORY)
                ts.nbytes = nbytes
            if ws not in ts.who_has:
                ts.who_has = added(ts.who_has, ws)
                ws.has_what.add(ts)
                ws.nbytes += ts.nbytes
            if not self.recovering:
                self._arrived(ts)
        if stale:
            self._emit(cmd.FreeKeys(worker=ws.address, keys=tuple(stale)))

    def _arrived(self, ts: TaskState, inline: bytes | None = None) -> None:
        """``ts`` is in memory: tell its clients, and wake dependents waiting on it.

        A small result travels with the news (even one not kept here for want of room),
        so that its clients need not fetch it from a worker.
        """
        for client in ts.who_wants:
            self._emit(
                cmd.ReportInMemory(
                    client=client.id,
                    key=ts.key,
                    type_name=ts.type_name,
                    nbytes=ts.nbytes,
                    inline=inline,
                )
            )
        self._wake_dependents(ts)

    def _wake_dependents(self, ts: TaskState) -> None:
        for dep in tuple(ts.waiters):
            if dep.state == WAITING:
                dep.waiting_on = discarded(dep.waiting_on, ts)
                if not dep.waiting_on:
                    self._ready(dep)

    def _state_restored(self, event: ev.StateRestored) -> None:
        self.recovering = True
        for row in event.tasks:
            if row.key in self.tasks:
                continue
            ts = TaskState(row.key, row.run_spec, (-row.priority, next(self._seq)))
            ts.retries = row.retries
            ts.pure = row.pure
            if row.workers:
                ts.restrictions = frozenset(row.workers)
            if row.replicas > 1:
                self.replicas[row.key] = row.replicas
            for dep_key in row.dependencies:
                dep = self.tasks.get(dep_key)
                if dep is not None:
                    ts.dependencies = added(ts.dependencies, dep)
                    dep.dependents = added(dep.dependents, ts)
            if row.error is not None:
                e = row.error
                ts.state = ERRED
                ts.error = TaskError(
                    blame=e.blame,
                    text=e.text,
                    exception=e.exception,
                    traceback=e.traceback,
                    kind=e.kind,
                    workers=e.workers,
                )
            self.tasks[row.key] = ts
        for client_id, key in event.wants:
            wanted = self.tasks.get(key)
            if wanted is not None:
                client = self._client(client_id)
                wanted.who_wants = added(wanted.who_wants, client)
                client.wants.add(wanted)

    def _recovery_finished(self) -> None:
        """Compute what clients want that no worker brought back; free what nobody needs."""
        self.recovering = False
        recomputed = 0
        for ts in list(self.tasks.values()):
            if ts.state == RELEASED and ts.who_wants:
                recomputed += 1
                self._compute(ts)
        for ts in list(self.tasks.values()):
            if self.tasks.get(ts.key) is not ts:
                continue
            if ts.state == MEMORY and not self._needed(ts):
                self._release(ts)
                self._check_forget(ts)
            elif ts.state in (RELEASED, ERRED) and not self._needed(ts):
                self._check_forget(ts)
        self._broadcast(
            "workers",
            f"scheduler recovered from its journal: {len(self.tasks)} tasks, "
            f"{recomputed} wanted result(s) computed again",
        )
        self._fill_all()

    def _worker_removed(self, event: ev.WorkerRemoved) -> None:
        ws = self.workers.pop(event.worker, None)
        if ws is None:
            return
        self.free.pop(ws, None)
        if not event.graceful:
            self.counts["workers_lost"] += 1
        # First take its running tasks off it (and judge them), then deal with the
        # data it held, then reschedule: so a rescheduled task never points at it.
        interrupted = list(ws.processing)
        for ts in interrupted:
            # Only a task that had begun running can have killed its worker; one that
            # waited in its queue is simply rescheduled.
            ran = ts.started
            self._stop_processing(ts)
            self._set_state(ts, RELEASED)
            if not event.graceful and ran:
                ts.suspicious += 1
                self.deaths.setdefault(ts.key, []).append((ws.address, event.reason))
                for client in ts.who_wants:
                    self._emit(
                        cmd.ReportInterrupted(client=client.id, key=ts.key, worker=ws.address)
                    )
        ws.isolated = None
        under_replicated: list[str] = []
        gone: list[TaskState] = []
        for ts in list(ws.has_what):
            ts.who_has = discarded(ts.who_has, ws)
            ws.has_what.discard(ts)
            if not ts.who_has and ts.inline is None:
                gone.append(ts)
            elif ts.key in self.replicas:
                under_replicated.append(ts.key)
        lost = self._lost_all(gone)
        ws.nbytes = 0
        rescheduled = 0
        for ts in interrupted:
            if ts.state != RELEASED:
                continue
            # Only a death is judged: a graceful retirement never kills a task.
            if not event.graceful and ts.suspicious >= self.allowed_failures:
                deaths = self.deaths.pop(ts.key, [])
                self._err(
                    ts,
                    TaskError(
                        blame=ts.key,
                        kind="KilledWorker",
                        text="; ".join(f"{w}: {r or 'lost'}" for w, r in deaths),
                        workers=tuple(w for w, _ in deaths),
                    ),
                )
            elif self._needed(ts):
                ts.waiting_on = EMPTY
                rescheduled += 1
                self._compute(ts)
            else:
                self._drop_waiting(ts)
                self._check_forget(ts)
        self.counts["rescheduled"] += rescheduled
        how = "retired" if event.graceful else "lost"
        self._broadcast(
            "workers",
            f"worker {ws.address} ({ws.name}) {how}: {event.reason or 'no reason given'}; "
            f"{rescheduled} running task(s) rescheduled, {lost} lost result(s) being recomputed",
        )
        self._replicate(under_replicated)
        if not self.suspects:
            self._undrain()
        self._fill_all()

    def _replicate(self, keys: Iterable[str]) -> None:
        """Copy each key held by fewer workers than it should be onto more workers."""
        orders: dict[WorkerState, dict[str, list[str]]] = {}
        for key in keys:
            ts = self.tasks.get(key)
            want = self.replicas.get(key, 1)
            if ts is None or ts.state != MEMORY:
                self.replicas.pop(key, None)
                continue
            missing = want - len(ts.who_has)
            if missing <= 0:
                continue
            targets = sorted(
                (w for w in self.workers.values() if w not in ts.who_has and not w.paused),
                key=lambda w: w.nbytes,
            )[:missing]
            holders = [w.address for w in ts.who_has]
            for target in targets:
                orders.setdefault(target, {})[key] = holders
        for target, who_has in orders.items():
            self._emit(cmd.AcquireReplicas(worker=target.address, who_has=who_has))

    def _broadcast(self, topic: str, message: str) -> None:
        for client in self.clients.values():
            self._emit(cmd.ReportEvent(client=client.id, topic=topic, message=message))

    def _worker_paused(self, event: ev.WorkerPaused) -> None:
        ws = self.workers.get(event.worker)
        if ws is None or ws.paused == event.paused:
            return
        ws.paused = event.paused
        self._update_free(ws)
        if not event.paused:
            self._fill(ws)

    def _restart(self) -> None:
        """Every client's futures are cancelled and every task is forgotten."""
        for client in self.clients.values():
            for ts in client.wants:
                self._emit(cmd.ReportCancelled(client=client.id, key=ts.key))
            client.wants.clear()
        for ts in self.tasks.values():
            self.log.append((ts.key, ts.state, FORGOTTEN, self._stimulus))
        self.tasks.clear()
        self._queue.clear()
        self._queued_count = 0
        self.suspects.clear()
        self.deaths.clear()
        self.replicas.clear()
        self.inline_bytes = 0
        for ws in self.workers.values():
            ws.processing.clear()
            ws.has_what.clear()
            ws.nbytes = 0
            ws.isolated = None
            ws.draining = False
            self._update_free(ws)

    def _lost(self, ts: TaskState) -> int:
        """The last copy of a result is gone: recompute it if anyone needs it (returns 1 then)."""
        return self._lost_all([ts])

    def _lost_all(self, gone: list[TaskState]) -> int:
        """The last copies of these results are gone: recompute those still needed.

        Every one is marked lost before any is recomputed, so that a recomputation never
        counts on another of them (a Compute naming a dead holder); returns how many are
        being recomputed.
        """
        for ts in gone:
            self.counts["lost"] += 1
            # Dependents that were about to run elsewhere must wait for it again.
            for dependent in list(ts.waiters):
                if dependent.state in (PROCESSING, QUEUED):
                    if dependent.state == PROCESSING:
                        ws = self._stop_processing(dependent)
                        if ws is not None:
                            self._emit(cmd.FreeKeys(worker=ws.address, keys=(dependent.key,)))
                    else:
                        self._unqueue(dependent)
                    self._set_state(dependent, WAITING)
                    dependent.waiting_on = added(dependent.waiting_on, ts)
                elif dependent.state == WAITING:
                    dependent.waiting_on = added(dependent.waiting_on, ts)
            self._set_state(ts, RELEASED)
        recomputed = 0
        for ts in gone:
            if self.tasks.get(ts.key) is not ts or ts.state == ERRED:
                continue
            if ts.state == RELEASED and not self._needed(ts):
                self._check_forget(ts)
                continue
            for client in ts.who_wants:
                self._emit(cmd.ReportLost(client=client.id, key=ts.key))
            self.counts["recomputed"] += 1
            recomputed += 1
            if ts.state != RELEASED:
                continue  # already brought back as the input of another lost result
            waiters = set(ts.waiters)
            self._compute(ts)
            # _compute re-registered it with its own inputs; the dependents stay waiting on it.
            for dependent in waiters:
                if dependent.state == WAITING and ts.state != ERRED:
                    dependent.waiting_on = added(dependent.waiting_on, ts)
        return recomputed

    def _replicas_added(self, event: ev.ReplicasAdded) -> None:
        ws = self.workers.get(event.worker)
        if ws is None:
            return
        stale: list[str] = []
        for key in event.keys:
            ts = self.tasks.get(key)
            if ts is None or ts.state != MEMORY:
                stale.append(key)
            elif ws not in ts.who_has:
                ts.who_has = added(ts.who_has, ws)
                ws.has_what.add(ts)
                ws.nbytes += ts.nbytes
        if stale:
            self._emit(cmd.FreeKeys(worker=ws.address, keys=tuple(stale)))

    def _drop_holders(self, dep: TaskState, holders: Iterable[str]) -> None:
        """These workers do not have ``dep`` after all; recompute it if nobody does."""
        if dep.state != MEMORY:
            return
        for holder in holders:
            hs = self.workers.get(holder)
            if hs is not None and hs in dep.who_has:
                dep.who_has = discarded(dep.who_has, hs)
                hs.has_what.discard(dep)
                hs.nbytes -= dep.nbytes
        if not dep.who_has and dep.inline is None:
            self._lost(dep)

    def _dependency_missing(self, event: ev.DependencyMissing) -> None:
        ws = self.workers.get(event.worker)
        ts = self.tasks.get(event.key)
        dep = self.tasks.get(event.dependency)
        if dep is not None:
            self._drop_holders(dep, event.holders)
        if ts is None or ws is None or ts.state != PROCESSING or ts.processing_on is not ws:
            return
        self._stop_processing(ts)
        self._set_state(ts, WAITING)
        ts.waiting_on = {d for d in ts.dependencies if d.state != MEMORY} or EMPTY
        if not ts.waiting_on:
            self._ready(ts)
        self._fill(ws)

    # -------------------------------------------------------------- balance
    def _balance(self) -> None:
        """Work stealing: idle threads take not-yet-started tasks from busy workers."""
        if self._queued_count:
            self._fill_all()
        # A thief takes new tasks (not paused, draining or isolated) and has idle threads
        # even after the queue was offered to it: what is still queued, it may not run
        # (restrictions), so it does not stop stealing.
        thieves = [ws for ws in self.free if len(ws.processing) < ws.nthreads]
        if not thieves:
            return
        victims = sorted(
            (ws for ws in self.workers.values() if len(ws.processing) > ws.nthreads),
            key=lambda ws: len(ws.processing) / ws.nthreads,
            reverse=True,
        )
        for thief in thieves:
            want = thief.nthreads - len(thief.processing)
            for victim in victims:
                if want <= 0:
                    break
                surplus = len(victim.processing) - victim.nthreads
                # The most recently assigned tasks are the least likely to have started.
                for ts in reversed(list(victim.processing)):
                    if surplus <= 0 or want <= 0:
                        break
                    if ts.steal_pending or ts.started or not self._allowed(ts, thief):
                        continue  # a running task cannot be stolen: do not ask again
                    if self._transfer_bytes(ts, thief) > self.bandwidth * self.avg_duration * 10:
                        continue
                    ts.steal_pending = True
                    self._emit(cmd.Steal(worker=victim.address, key=ts.key))
                    surplus -= 1
                    want -= 1

    @staticmethod
    def _transfer_bytes(ts: TaskState, ws: WorkerState) -> int:
        return sum(d.nbytes for d in ts.dependencies if ws not in d.who_has)

    def _steal_answered(self, event: ev.StealAnswered) -> None:
        ts = self.tasks.get(event.key)
        if ts is None:
            return
        victim = self.workers.get(event.worker)
        if ts.state != PROCESSING or ts.processing_on is not victim or victim is None:
            return
        ts.steal_pending = False
        if not event.stolen:
            ts.started = True  # the victim refused: it is running it
            return
        self.counts["stolen"] += 1
        self._stop_processing(ts)
        self._set_state(ts, RELEASED)
        self._set_state(ts, WAITING)
        candidates = {ws: None for ws in self.free if ws is not victim}
        best = decide_worker(ts, candidates, self.bandwidth, self.avg_duration)
        self._ready(ts, prefer=best)

    # --------------------------------------------------------------- queries
    def who_has(self, keys: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for key in keys:
            ts = self.tasks.get(key)
            out[key] = sorted(ws.address for ws in ts.who_has) if ts is not None else []
        return out

    def info(self) -> dict[str, Any]:
        """A snapshot for clients and dashboards (plain data, safe to send)."""
        states: dict[str, int] = {}
        for ts in self.tasks.values():
            states[ts.state] = states.get(ts.state, 0) + 1
        return {
            "workers": {
                ws.address: {
                    "address": ws.address,
                    "name": ws.name,
                    "pid": ws.pid,
                    "nthreads": ws.nthreads,
                    "memory_limit": ws.memory_limit,
                    "memory": ws.nbytes,
                    "nkeys": len(ws.has_what),
                    "processing": len(ws.processing),
                    "nanny": ws.nanny,
                    "paused": ws.paused,
                }
                for ws in self.workers.values()
            },
            "tasks": states,
            "clients": len(self.clients),
            "counts": dict(self.counts),
            "queued": self._queued_count,
            "suspects": [ts.key for ts in self.suspects],
        }
