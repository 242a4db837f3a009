"""Work stealing: idle threads take tasks busy workers have not started.

On each tick a worker with idle threads (and a free slot) asks, through the scheduler, a
worker holding more tasks than threads for those it has not started (``Steal``); the
victim answers whether it gave each up (``StealAnswered``), so a task never runs twice
because of a steal. Plain functions over a ``SchedulerState``.
Must not: do IO, or steal a task that began running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.placement import allowed, decide_worker
from regrow.core.records import CLOSED, TaskState, WorkerRecord
from regrow.core.transitions import PROCESSING, RELEASED, WAITING

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState

# A task with more inputs than this is never stolen: weighing it is a pass over its inputs
# on every tick it waits (a 1,000,000-wide fan-in would cost each tick ~0.1 s), and
# moving it, its inputs scattered over the cluster, rarely pays.
MAX_STEAL_INPUTS = 1000


def balance(state: SchedulerState, now: float = 0.0) -> None:
    """Work stealing: idle threads take not-yet-started tasks from busy workers.

    A task is moved only if its inputs move faster than it would wait: within ten mean
    task durations, or, on a victim that has finished nothing for longer than that
    (a task of its holds a thread for long), within the time it has stood still."""
    if state._queued_count:
        state._fill_all()
    # A thief takes new tasks (not paused, draining or isolated) and has idle threads
    # even after the queue was offered to it: what is still queued, it may not run
    # (restrictions), so it does not stop stealing.
    # Tasks that hold no slot (seceded, or short ones beside their inputs) occupy none.
    thieves = [ws for ws in state.free if _busy(ws) < ws.nthreads]
    if not thieves:
        return
    victims = sorted(
        (
            ws
            for ws in state.workers.values()
            if _busy(ws) > ws.nthreads and ws.status != CLOSED  # no one to ask
        ),
        key=lambda ws: _busy(ws) / ws.nthreads,
        reverse=True,
    )
    for thief in thieves:
        want = thief.nthreads - _busy(thief)
        for victim in victims:
            if want <= 0:
                break
            surplus = _busy(victim) - victim.nthreads
            budget = state.bandwidth * max(state.avg_duration * 10, now - victim.last_done)
            # The most recently assigned tasks are the least likely to have started.
            for ts in reversed(list(victim.processing)):
                if surplus <= 0 or want <= 0:
                    break
                if ts.steal_pending or ts.started or not allowed(ts, thief):
                    continue  # a running task cannot be stolen: do not ask again
                if len(ts.dependencies) > MAX_STEAL_INPUTS:
                    continue
                if _transfer_bytes(ts, thief) > budget:
                    continue
                ts.steal_pending = True
                state._emit(cmd.Steal(worker=victim.address, key=ts.key))
                surplus -= 1
                want -= 1


def _busy(ws: WorkerRecord) -> int:
    """Tasks that hold a thread of ``ws`` (or wait for one there)."""
    return len(ws.processing) - len(ws.slotless)


def _transfer_bytes(ts: TaskState, ws: WorkerRecord) -> int:
    return sum(d.nbytes for d in ts.dependencies if ws not in d.who_has)


def steal_answered(state: SchedulerState, event: ev.StealAnswered) -> None:
    """The victim says whether it gave the task up; if so, it goes where it is best."""
    ts = state.tasks.get(event.key)
    if ts is None:
        return
    victim = state.workers.get(event.worker)
    if ts.state != PROCESSING or ts.processing_on is not victim or victim is None:
        return
    ts.steal_pending = False
    if not event.stolen:
        ts.started = True  # the victim refused: it is running it
        return
    state.counts["stolen"] += 1
    state._stop_processing(ts)
    state._set_state(ts, RELEASED)
    state._set_state(ts, WAITING)
    candidates = {ws: None for ws in state.free if ws is not victim}
    best = decide_worker(ts, candidates, state.bandwidth, state.avg_duration)
    state._ready(ts, prefer=best)
