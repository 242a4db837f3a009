"""Every task, worker and client the scheduler knows, and the rules that move them.

``SchedulerState.handle(*events)`` is the only way in; it returns the commands
the shell must carry out. It does no IO and reads no clock.

Task states, and every legal move (``core.transitions.diagram()`` of ``TRANSITIONS``; a
test keeps this copy in step)::

      released -> waiting, memory, erred, forgotten
       waiting -> queued, processing, erred, released
        queued -> processing, waiting, released
    processing -> memory, waiting, released, erred
        memory -> released
         erred -> released, forgotten

released/erred with no client and no dependents --> forgotten (deleted).

A task is *needed* while a client wants it or a dependent still waits on it
(``waiters``). Unneeded results are freed on workers at once (reference
counting); their TaskState stays as long as a dependent exists, so lost results
can be recomputed from lineage.

This module dispatches every event and owns the life of a task (computation, results,
errors, releasing). It delegates, in plain functions over the state: what clients ask
(``client_requests``), what happens after a loss (``recovery``), when a worker is gone
(``liveness``), graceful retirement (``retirement``), work stealing (``stealing``),
read-only views (``queries``). The records are in ``records``, the legal moves in
``transitions``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from regrow.core import (
    client_requests,
    liveness,
    queries,
    rebalance,
    recovery,
    retirement,
    stealing,
    timeline,
)
from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.client_requests import FIRE_AND_FORGET
from regrow.core.coordination import Coordination
from regrow.core.placement import allowed, beside_inputs, decide_worker, take
from regrow.core.records import (
    EMPTY,
    RUNNING,
    SMALL,
    Bag,
    ClientState,
    TaskError,
    TaskState,
    WorkerRecord,
    added,
    discarded,
)
from regrow.core.retirement import Retirement
from regrow.core.transitions import (
    ERRED,
    FORGOTTEN,
    MEMORY,
    PROCESSING,
    QUEUED,
    RELEASED,
    TRANSITIONS,
    WAITING,
    InvalidTransition,
)

# Re-exported: the shell, the journal and tests import these from here.
__all__ = [
    "EMPTY",
    "ERRED",
    "FORGOTTEN",
    "MEMORY",
    "PROCESSING",
    "QUEUED",
    "RELEASED",
    "SMALL",
    "TRANSITIONS",
    "WAITING",
    "Bag",
    "ClientState",
    "InvalidTransition",
    "SchedulerState",
    "TaskError",
    "TaskState",
    "WorkerRecord",
    "added",
    "discarded",
]


# The most tasks per thread a worker is given however short tasks are (``_retune``).
MAX_DEPTH = 64.0
# Task groups whose durations placement learns (SchedulerState.group_durations): keys
# that name no group of tasks (each a group of its own) must not grow it without end.
MAX_GROUPS = 10_000


class SchedulerState:
    """The scheduler's whole state; mutated only by ``handle``.

    Its underscore methods (``_compute``, ``_err``, ``_set_state``, ``_release``...) are
    the toolkit of the core modules it delegates to (``client_requests``, ``recovery``,
    ``liveness``, ``retirement``); nothing outside ``regrow.core`` calls them.
    """

    def __init__(
        self,
        *,
        worker_saturation: float = 4.0,
        queue_seconds: float = 0.0,
        default_task_duration: float = 0.001,
        bandwidth: float = 500e6,
        allowed_failures: int = 3,
        first_run_id: int = 1,
        inline_limit: int = 256 * 2**20,
        heartbeat_timeout: float = 3.0,
        death_report_wait: float = 1.0,
        max_client_tasks: int = 1_000_000,
        log_length: int = 100_000,
        event_log_length: int = 1_000,
        validate: bool = False,
    ) -> None:
        self.worker_saturation = worker_saturation
        # Tasks a worker may hold per thread: worker_saturation, or more where tasks are
        # short, to hold about ``queue_seconds`` of work (by the mean duration) and hide
        # the round trip to the scheduler (at most MAX_DEPTH; see ``_retune``).
        self.queue_seconds = queue_seconds
        self.depth = worker_saturation
        # A submission that would leave its client with more keys than this errs instead.
        self.max_client_tasks = max_client_tasks
        # Liveness (core.liveness): a worker silent this long (s) is removed; a closed
        # connection waits this long (s) for the nanny to say why its worker died.
        self.heartbeat_timeout = heartbeat_timeout
        self.death_report_wait = death_report_wait
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
        # From RecoveryFinished to ReattachGraceEnded: restored tasks nobody needs yet are
        # kept, for submissions clients resend to depend on (recovery.recovery_finished).
        self.keeping_restored = False
        # Results workers offered while recovering or keeping restored tasks that the
        # journal did not know: key -> holders' addresses. A scatter whose registration
        # the dead scheduler never journaled is one, until its client resends it
        # (``data_scattered``); those nobody claims are freed at ``ReattachGraceEnded``.
        self.unclaimed: dict[str, set[str]] = {}
        self.avg_duration = default_task_duration
        # How long the tasks of each group (queries.key_group) that have inputs took, on
        # average (s): a task of a group shorter than moving its inputs runs beside them
        # (placement.beside_inputs). Groups past MAX_GROUPS are not learnt.
        self.group_durations: dict[str, float] = {}
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerRecord] = {}
        self.clients: dict[str, ClientState] = {}
        # Workers with at least one free slot, in arrival order.
        self.free: dict[WorkerRecord, None] = {}
        # Tasks that were running when a worker died: each runs alone before it is judged.
        self.suspects: list[TaskState] = []
        # Why each suspect's workers died: key -> [(worker, reason)].
        self.deaths: dict[str, list[tuple[str, str]]] = {}
        # Results being moved by a rebalance: key -> (sender, recipient) addresses.
        self.rebalancing: dict[str, tuple[str, str]] = {}
        # Keys to keep that many copies of (scatter(..., replicas=k)).
        self.replicas: dict[str, int] = {}
        # Fired-and-forgotten tasks that got done during the current event: let go of
        # once it is dealt with (client_requests.fired_settled).
        self.fired_done: list[TaskState] = []
        # Ids of removed workers (insertion-ordered, bounded): one that comes back drops
        # what it holds.
        self.removed_ids: dict[str, None] = {}
        # Retirements under way, by request (core.retirement).
        self.retirements: dict[str, Retirement] = {}
        self._queue: list[tuple[tuple[int, int], str]] = []
        self._undrain_pending = False
        self._queued_count = 0
        self._seq = itertools.count()
        # A restarted scheduler starts above any run id its predecessor handed out (the
        # shell passes a clock reading), so no report from before a crash matches a run.
        self._run_ids = itertools.count(first_run_id)
        self._out: list[cmd.Command] = []
        self._stimulus = ""
        # The current event's ``now`` (the shell's clock): when recorded events happened.
        self._now = 0.0
        # The latest cluster events (core.timeline), oldest first; their numbers.
        self.events: deque[dict[str, Any]] = deque(maxlen=event_log_length)
        self._event_seq = itertools.count(1)
        # Bounded story of transitions: (key, start, finish, stimulus_id).
        self.log: deque[tuple[str, str, str, str]] = deque(maxlen=log_length)
        # Locks, queues, variables... held for the clients (core.coordination).
        self.coordination = Coordination()
        # Transitions made in all: the log's newest ``moves - seen`` entries are those
        # made since a reader had seen ``seen`` (the dashboard's ``Recorder.follow``).
        self.moves = 0
        self.counts = {
            "finished": 0,
            "erred": 0,
            "recomputed": 0,
            "rescheduled": 0,
            "stolen": 0,
            "lost": 0,
            "workers_lost": 0,
            # Workers removed because their heartbeats stopped coming.
            "heartbeat_misses": 0,
        }

    # ------------------------------------------------------------------ entry
    def handle(self, *events: ev.Event) -> list[cmd.Command]:
        for event in events:
            self._stimulus = event.stimulus_id
            if event.now > self._now:  # events that carry no clock keep the last one
                self._now = event.now
            if isinstance(event, ev.FromWorker):
                liveness.seen(self, event)
            match event:
                case ev.TasksSubmitted():
                    client_requests.tasks_submitted(self, event)
                case ev.TaskFinished():
                    self._task_finished(event)
                case ev.TaskErred():
                    self._task_erred(event)
                case ev.KeysReleased():
                    client_requests.keys_released(self, event.client, event.keys)
                case ev.KeysDesired():
                    client_requests.keys_desired(self, event)
                case ev.KeysCancelled():
                    client_requests.keys_cancelled(self, event)
                case ev.KeysFiredAndForgotten():
                    client_requests.keys_fired(self, event)
                case ev.RetryRequested():
                    client_requests.retry_requested(self, event)
                case ev.EventLogged():
                    timeline.logged(self, event)
                    continue  # changes no task
                case ev.DataScattered():
                    client_requests.data_scattered(self, event)
                case ev.WorkerAdded():
                    self._worker_added(event)
                case ev.WorkerRemoved():
                    ws = self.workers.get(event.worker)
                    if ws is not None:
                        self._remove_worker(ws, event.reason, event.graceful)
                case ev.DependencyMissing():
                    recovery.dependency_missing(self, event)
                case ev.StealAnswered():
                    stealing.steal_answered(self, event)
                case ev.ReplicasAdded():
                    recovery.replicas_added(self, event)
                case ev.ReplicasMissing():
                    recovery.replicas_missing(self, event)
                case ev.TaskSeceded():
                    self._task_seceded(event)
                case ev.TasksStarted():
                    ws = self.workers.get(event.worker)
                    for key in event.keys:
                        ts = self.tasks.get(key)
                        if ts is not None and ts.processing_on is ws and ws is not None:
                            ts.started = True
                case ev.ClientConnected():
                    self.clients.setdefault(event.client, ClientState(event.client))
                case ev.ClientDisconnected():
                    client_requests.client_disconnected(self, event.client)
                    self.coordination.client_gone(self, event.client)
                case ev.Coordinate():
                    self.coordination.handle(self, event)
                case ev.RebalanceRequested():
                    rebalance.rebalance(self, event.keys, event.workers)
                case ev.KeysReplicated():
                    for key in event.keys:
                        ts = self.tasks.get(key)
                        if ts is not None and ts.state == MEMORY:
                            self.replicas[key] = event.n if event.n > 0 else 1 << 30
                    recovery.replicate(self, event.keys)
                case ev.WorkerPaused():
                    self._worker_paused(event)
                case ev.RestartRequested():
                    recovery.restart(self)
                case ev.Ticked():
                    liveness.tick(self, event.now)
                    self.coordination.expire(self, event.now)
                    if self.retirements:
                        retirement.progress(self, event.now)
                    if not self.recovering:
                        stealing.balance(self, event.now)
                case ev.HeartbeatReceived():
                    liveness.heartbeat(self, event)
                    continue  # changes nothing isolation or undraining reads
                case ev.WorkerConnectionClosed():
                    liveness.connection_closed(self, event)
                case ev.WorkerDeathReported():
                    liveness.death_reported(self, event)
                case ev.NannyJoined():
                    liveness.nanny_joined(self, event)
                    continue  # changes no task
                case ev.WorkerRetiring():
                    liveness.retiring(self, event)
                case ev.RetireWorkersRequested():
                    retirement.requested(self, event)
                case ev.StateRestored():
                    recovery.state_restored(self, event)
                case ev.CoordinationRestored():
                    for line in self.coordination.restore(event.rows, event.answers):
                        self._emit(cmd.Log(level="warning", message=f"journal: {line}"))
                case ev.RecoveryFinished():
                    recovery.recovery_finished(self)
                case ev.ReattachGraceEnded():
                    recovery.reattach_grace_ended(self)
                case _:
                    raise TypeError(f"unknown event {event!r}")
            if self.fired_done and not self.recovering:
                client_requests.fired_settled(self)
            if self.suspects:
                recovery.isolate(self)
            elif self._undrain_pending:
                recovery.undrain(self)
            self._undrain_pending = False
        out, self._out = self._out, []
        if self.validate:
            from regrow.core.invariants import validate_state

            validate_state(self)
        return out

    # --------------------------------------------------------------- helpers
    def _emit(self, command: cmd.Command) -> None:
        if not command.stimulus_id:
            # Every command names the event that caused it (frozen: set once, here).
            object.__setattr__(command, "stimulus_id", self._stimulus)
        self._out.append(command)

    def _set_state(self, ts: TaskState, finish: str) -> None:
        """Move ``ts`` to ``finish``; any move not in ``TRANSITIONS`` raises."""
        if (ts.state, finish) not in TRANSITIONS:
            raise self._illegal(ts, f"transition {ts.state} -> {finish}")
        self.log.append((ts.key, ts.state, finish, self._stimulus))
        self.moves += 1
        if self.on_transition is not None:
            self.on_transition(ts, ts.state, finish)
        ts.state = finish
        if FIRE_AND_FORGET in self.clients and finish in (MEMORY, ERRED):
            client_requests.note_done(self, ts)

    def story(self, key: str) -> list[tuple[str, str, str, str]]:
        """``key``'s transitions still in the (bounded) log: (key, start, finish, stimulus)."""
        return [entry for entry in self.log if entry[0] == key]

    def _illegal(self, ts: TaskState, what: str) -> InvalidTransition:
        return InvalidTransition(
            f"{what} for {ts!r} (stimulus {self._stimulus!r}); story: {self.story(ts.key)[-10:]}"
        )

    def _client(self, client_id: str) -> ClientState:
        cs = self.clients.get(client_id)
        if cs is None:
            cs = self.clients[client_id] = ClientState(client_id)
        return cs

    @staticmethod
    def _needed(ts: TaskState) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _slots_for(self, nthreads: int) -> int:
        return max(1, math.ceil(max(1, nthreads) * self.depth))

    def _retune(self) -> None:
        """Follow the mean task duration with the tasks a worker may hold per thread:
        enough for ``queue_seconds`` of work, never fewer than ``worker_saturation`` nor
        more than MAX_DEPTH. Changed only when off by 2x or more (then every worker's
        slots with it): a mean that wanders changes nothing."""
        ideal = min(MAX_DEPTH, self.queue_seconds / max(self.avg_duration, 1e-9))
        ideal = max(self.worker_saturation, ideal)
        if self.depth / 2 < ideal < self.depth * 2:
            return
        self.depth = ideal
        for ws in self.workers.values():
            ws.slots = self._slots_for(ws.nthreads)
            self._update_free(ws)
        self._fill_all()

    def _remove_worker(
        self, ws: WorkerRecord, reason: str, graceful: bool, out_of_memory: bool = False
    ) -> None:
        """The one way a worker leaves: ``liveness`` and ``retirement`` decide when.
        ``out_of_memory``: its nanny killed it for passing its memory limit."""
        if self.workers.get(ws.address) is not ws:
            return
        level = "info" if graceful else "warning"
        self._emit(cmd.Log(level=level, message=f"worker {ws.address} removed: {reason}"))
        liveness.removed(self, ws.id)
        recovery.remove_worker(self, ws, reason, graceful, out_of_memory)
        retirement.worker_gone(self, ws, graceful)

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
                timeline.record(
                    self,
                    "impure-recomputed",
                    f"impure task {ts.key!r} (pure=False) is computed again after a loss; "
                    "its new result may differ from the first",
                    key=ts.key,
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

    def _ready(self, ts: TaskState, prefer: WorkerRecord | None = None) -> None:
        if ts.suspicious:
            self._set_state(ts, QUEUED)
            self._queued_count += 1
            self.suspects.append(ts)
            return
        if prefer is not None and allowed(ts, prefer) and prefer in self.free:
            ws: WorkerRecord | None = prefer
        else:
            ws = self._beside_inputs(ts)
            if ws is not None:
                self._send_to(ts, ws, slotless=True)
                return
            ws = decide_worker(ts, self.free, self.bandwidth, self.avg_duration)
        if ws is None:
            self._set_state(ts, QUEUED)
            heapq.heappush(self._queue, (ts.priority, ts.key))
            self._queued_count += 1
            return
        self._send_to(ts, ws)

    def _learn_duration(self, key: str, duration: float) -> None:
        group = queries.key_group(key)
        known = self.group_durations.get(group)
        if known is not None:
            self.group_durations[group] = 0.9 * known + 0.1 * duration
        elif len(self.group_durations) < MAX_GROUPS:
            self.group_durations[group] = duration

    def _beside_inputs(self, ts: TaskState) -> WorkerRecord | None:
        """Where ``ts`` goes, free slot or not, if its group is known to be shorter than
        moving its inputs (placement.beside_inputs) and their holder takes tasks."""
        if not ts.dependencies or not self.group_durations:
            return None
        estimate = self.group_durations.get(queries.key_group(ts.key))
        if estimate is None:
            return None
        ws = beside_inputs(ts, estimate, self.bandwidth)
        if ws is None or not self._takes_work(ws) or not allowed(ts, ws):
            return None
        return ws

    def _takes_work(self, ws: WorkerRecord) -> bool:
        """Not held back: paused, isolated, draining, closing or gone."""
        return (
            not ws.paused
            and ws.isolated is None
            and not ws.draining
            and ws.status == RUNNING
            and ws.address in self.workers
        )

    def _update_free(self, ws: WorkerRecord) -> None:
        """A worker takes new tasks while it has a free slot and is not held back."""
        if len(ws.processing) - len(ws.slotless) < ws.slots and self._takes_work(ws):
            # Re-inserting moves it to the end: ``free`` stays ordered from the worker given
            # work least recently to the one given work last (placement relies on it).
            self.free.pop(ws, None)
            self.free[ws] = None
        else:
            self.free.pop(ws, None)

    def _send_to(self, ts: TaskState, ws: WorkerRecord, slotless: bool = False) -> None:
        self._set_state(ts, PROCESSING)
        ts.processing_on = ws
        ts.run_id = next(self._run_ids)
        ws.processing[ts] = None
        if slotless:
            ws.slotless.add(ts)
        if ts.resources:
            take(ts, ws, 1.0)
        self._update_free(ws)
        self._emit(
            cmd.Compute(
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

    def _stop_processing(self, ts: TaskState) -> WorkerRecord | None:
        ws = ts.processing_on
        ts.processing_on = None
        ts.steal_pending = False
        ts.started = False
        if ws is not None:
            if ts in ws.processing:
                del ws.processing[ts]
                if ts.resources:
                    take(ts, ws, -1.0)
            ws.slotless.discard(ts)
            if ws.isolated is ts:
                ws.isolated = None
            self._update_free(ws)
        return ws

    def _task_seceded(self, event: ev.TaskSeceded) -> None:
        """A running task waits on others without its thread: its slot is free."""
        ws = self.workers.get(event.worker)
        ts = self.tasks.get(event.key)
        if ws is None or ts is None or ts.processing_on is not ws or ts.run_id != event.run_id:
            return  # stale: it finished, moved or was stolen meanwhile
        ws.slotless.add(ts)
        self._update_free(ws)
        self._fill(ws)

    def _fill(self, ws: WorkerRecord) -> None:
        """Give a worker with free slots queued tasks, best priority first."""
        if self.suspects:
            recovery.isolate(self)
        if ws not in self.free:
            return
        skipped: list[tuple[tuple[int, int], str]] = []
        while self._queue and ws in self.free:
            prio, key = heapq.heappop(self._queue)
            ts = self.tasks.get(key)
            if ts is None or ts.state != QUEUED or ts.priority != prio:
                continue
            if not allowed(ts, ws):
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
        ws.last_done = event.now
        if event.duration > 0:
            self.avg_duration = 0.9 * self.avg_duration + 0.1 * event.duration
            if ts.dependencies:
                self._learn_duration(ts.key, event.duration)
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
        if self.queue_seconds:
            self._retune()

    def _keep_inline(self, ts: TaskState, inline: bytes | None) -> None:
        if inline is not None and self.inline_bytes + len(inline) <= self.inline_limit:
            ts.inline = inline
            self.inline_bytes += len(inline)

    def _drop_inline(self, ts: TaskState) -> None:
        if ts.inline is not None:
            self.inline_bytes -= len(ts.inline)
            ts.inline = None

    def _stale(self, ts: TaskState, ws: WorkerRecord, run_id: int) -> bool:
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
        ws.last_done = event.now
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
            # Never queued: a queued task's inputs are all in memory, and a result in
            # memory does not err (queued -> erred is not in TRANSITIONS, so it would raise).
            if ts.state == PROCESSING:
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

    # --------------------------------------------------------------- workers
    def _worker_added(self, event: ev.WorkerAdded) -> None:
        drop = liveness.admit(self, event)
        if event.worker in self.workers:
            return  # the shell takes one connection per address: this cannot happen
        # First, so that the shell's answer reaches the worker before any order.
        self._emit(cmd.AcceptWorker(worker=event.worker, drop=drop))
        ws = WorkerRecord(
            event.worker,
            event.name or event.worker,
            max(1, event.nthreads),
            event.pid,
            event.memory_limit,
            self._slots_for(event.nthreads),
        )
        ws.nanny = event.nanny
        ws.id = event.id or event.worker
        ws.resources = dict(event.resources or {})
        ws.last_seen = ws.last_done = event.now
        self.workers[ws.address] = ws
        self._update_free(ws)
        timeline.record(
            self,
            "worker-added",
            f"worker {ws.address} ({ws.name}) joined",
            worker=ws.address,
            name=ws.name,
            nthreads=ws.nthreads,
            memory_limit=ws.memory_limit,
        )
        if event.keys and not drop:  # a removed worker drops what it held
            self._adopt(ws, event.keys)
        recovery.replicate(self, list(self.replicas))
        self._fill(ws)

    def _adopt(self, ws: WorkerRecord, keys: tuple[tuple[str, int], ...]) -> None:
        """A worker arrives holding results: keep those the graph can use, free the rest."""
        stale: list[str] = []
        for key, nbytes in keys:
            ts = self.tasks.get(key)
            if ts is None and (self.recovering or self.keeping_restored):
                self.unclaimed.setdefault(key, set()).add(ws.address)
                continue
            if ts is None or ts.state not in (MEMORY, RELEASED):
                stale.append(key)
                continue
            if ts.state == RELEASED and not (
                self.recovering or self.keeping_restored or self._needed(ts)
            ):
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

    def _worker_paused(self, event: ev.WorkerPaused) -> None:
        ws = self.workers.get(event.worker)
        if ws is None or ws.paused == event.paused:
            return
        ws.paused = event.paused
        self._update_free(ws)
        if not event.paused:
            self._fill(ws)

    # --------------------------------------------------------------- queries
    def who_has(self, keys: Iterable[str]) -> dict[str, list[str]]:
        return queries.who_has(self, keys)

    def has_what(self, workers: Iterable[str] | None = None) -> dict[str, list[str]]:
        return queries.has_what(self, workers)

    def info(self) -> dict[str, Any]:
        """A snapshot for clients and dashboards (plain data, safe to send)."""
        return queries.info(self)
