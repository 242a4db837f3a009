"""One worker's tasks and the rules that move them: a pure state machine.

Owns: every task the scheduler gave this worker and the state it is in, which
dependencies are being fetched from whom, which results this worker holds (their
keys, sizes and types; the values themselves live in the shell's data store),
whether it is paused. ``WorkerState.handle(*events) -> list[Instruction]`` is the
only way in; the worker shell (``regrow.worker.shell``) turns messages, thread
outcomes and memory samples into events and carries out the instructions.

Must not: do IO, read a clock, start threads, look inside values (results, errors,
run specs pass through as opaque objects).

A task's states, and the only moves between them, are in ``TRANSITIONS``; any other
move raises ``InvalidTransition`` with the key's story.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from regrow.core import worker_events as ev
from regrow.core import worker_instructions as ins
from regrow.core.transitions import InvalidTransition

__all__ = ["TRANSITIONS", "InvalidTransition", "WorkerState", "WorkerTask"]

# Live states: a task record exists.
WAITING = "waiting"  # some dependencies are not here yet: being fetched
READY = "ready"  # every dependency here; waits for a thread
EXECUTING = "executing"  # handed to a task thread
CANCELLED = "cancelled"  # no longer wanted, but its thread still runs (cannot be stopped)
RERUN = "rerun"  # cancelled, then ordered again while its thread still runs
ORPHANED = "orphaned"  # its thread runs on after the scheduler was lost: result kept
# Final states: the record is gone.
RELEASED = "released"
MEMORY = "memory"
ERRED = "erred"

LIVE = frozenset({WAITING, READY, EXECUTING, CANCELLED, RERUN, ORPHANED})
# States in which a task thread holds the task.
THREADED = frozenset({EXECUTING, CANCELLED, RERUN, ORPHANED})

TRANSITIONS: dict[tuple[str, str], str] = {
    (RELEASED, WAITING): "ordered; some dependencies must be fetched",
    (RELEASED, READY): "ordered; every dependency is here",
    (WAITING, READY): "its last missing dependency arrived",
    (WAITING, ERRED): "a holder cannot send a dependency (it does not pickle or unpickle)",
    (WAITING, RELEASED): "freed, stolen, a dependency unreachable, or the scheduler lost",
    (READY, EXECUTING): "handed to a task thread",
    (READY, RELEASED): "freed, stolen, or the scheduler lost",
    (EXECUTING, MEMORY): "it returned: the result is kept and reported",
    (EXECUTING, ERRED): "it raised: the error is reported",
    (EXECUTING, CANCELLED): "freed or interrupted while its thread runs",
    (EXECUTING, ORPHANED): "the scheduler was lost while its thread runs",
    (CANCELLED, RERUN): "ordered again while its thread still runs",
    (CANCELLED, RELEASED): "its thread is done; the outcome is dropped",
    (RERUN, CANCELLED): "freed again, or the scheduler lost",
    (RERUN, MEMORY): "its thread returned: the result serves the new order",
    (RERUN, WAITING): "its thread failed: run anew for the new order, dependencies first",
    (RERUN, READY): "its thread failed: run anew for the new order",
    (ORPHANED, MEMORY): "its thread returned: kept for a scheduler restored from its journal",
    (ORPHANED, RELEASED): "its thread failed",
    (ORPHANED, CANCELLED): "freed, or the scheduler had removed this worker",
    (ORPHANED, RERUN): "ordered again by the scheduler that came back",
}

# Tasks shorter than this (s, on average) are handed to the threads AHEAD at a time
# beyond the one each runs: a thread then goes from one to the next without a round
# trip through the event loop (two thread switches, ~50 us per task on a busy 2-core
# machine). Trivial tasks on 2 workers: ~5,700/s with none ahead, ~9,100 with 3.
# They are announced as started too, so a death blames them as well: each is then
# run alone once, like any suspect, and cleared. Long tasks are not held back this
# way (a queued one could not be stolen by an idle worker).
SHORT_TASK = 0.005
AHEAD = 3


class Unavailable(Exception):
    """No holder of a dependency could be reached, or none had it (it may be recomputed)."""


@dataclass(slots=True, eq=False)
class WorkerTask:
    key: str
    run_id: int
    priority: tuple[int, ...]
    who_has: dict[str, list[str]]
    run_spec: object
    state: str = RELEASED
    # Dependencies still being fetched, and those no holder could send (with the
    # holder's refusal when one answered but could not send it).
    missing: set[str] = field(default_factory=set)
    failed: dict[str, BaseException | None] = field(default_factory=dict)
    # Which run of it the threads have (each Execute counts one).
    attempt: int = 0
    # The order to carry out once its running thread is done (state RERUN).
    rerun: ev.ComputeRequested | None = None
    # Its run left its thread's place (``secede()``): not counted in ``in_threads``;
    # ``rejoined``: it took a place again (counted, possibly past the usual limit).
    seceded: bool = False
    rejoined: bool = False


@dataclass(slots=True, eq=False)
class FetchState:
    """A dependency (or a replica) on its way here."""

    key: str
    who_has: list[str]
    tried: set[str] = field(default_factory=set)
    # The tasks waiting for it.
    waiters: set[str] = field(default_factory=set)
    # The holder it is being fetched from now; "" while it waits for a transfer.
    holder: str = ""
    refusal: BaseException | None = None


class WorkerState:
    """Every task this worker was given, the data it holds, and the rules that move them.

    Mutated only by ``handle()``. Does no IO, reads no clock.
    """

    def __init__(
        self,
        *,
        nthreads: int,
        memory_limit: int = 0,
        memory_target_fraction: float = 0.6,
        memory_pause_fraction: float = 0.8,
        has_nanny: bool = False,
        cancel_grace: float = 5.0,
        max_gathers: int = 32,
        validate: bool = False,
        log_length: int = 10_000,
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1, got {nthreads}")
        if max_gathers < 1:
            raise ValueError(f"max_gathers must be at least 1, got {max_gathers}")
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.memory_target = int(memory_limit * memory_target_fraction)
        self.memory_pause = int(memory_limit * memory_pause_fraction)
        self.has_nanny = has_nanny
        self.cancel_grace = cancel_grace
        self.max_gathers = max_gathers
        self.validate = validate
        self.tasks: dict[str, WorkerTask] = {}
        # The results this worker holds: key -> (nbytes, type name).
        self.data: dict[str, tuple[int, str]] = {}
        self.fetches: dict[str, FetchState] = {}
        self.gathers = 0  # transfers under way
        self.ready: list[tuple[tuple[int, ...], int, str]] = []
        self._seq = itertools.count()
        self._attempts = itertools.count(1)
        self.in_threads = 0  # tasks handed to the threads and not yet back
        self.paused = False
        # Recent task durations (s, moving average): short tasks go a few ahead.
        self.avg_duration = 1.0
        self.executed = 0
        self.log: deque[tuple[str, str, str, str]] = deque(maxlen=log_length)
        # Transitions made in all (worker plugins read the newest from ``log``).
        self.moves = 0
        self._out: list[ins.Instruction] = []
        self._stimulus = ""

    # ------------------------------------------------------------------ entry
    def handle(self, *events: ev.WorkerEvent) -> list[ins.Instruction]:
        for event in events:
            self._stimulus = event.stimulus_id
            match event:
                case ev.ComputeRequested():
                    self._compute(event, None)
                case ev.ExecuteSucceeded():
                    self._execute_succeeded(event)
                case ev.ExecuteFailed():
                    self._execute_failed(event)
                case ev.GatherFinished():
                    self._gather_finished(event)
                case ev.KeysFreed():
                    for key in event.keys:
                        self._free(key)
                case ev.StealRequested():
                    ts = self.tasks.get(event.key)
                    stolen = ts is not None and ts.state in (WAITING, READY)
                    if stolen:
                        self._free(event.key)
                    self._emit(ins.SendStealResponse(key=event.key, stolen=stolen))
                case ev.TaskSeceded():
                    self._task_seceded(event)
                case ev.TaskRejoined():
                    self._task_rejoined(event)
                case ev.InterruptRequested():
                    self._interrupt(event.key)
                case ev.InterruptDeadlinePassed():
                    self._interrupt_deadline(event)
                case ev.ReplicasRequested():
                    self._replicas_requested(event)
                case ev.DataPut():
                    self.data.update(event.data)
                case ev.MemorySampled():
                    self._memory_sampled(event)
                case ev.SchedulerLost():
                    self._forget_tasks(orphan=True)
                case ev.StateDropped():
                    self._forget_tasks(orphan=False)
                    self._drop_data()
                case ev.SchedulerReconnected():
                    if event.drop:
                        self._drop_data()
                        for ts in self.tasks.values():
                            if ts.state == ORPHANED:  # what still runs from before is stale
                                self._set_state(ts, CANCELLED)
                                self._emit(ins.Abandon(key=ts.key, attempt=ts.attempt))
                    if self.paused:
                        self._emit(ins.SendPaused(paused=True))
                case _:
                    raise TypeError(f"unknown worker event {event!r}")
        self._start_gathers()
        self._start_ready()
        out, self._out = self._out, []
        if self.validate:
            self.check()
        return out

    def story(self, key: str) -> list[tuple[str, str, str, str]]:
        return [entry for entry in self.log if entry[0] == key]

    # --------------------------------------------------------------- helpers
    def _emit(self, instruction: ins.Instruction) -> None:
        if not instruction.stimulus_id:
            instruction.stimulus_id = self._stimulus  # the event that caused it
        self._out.append(instruction)

    def _set_state(self, ts: WorkerTask, finish: str) -> None:
        if (ts.state, finish) not in TRANSITIONS:
            raise InvalidTransition(
                f"{ts.key!r}: {ts.state} -> {finish} is not a legal move "
                f"(stimulus {self._stimulus!r}); story: {self.story(ts.key)[-10:]}"
            )
        self.log.append((ts.key, ts.state, finish, self._stimulus))
        self.moves += 1
        ts.state = finish
        if finish not in LIVE and self.tasks.get(ts.key) is ts:
            del self.tasks[ts.key]

    # ------------------------------------------------------------- ordering
    def _compute(self, event: ev.ComputeRequested, ts: WorkerTask | None) -> None:
        """A compute order, new (``ts`` None) or carried out anew for a RERUN task."""
        key = event.key
        if ts is None:
            old = self.tasks.get(key)
            if old is not None:
                if old.state in (CANCELLED, ORPHANED, RERUN):
                    # Its thread still runs and cannot be stopped: once it is done,
                    # this order is carried out (or served by the result).
                    old.rerun = event
                    if old.state != RERUN:
                        self._set_state(old, RERUN)
                else:
                    # Sent again (a restarted scheduler): the run under way serves it.
                    old.run_id = event.run_id
                return
        if key in self.data:
            if ts is not None:
                self._set_state(ts, CANCELLED)
                self._set_state(ts, RELEASED)
            nbytes, type_name = self.data[key]
            self._emit(
                ins.SendFinished(key=key, run_id=event.run_id, nbytes=nbytes, type_name=type_name)
            )
            return
        if ts is None:
            ts = WorkerTask(key, event.run_id, event.priority, event.who_has, event.run_spec)
            self.tasks[key] = ts
        else:
            ts.run_id, ts.priority = event.run_id, event.priority
            ts.who_has, ts.run_spec, ts.rerun = event.who_has, event.run_spec, None
            ts.failed = {}
        inline = set(event.inline) if event.inline else ()  # most orders carry none
        missing = [d for d in event.who_has if d not in self.data and d not in inline]
        if missing:
            self._set_state(ts, WAITING)
            ts.missing = set(missing)
            for dep in missing:
                self._want(dep, event.who_has.get(dep) or [], waiter=key)
        else:
            self._make_ready(ts)

    def _make_ready(self, ts: WorkerTask) -> None:
        self._set_state(ts, READY)
        heapq.heappush(self.ready, (ts.priority, next(self._seq), ts.key))

    def _free(self, key: str) -> None:
        if key in self.data:
            del self.data[key]
            self._emit(ins.DeleteData(keys=(key,)))
        ts = self.tasks.get(key)
        if ts is None:
            return
        if ts.state in THREADED:
            # The thread cannot be stopped: its outcome is dropped when it comes.
            ts.rerun = None
            if ts.state != CANCELLED:
                self._set_state(ts, CANCELLED)
            self._emit(ins.Abandon(key=key, attempt=ts.attempt))
        else:
            self._release(ts)

    def _release(self, ts: WorkerTask) -> None:
        for dep in ts.missing:
            fs = self.fetches.get(dep)
            if fs is not None:
                fs.waiters.discard(ts.key)
        ts.missing = set()
        self._set_state(ts, RELEASED)

    def _interrupt(self, key: str) -> None:
        ts = self.tasks.get(key)
        if ts is None or ts.state != EXECUTING:
            self._free(key)
            return
        self._set_state(ts, CANCELLED)
        self._emit(ins.InterruptThread(key=key, attempt=ts.attempt))

    def _interrupt_deadline(self, event: ev.InterruptDeadlinePassed) -> None:
        ts = self.tasks.get(event.key)
        if ts is None or ts.attempt != event.attempt or not event.started:
            return  # it stopped, or its thread never began it and will skip it
        if not self.has_nanny:
            self._emit(
                ins.LogWarning(
                    text=f"task {event.key!r} ignores its cancellation and this worker "
                    "has no nanny to restart it"
                )
            )
            return
        self._emit(
            ins.ExitForNanny(
                reason=f"task {event.key!r} did not stop within {self.cancel_grace} s of cancel"
            )
        )

    def _forget_tasks(self, *, orphan: bool) -> None:
        """The scheduler's orders are void: tasks not yet running go; running ones go on,
        their results kept (``orphan``: a scheduler restored from its journal adopts them)
        or dropped."""
        for ts in list(self.tasks.values()):
            if ts.state == EXECUTING:
                self._set_state(ts, ORPHANED if orphan else CANCELLED)
            elif ts.state == RERUN:
                ts.rerun = None
                self._set_state(ts, CANCELLED)
            elif ts.state == ORPHANED and not orphan:
                self._set_state(ts, CANCELLED)
            elif ts.state in (WAITING, READY):
                self._release(ts)
            if ts.state == CANCELLED:
                self._emit(ins.Abandon(key=ts.key, attempt=ts.attempt))
        self.ready.clear()

    def _drop_data(self) -> None:
        if self.data:
            self._emit(ins.DeleteData(keys=tuple(self.data)))
            self.data.clear()

    # ------------------------------------------------------------ execution
    def _start_ready(self) -> None:
        if not self.ready or self.paused:
            return
        ahead = AHEAD if self.avg_duration < SHORT_TASK else 0
        limit = self.nthreads * (1 + ahead)
        starting: list[WorkerTask] = []
        while self.in_threads < limit and self.ready and not self.paused:
            _, _, key = heapq.heappop(self.ready)
            ts = self.tasks.get(key)
            if ts is None or ts.state != READY:
                continue  # freed or stolen since
            self._set_state(ts, EXECUTING)
            ts.attempt = next(self._attempts)
            self.in_threads += 1
            starting.append(ts)
        if not starting:
            return
        # The scheduler blames only tasks that really ran for a worker's death, so it
        # must hear of the start before the task can kill us: the news goes out first.
        self._emit(ins.SendStarted(keys=tuple(ts.key for ts in starting)))
        for ts in starting:
            self._emit(ins.Execute(key=ts.key, attempt=ts.attempt, run_spec=ts.run_spec))

    def _running(self, key: str, attempt: int) -> WorkerTask | None:
        ts = self.tasks.get(key)
        if ts is None or ts.attempt != attempt or ts.state not in THREADED:
            return None  # stale: that run's outcome already came back
        return ts

    def _task_seceded(self, event: ev.TaskSeceded) -> None:
        """A run waits on other tasks: its place goes to the next ready task, and the
        scheduler counts it in no slot (while the scheduler still wants it)."""
        ts = self._running(event.key, event.attempt)
        if ts is None or ts.seceded:
            return
        ts.seceded = True
        ts.rejoined = False
        self.in_threads -= 1
        if ts.state == EXECUTING:
            self._emit(ins.SendLongRunning(key=ts.key, run_id=ts.run_id))

    def _task_rejoined(self, event: ev.TaskRejoined) -> None:
        ts = self._running(event.key, event.attempt)
        if ts is None or not ts.seceded:
            return
        ts.seceded = False
        ts.rejoined = True
        self.in_threads += 1

    def _thread_done(self, key: str, attempt: int, duration: float) -> WorkerTask:
        ts = self.tasks.get(key)
        if ts is None or ts.attempt != attempt or ts.state not in THREADED:
            raise InvalidTransition(
                f"{key!r}: an outcome of run {attempt} that no thread was running; "
                f"story: {self.story(key)[-10:]}"
            )
        if ts.seceded:
            ts.seceded = False  # its place was given up when it seceded
        else:
            self.in_threads -= 1
        ts.rejoined = False
        self.executed += 1
        self.avg_duration = 0.9 * self.avg_duration + 0.1 * duration
        return ts

    def _execute_succeeded(self, event: ev.ExecuteSucceeded) -> None:
        ts = self._thread_done(event.key, event.attempt, event.duration)
        if ts.state == RERUN:
            assert ts.rerun is not None
            ts.run_id = ts.rerun.run_id  # wanted again while it ran: the result counts
            ts.rerun = None
        wanted = ts.state in (EXECUTING, RERUN)
        if wanted or (ts.state == ORPHANED and ts.key not in self.data):
            # An orphan's result is kept (unreported) for a scheduler restored from its
            # journal; a wanted one is kept and reported.
            self._set_state(ts, MEMORY)
            self.data[ts.key] = (event.nbytes, event.type_name)
            self._emit(
                ins.StoreData(
                    key=ts.key, value=event.value, nbytes=event.nbytes, sealed=event.sealed
                )
            )
            if wanted:
                self._emit(
                    ins.SendFinished(
                        key=ts.key,
                        run_id=ts.run_id,
                        nbytes=event.nbytes,
                        type_name=event.type_name,
                        duration=event.duration,
                        inline=event.inline,
                    )
                )
        else:
            self._set_state(ts, RELEASED)
            if event.sealed is not None:
                self._emit(ins.DiscardResult(key=ts.key, sealed=event.sealed))

    def _execute_failed(self, event: ev.ExecuteFailed) -> None:
        ts = self._thread_done(event.key, event.attempt, event.duration)
        if ts.state == EXECUTING:
            self._set_state(ts, ERRED)
            self._emit(
                ins.SendErred(
                    key=ts.key, run_id=ts.run_id, error=event.error, duration=event.duration
                )
            )
        elif ts.state == RERUN:
            assert ts.rerun is not None
            self._compute(ts.rerun, ts)  # it failed (or was interrupted): run it anew
        else:
            self._set_state(ts, RELEASED)

    # ------------------------------------------------------------- fetching
    def _want(self, key: str, holders: Iterable[str], waiter: str | None) -> None:
        fs = self.fetches.get(key)
        if fs is None:
            fs = self.fetches[key] = FetchState(key, [])
        for holder in holders:
            if holder not in fs.who_has:
                fs.who_has.append(holder)
        if waiter is not None:
            fs.waiters.add(waiter)

    def _replicas_requested(self, event: ev.ReplicasRequested) -> None:
        for key, holders in event.who_has.items():
            if key not in self.data and key not in self.fetches and holders:
                self._want(key, holders, waiter=None)

    def _start_gathers(self) -> None:
        """Queued fetches go out, one transfer per holder at a time (a holder already
        sending to us gets the next keys once it is done: its memory and ours stay
        bounded), each key to its first holder not yet tried and not busy, the most
        urgent first; at most ``max_gathers`` at once. A key no holder is left to try
        for has failed. None while paused: memory is short, and what came in would only
        have to be spilled (they go once it is not)."""
        if not self.fetches or self.paused:
            return
        queued = [fs for fs in self.fetches.values() if not fs.holder]
        if not queued:
            return
        busy = {fs.holder for fs in self.fetches.values() if fs.holder}
        by_holder: dict[str, list[FetchState]] = {}
        for fs in queued:
            untried = [h for h in fs.who_has if h not in fs.tried]
            if not untried:
                self._fetch_failed(fs)
                continue
            holder = next((h for h in untried if h not in busy), untried[0])
            by_holder.setdefault(holder, []).append(fs)
        groups = sorted(by_holder.items(), key=lambda item: self._urgency(item[1]))
        for holder, group in groups:
            if self.gathers >= self.max_gathers:
                break
            if holder in busy:
                continue
            for fs in group:
                fs.holder = holder
            self.gathers += 1
            self._emit(ins.Gather(holder=holder, keys=tuple(fs.key for fs in group)))

    def _urgency(self, group: list[FetchState]) -> tuple[int, ...]:
        best: tuple[int, ...] | None = None
        for fs in group:
            for waiter in fs.waiters:
                ts = self.tasks.get(waiter)
                if ts is not None and (best is None or ts.priority < best):
                    best = ts.priority
        return (0, *best) if best is not None else (1,)  # replicas for no task last

    def _gather_finished(self, event: ev.GatherFinished) -> None:
        self.gathers -= 1
        self.data.update(event.got)
        if event.got:
            self._emit(ins.SendAddReplicas(keys=tuple(event.got)))
        for key in event.keys:
            fs = self.fetches.get(key)
            if fs is None or fs.holder != event.holder:
                continue
            if key in event.got:
                del self.fetches[key]
                for waiter in sorted(fs.waiters):
                    self._dependency_done(waiter, key, None, failed=False)
            else:
                fs.tried.add(event.holder)
                fs.holder = ""  # queued again: the next holder is tried
                if event.refusal is not None:
                    fs.refusal = event.refusal

    def _fetch_failed(self, fs: FetchState) -> None:
        del self.fetches[fs.key]
        for waiter in sorted(fs.waiters):
            self._dependency_done(waiter, fs.key, fs.refusal, failed=True)

    def _dependency_done(
        self, key: str, dep: str, refusal: BaseException | None, *, failed: bool
    ) -> None:
        ts = self.tasks.get(key)
        if ts is None or ts.state != WAITING or dep not in ts.missing:
            return
        ts.missing.discard(dep)
        if failed:
            ts.failed[dep] = refusal
        if ts.missing:
            return
        lost = {d: why for d, why in ts.failed.items() if d not in self.data}
        ts.failed = {}
        refused = next((why for why in lost.values() if why is not None), None)
        if refused is not None:
            # A holder answered, but the value cannot travel: trying again would fail
            # again, so the task errs.
            self._set_state(ts, ERRED)
            self._emit(ins.SendErred(key=key, run_id=ts.run_id, error=refused))
        elif lost:
            first = next(iter(lost))
            self._set_state(ts, RELEASED)
            self._emit(
                ins.SendDependencyMissing(
                    key=key, dependency=first, holders=tuple(ts.who_has.get(first) or ())
                )
            )
        else:
            self._make_ready(ts)

    # --------------------------------------------------------------- memory
    def _memory_sampled(self, event: ev.MemorySampled) -> None:
        """Spill above the target fraction, pause above the pause fraction, resume
        below the target again."""
        if not self.memory_limit:
            return
        if event.rss > self.memory_target and not event.after_spill:
            self._emit(ins.Spill(nbytes=event.rss - self.memory_target))
            return  # the decision to pause waits for the sample after the spill
        paused = event.rss > self.memory_target if self.paused else event.rss > self.memory_pause
        if paused != self.paused:
            self.paused = paused
            self._emit(ins.SendPaused(paused=paused))

    # ----------------------------------------------------------- invariants
    def check(self) -> None:
        """Raise AssertionError if the state contradicts itself."""
        threaded = rejoined = 0
        queued = {key for _, _, key in self.ready}
        for key, ts in self.tasks.items():
            assert ts.key == key, ts
            assert ts.state in LIVE, f"{key!r} kept in final state {ts.state}"
            threaded += ts.state in THREADED and not ts.seceded
            rejoined += ts.rejoined
            assert not (ts.seceded or ts.rejoined) or ts.state in THREADED, (key, ts.state)
            assert (ts.rerun is not None) == (ts.state == RERUN), (key, ts.state, ts.rerun)
            if ts.state == WAITING:
                assert ts.missing, f"{key!r} waits for nothing"
                for dep in ts.missing:
                    fs = self.fetches.get(dep)
                    assert fs is not None and key in fs.waiters, (key, dep)
            else:
                assert not ts.missing, (key, ts.state, ts.missing)
            if ts.state == READY:
                assert key in queued, f"{key!r} is ready but not queued"
        assert threaded == self.in_threads, (threaded, self.in_threads)
        assert self.in_threads <= self.nthreads * (1 + AHEAD) + rejoined, self.in_threads
        flying = {fs.holder for fs in self.fetches.values() if fs.holder}
        assert self.gathers >= len(flying) and self.gathers <= self.max_gathers, (
            self.gathers,
            flying,
        )
        for fs in self.fetches.values():
            assert not fs.holder or fs.holder in fs.who_has, fs
            for waiter in fs.waiters:
                w = self.tasks.get(waiter)
                assert w is not None and w.state == WAITING and fs.key in w.missing, (
                    fs.key,
                    waiter,
                )
