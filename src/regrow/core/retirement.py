"""Graceful retirement: taking workers out of the cluster without losing anything.

``RetireWorkersRequested`` marks each named worker ``RETIRING``: it takes no new tasks,
the tasks it has not started are stolen back (``Steal``) and placed elsewhere, and those
it runs finish there. On each ``Ticked`` (and at once when asked) every retiring worker
is looked at:

- each result only it holds (no ``RUNNING`` worker holds another copy, and the
  scheduler keeps no copy of it) is copied to a running worker (``AcquireReplicas``,
  the least loaded first); an order not carried out in time (``heartbeat_timeout``
  after the time its bytes should take at ``bandwidth``), or whose recipient went away,
  is given again, up to ``COPY_ATTEMPTS`` times, after which the worker stays;
- once it runs nothing and holds nothing only it has, the shell is told to stop it
  (``CloseWorker``: through its nanny, so that no new worker replaces it) and it is
  removed gracefully: its tasks are not suspects, nothing is lost or recomputed.

When every worker a request named has gone, ``ReportRetired`` lists those that retired.

**No other worker.** A retiring worker that holds results only it has, or still runs
tasks, while no running worker is left to take them (every other one is retiring too,
or gone) is *not* retired: it goes back to work and the request is answered without it.
Retiring it would throw away results that clients hold futures for (scattered data
cannot even be recomputed), so the cluster keeps it rather than lose data; a worker
with nothing to hand over is retired even when it is the last one. Workers named
together are taken in order, so when none of them could go alone, the first stays and
takes what the others hand over. The same holds when copies keep failing.

**Dying on the way.** A retiring worker whose connection closes before it was told to
go died: it is removed like any dead worker (``liveness``: a nanny's reason awaited,
its started tasks suspected, what only it held recomputed) and the request is answered
without it. Copies already made are kept.

Must not: read a clock (``now`` comes in the events) or do IO.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import timeline
from regrow.core.records import RETIRING, RUNNING, TaskState, WorkerRecord

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState


# A copy asked of other workers this many times in vain (recipient gone, or the copy
# overdue) ends the retirement: the worker stays (see "No other worker" above).
COPY_ATTEMPTS = 3


class Retirement:
    """One ``RetireWorkersRequested``: the workers still to go, and those that went."""

    __slots__ = ("pending", "request", "retired")

    def __init__(self, request: str) -> None:
        self.request = request
        self.pending: dict[WorkerRecord, None] = {}
        self.retired: list[str] = []


def requested(state: SchedulerState, event: ev.RetireWorkersRequested) -> None:
    retirement = Retirement(event.request)
    by_name = {ws.name: ws for ws in state.workers.values()}
    for name in event.workers:
        ws = state.workers.get(name) or by_name.get(name)
        if ws is None or ws in retirement.pending:
            continue  # unknown (gone already): not in the answer
        retirement.pending[ws] = None
        if ws.status == RUNNING:
            ws.status = RETIRING
            ws.reason = "retired on request"
            state._update_free(ws)
            timeline.record(
                state,
                "worker-retiring",
                f"worker {ws.address} ({ws.name}) retiring",
                worker=ws.address,
                name=ws.name,
            )
        # LEAVING or CLOSED: it goes anyway, and the answer says how.
    state.retirements[event.request] = retirement
    progress(state, event.now)


def progress(state: SchedulerState, now: float) -> None:
    """Move every retiring worker on: steal, copy, close (see the module's docstring)."""
    retiring = {ws: None for r in state.retirements.values() for ws in r.pending}
    for ws in retiring:
        if ws.status == RETIRING and state.workers.get(ws.address) is ws:
            _advance(state, ws, now)
    _answer(state)


def _advance(state: SchedulerState, ws: WorkerRecord, now: float) -> None:
    recipients = [w for w in state.workers.values() if w.status == RUNNING]
    only_here = [
        ts
        for ts in ws.has_what
        if ts.inline is None and not any(h.status == RUNNING for h in ts.who_has)
    ]
    if (only_here or ws.processing) and not recipients:
        what = [f"the only copy of {len(only_here)} result(s)"] if only_here else []
        what += [f"{len(ws.processing)} running task(s)"] if ws.processing else []
        _refuse(state, ws, f"no other worker is left to take {' and '.join(what)}")
        return
    for ts in ws.processing:
        if not ts.started and not ts.steal_pending:
            ts.steal_pending = True
            state._emit(cmd.Steal(worker=ws.address, key=ts.key))
    if not _copy(state, ws, only_here, recipients, now):
        _refuse(state, ws, f"results could not be copied in {COPY_ATTEMPTS} attempts")
        return
    if not ws.processing and not only_here:
        ws.reason = "retired on request"
        state._emit(cmd.CloseWorker(worker=ws.address, nanny=ws.nanny, reason=ws.reason))
        state._remove_worker(ws, ws.reason, graceful=True)


def _copy(
    state: SchedulerState,
    ws: WorkerRecord,
    only_here: list[TaskState],
    recipients: list[WorkerRecord],
    now: float,
) -> bool:
    """Ask running workers for a copy of each result only ``ws`` holds: once per key, and
    again if the recipient went away or the copy is overdue. False once a key was asked
    for ``COPY_ATTEMPTS`` times in vain."""
    asked, ws.moving = ws.moving, {}
    load = {w: w.nbytes for w in recipients if not w.paused}
    orders: dict[WorkerRecord, dict[TaskState, list[str]]] = {}
    for ts in only_here:
        attempts = 0
        previous = asked.get(ts)
        if previous is not None:
            target_address, due, attempts = previous
            target = state.workers.get(target_address)
            if target is not None and target in load and now <= due:
                ws.moving[ts] = previous
                continue
            if attempts >= COPY_ATTEMPTS:
                return False
        candidates = [w for w in load if w not in ts.who_has]
        if not candidates:
            continue  # every recipient is paused for now: try again on the next tick
        target = min(candidates, key=load.__getitem__)
        load[target] += ts.nbytes
        orders.setdefault(target, {})[ts] = [h.address for h in ts.who_has]
    for target, order in orders.items():
        # Overdue: a heartbeat timeout after the time the bytes should take (twice over).
        nbytes = sum(ts.nbytes for ts in order)
        due = now + state.heartbeat_timeout + 2 * nbytes / state.bandwidth
        for ts in order:
            ws.moving[ts] = (target.address, due, asked.get(ts, ("", 0.0, 0))[2] + 1)
        who_has = {ts.key: holders for ts, holders in order.items()}
        state._emit(cmd.AcquireReplicas(worker=target.address, who_has=who_has))
    return True


def _refuse(state: SchedulerState, ws: WorkerRecord, why: str) -> None:
    ws.status = RUNNING
    ws.reason = ""
    ws.moving.clear()
    for retirement in state.retirements.values():
        retirement.pending.pop(ws, None)
    message = f"worker {ws.address} ({ws.name}) not retired: {why}"
    state._emit(cmd.Log(level="warning", message=message))
    timeline.record(state, "worker-not-retired", message, worker=ws.address, name=ws.name, why=why)
    state._update_free(ws)
    state._fill(ws)


def worker_gone(state: SchedulerState, ws: WorkerRecord, graceful: bool) -> None:
    """``ws`` was removed: retired (``graceful``), or died on the way."""
    if not state.retirements:
        return
    for retirement in state.retirements.values():
        if ws in retirement.pending:
            del retirement.pending[ws]
            if graceful:
                retirement.retired.append(ws.address)
    _answer(state)


def _answer(state: SchedulerState) -> None:
    for request, retirement in list(state.retirements.items()):
        if not retirement.pending:
            del state.retirements[request]
            state._emit(cmd.ReportRetired(request=request, workers=tuple(retirement.retired)))
