"""Liveness: deciding that a worker is gone, when, and why.

Owns, in order of a worker's life:

- **Signs of life.** Every message a worker sends (``FromWorker`` events, heartbeats
  among them) moves its ``last_seen`` to the event's ``now``; on each ``Ticked`` a worker
  silent for longer than ``heartbeat_timeout`` is removed, and the shell is told to abort
  its connection (``CloseWorkerConnection``): a frozen process or a cut network.
- **A closed connection.** The worker is removed at once when the core knows why it
  goes (it is leaving on purpose) or when it has no nanny. A worker with a nanny is
  kept, taking no tasks (``CLOSED``), until its nanny's ``WorkerDeathReported`` names
  the cause (signal, exit code, memory limit), or until ``death_report_wait`` has passed
  (checked on each ``Ticked``): errors then name the real cause.
- **A death report** removes the worker at once with the nanny's reason (and aborts its
  connection if it is still open: the process is dead, no need to wait for the kernel).
- **Leaving on purpose** (``WorkerRetiring``: the worker said so, or a restart kills it):
  it takes no new tasks, and its removal is graceful (its tasks are not suspects).
- **Coming back.** The ids of removed workers are kept (the last ``REMOVED_IDS_KEPT``):
  one that registers again is told to drop what it holds (``AcceptWorker(drop=True)``),
  since the graph moved on without it.

The shell only reports what it sees, with its clock in ``now``. Removing a worker is
``SchedulerState._remove_worker`` (``recovery`` decides what its tasks and data become).
Must not: read a clock, touch a socket, or decide about tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import timeline
from regrow.core.records import CLOSED, LEAVING

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState

# How many removed worker ids are remembered (a worker away longer than that many
# removals is not recognised, and offers results the graph may no longer want: those are
# checked against the graph like a restarted scheduler's).
REMOVED_IDS_KEPT = 10_000


def seen(state: SchedulerState, event: ev.FromWorker) -> None:
    """Any message from a worker is a sign of life."""
    ws = state.workers.get(event.worker)
    if ws is not None and event.now > ws.last_seen:
        ws.last_seen = event.now


def heartbeat(state: SchedulerState, event: ev.HeartbeatReceived) -> None:
    ws = state.workers.get(event.worker)
    if ws is not None:
        ws.metrics.update(event.metrics)


def admit(state: SchedulerState, event: ev.WorkerAdded) -> bool:
    """A worker registers: must it drop what it holds (the core removed it before)?

    Its address may still be taken by its own previous connection, closed and waiting
    for a death report: that one is gone for sure now.
    """
    old = state.workers.get(event.worker)
    if old is not None and old.status == CLOSED:
        state._remove_worker(old, old.reason, graceful=False)
    worker_id = event.id or event.worker
    if worker_id in state.removed_ids:
        del state.removed_ids[worker_id]
        return True
    return False


def removed(state: SchedulerState, worker_id: str) -> None:
    state.removed_ids[worker_id] = None
    if len(state.removed_ids) > REMOVED_IDS_KEPT:
        del state.removed_ids[next(iter(state.removed_ids))]


def retiring(state: SchedulerState, event: ev.WorkerRetiring) -> None:
    ws = state.workers.get(event.worker)
    if ws is None or ws.status == CLOSED:
        return
    ws.status = LEAVING
    ws.reason = event.reason
    state._update_free(ws)


def connection_closed(state: SchedulerState, event: ev.WorkerConnectionClosed) -> None:
    ws = state.workers.get(event.worker)
    if ws is None or ws.status == CLOSED:
        return
    if ws.status == LEAVING:
        state._remove_worker(ws, ws.reason, graceful=True)
    elif ws.nanny and state.death_report_wait > 0:
        # Its nanny knows why it died: give it a moment to say (see ``tick``).
        ws.status = CLOSED
        ws.reason = event.reason
        ws.closed_at = event.now
        state._update_free(ws)
    else:
        state._remove_worker(ws, event.reason, graceful=False)


def death_reported(state: SchedulerState, event: ev.WorkerDeathReported) -> None:
    ws = state.workers.get(event.worker)
    if ws is None:
        return  # removed already (the report came after the deadline), or never known
    if ws.status != CLOSED:
        state._emit(cmd.CloseWorkerConnection(worker=ws.address, reason=event.reason))
    state._remove_worker(
        ws, event.reason, graceful=ws.status == LEAVING, out_of_memory=event.out_of_memory
    )


def nanny_joined(state: SchedulerState, event: ev.NannyJoined) -> None:
    """A cluster keeps its size: a nanny started in place of one that died is news."""
    if event.replaces:
        timeline.record(
            state,
            "nanny-replaced",
            f"nanny {event.nanny} ({event.name}) started in place of {event.replaces}",
            nanny=event.nanny,
            name=event.name,
            replaces=event.replaces,
        )


def tick(state: SchedulerState, now: float) -> None:
    """Deadlines: a death report that did not come, a heartbeat that did not come."""
    timeout = state.heartbeat_timeout
    for ws in list(state.workers.values()):
        if ws.status == CLOSED:
            if now - ws.closed_at >= state.death_report_wait:
                state._remove_worker(ws, ws.reason, graceful=False)
        elif now - ws.last_seen > timeout:
            reason = f"no heartbeat for {now - ws.last_seen:.1f} s (timeout {timeout} s)"
            state.counts["heartbeat_misses"] += 1
            state._emit(cmd.CloseWorkerConnection(worker=ws.address, reason=reason))
            state._remove_worker(ws, reason, graceful=ws.status == LEAVING)
