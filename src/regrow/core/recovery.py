"""Recovery: what the scheduler core does when something is lost.

Owns, readable top to bottom: a worker leaves (its running tasks are rescheduled and,
after a death, suspected; the results only it held are lost), lost results are
recomputed from lineage, scattered keys kept at ``replicas=k`` copies, holders that turn
out not to hold a key (a failed fetch: ``DependencyMissing``, ``ReplicasMissing``),
suspects run alone so a second death names the culprit (``isolate``), ``restart``, and
a scheduler restarted from its journal (``StateRestored`` / ``RecoveryFinished``).

Plain functions over a ``SchedulerState``: they use its private toolkit (``_compute``,
``_err``, ``_set_state``...), which is shared within ``regrow.core`` only.
Must not: do IO or read clocks; detect deaths (that is ``liveness``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import graph, rebalance, timeline
from regrow.core.client_requests import FIRE_AND_FORGET
from regrow.core.placement import allowed
from regrow.core.records import (
    EMPTY,
    RUNNING,
    TaskError,
    TaskState,
    WorkerRecord,
    added,
    discarded,
)
from regrow.core.transitions import (
    ERRED,
    FORGOTTEN,
    MEMORY,
    PROCESSING,
    QUEUED,
    RELEASED,
    WAITING,
)

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState


# ------------------------------------------------------- a worker leaves


def remove_worker(
    state: SchedulerState,
    ws: WorkerRecord,
    reason: str,
    graceful: bool,
    out_of_memory: bool = False,
) -> None:
    """``ws`` is gone: move its running tasks, recompute what died with it.

    ``graceful``: it left on purpose (retired, restarted, closed with the scheduler), so
    its running tasks are not suspects. Otherwise a task that had begun running on it
    may have killed it: it becomes suspicious, runs alone next, and after
    ``allowed_failures`` such deaths errs with KilledWorker.

    ``out_of_memory`` with no task running: what it held (or was sending) took its
    memory. Each result it alone held counts such a loss, and one lost that way
    ``allowed_failures`` times errs with KilledWorker naming the limit, instead of being
    recomputed into the same death again: no kill loop.
    """
    del state.workers[ws.address]
    state.free.pop(ws, None)
    if not graceful:
        state.counts["workers_lost"] += 1
    # The departure comes first in the timeline, before what follows from it (suspects,
    # recomputations); its counts are filled in below, before anyone is told.
    how = "retired" if graceful else "lost"
    lost_only = {} if graceful else {"recomputing": 0, "out_of_memory": out_of_memory}
    departure = timeline.record(
        state,
        f"worker-{how}",
        "",
        worker=ws.address,
        name=ws.name,
        reason=reason,
        rescheduled=0,
        **lost_only,
    )
    # First take its running tasks off it (and judge them), then deal with the
    # data it held, then reschedule: so a rescheduled task never points at it.
    interrupted = list(ws.processing)
    # Whether a task was running there when it died (not merely queued in its threads).
    ran_any = any(ts.started for ts in interrupted)
    for ts in interrupted:
        # Only a task that had begun running can have killed its worker; one that
        # waited in its queue is simply rescheduled.
        ran = ts.started
        state._stop_processing(ts)
        state._set_state(ts, RELEASED)
        if not graceful and ran:
            ts.suspicious += 1
            state.deaths.setdefault(ts.key, []).append((ws.address, reason))
            timeline.record(
                state,
                "task-suspected",
                f"task {ts.key!r} was running when worker {ws.address} died "
                f"({ts.suspicious} of {state.allowed_failures} such deaths allowed)",
                key=ts.key,
                worker=ws.address,
                reason=reason,
                deaths=ts.suspicious,
                allowed=state.allowed_failures,
            )
            for client in ts.who_wants:
                state._emit(cmd.ReportInterrupted(client=client.id, key=ts.key, worker=ws.address))
    ws.isolated = None
    under_replicated: list[str] = []
    gone: list[TaskState] = []
    for ts in list(ws.has_what):
        ts.who_has = discarded(ts.who_has, ws)
        ws.has_what.discard(ts)
        if not ts.who_has and ts.inline is None:
            gone.append(ts)
        elif ts.key in state.replicas:
            under_replicated.append(ts.key)
    doomed: dict[str, TaskError] = {}
    if out_of_memory and not graceful and not ran_any:
        doomed = _memory_losses(state, ws, reason, gone)
    lost = lost_all(
        state,
        gone,
        doomed,
        cause=f"worker {ws.address} ({ws.name}) lost: {reason}",
        worker=ws.address,
    )
    ws.nbytes = 0
    rescheduled = 0
    for ts in interrupted:
        if ts.state != RELEASED:
            continue
        # Only a death is judged: a graceful retirement never kills a task.
        if not graceful and ts.suspicious >= state.allowed_failures:
            deaths = state.deaths.pop(ts.key, [])
            error = TaskError(
                blame=ts.key,
                kind="KilledWorker",
                text="; ".join(f"{w}: {r or 'lost'}" for w, r in deaths),
                workers=tuple(w for w, _ in deaths),
            )
            blamed(state, ts.key, error)
            state._err(ts, error)
        elif state._needed(ts):
            ts.waiting_on = EMPTY
            rescheduled += 1
            state._compute(ts)
        else:
            state._drop_waiting(ts)
            state._check_forget(ts)
    state.counts["rescheduled"] += rescheduled
    departure["text"] = (
        f"worker {ws.address} ({ws.name}) {how}: {reason or 'no reason given'}; "
        f"{rescheduled} running task(s) rescheduled, {lost} lost result(s) being recomputed"
    )
    departure["rescheduled"] = rescheduled
    if not graceful:
        departure["recomputing"] = lost
    replicate(state, under_replicated)
    if not state.suspects:
        undrain(state)
    state._fill_all()


# ---------------------------------------------------------- lost results


def _memory_losses(
    state: SchedulerState, ws: WorkerRecord, reason: str, gone: list[TaskState]
) -> dict[str, TaskError]:
    """Count a memory-limit death against the results it lost; those lost so too often
    get their error (by key)."""
    doomed: dict[str, TaskError] = {}
    for ts in gone:
        ts.memory_losses += 1
        deaths = state.deaths.setdefault(ts.key, [])
        deaths.append((ws.address, reason))
        if ts.memory_losses >= state.allowed_failures:
            state.deaths.pop(ts.key, None)
            doomed[ts.key] = TaskError(
                blame=ts.key,
                kind="KilledWorker",
                text=(
                    f"its result was lost {ts.memory_losses} times, each time with its "
                    "holder killed for passing its memory limit while no task ran there "
                    "(holding or sending results took the memory); not computed again. "
                    + "; ".join(f"{w}: {r}" for w, r in deaths)
                ),
                workers=tuple(w for w, _ in deaths),
            )
    return doomed


def blamed(state: SchedulerState, key: str, error: TaskError) -> None:
    """``key`` is judged to kill its workers: it errs with ``error`` (KilledWorker)."""
    state.counts["erred"] += 1
    timeline.record(
        state,
        "task-blamed",
        f"task {key!r} blamed for killing its workers: {error.text}",
        key=key,
        workers=list(error.workers),
        error=error.text,
    )


def lost_all(
    state: SchedulerState,
    gone: list[TaskState],
    doomed: dict[str, TaskError] | None = None,
    cause: str = "",
    worker: str = "",
) -> int:
    """The last copies of these results are gone: recompute those still needed (those
    in ``doomed`` err with their error instead).

    Every one is marked lost before any is recomputed, so that a recomputation never
    counts on another of them (a Compute naming a dead holder); returns how many are
    being recomputed.
    """
    for ts in gone:
        state.counts["lost"] += 1
        # Dependents that were about to run elsewhere must wait for it again.
        for dependent in list(ts.waiters):
            if dependent.state in (PROCESSING, QUEUED):
                if dependent.state == PROCESSING:
                    ws = state._stop_processing(dependent)
                    if ws is not None:
                        state._emit(cmd.FreeKeys(worker=ws.address, keys=(dependent.key,)))
                else:
                    state._unqueue(dependent)
                state._set_state(dependent, WAITING)
                dependent.waiting_on = added(dependent.waiting_on, ts)
            elif dependent.state == WAITING:
                dependent.waiting_on = added(dependent.waiting_on, ts)
        state._set_state(ts, RELEASED)
    recomputed: list[str] = []
    for ts in gone:
        if state.tasks.get(ts.key) is not ts or ts.state == ERRED:
            continue
        if ts.state == RELEASED and not state._needed(ts):
            state._check_forget(ts)
            continue
        error = doomed.get(ts.key) if doomed else None
        if error is not None and ts.state == RELEASED:
            blamed(state, ts.key, error)
            state._err(ts, error)
            continue
        for client in ts.who_wants:
            state._emit(cmd.ReportLost(client=client.id, key=ts.key))
        state.counts["recomputed"] += 1
        recomputed.append(ts.key)
        if ts.state != RELEASED:
            continue  # already brought back as the input of another lost result
        waiters = set(ts.waiters)
        state._compute(ts)
        # _compute re-registered it with its own inputs; the dependents stay waiting on it.
        for dependent in waiters:
            if dependent.state == WAITING and ts.state != ERRED:
                dependent.waiting_on = added(dependent.waiting_on, ts)
    if recomputed:
        timeline.record(
            state,
            "tasks-recomputed",
            f"{len(recomputed)} lost result(s) being computed again: {cause}",
            cause=cause,
            worker=worker,
            count=len(recomputed),
            groups=timeline.by_group(recomputed),
            keys=timeline.sample(recomputed),
        )
    return len(recomputed)


# -------------------------------------------------------------- replicas


def replicate(state: SchedulerState, keys: Iterable[str]) -> None:
    """Copy each key held by fewer workers than it should be onto more workers."""
    orders: dict[WorkerRecord, dict[str, list[str]]] = {}
    for key in keys:
        ts = state.tasks.get(key)
        want = state.replicas.get(key, 1)
        if ts is None or ts.state != MEMORY:
            state.replicas.pop(key, None)
            continue
        missing = want - len(ts.who_has)
        if missing <= 0:
            continue
        targets = sorted(
            (
                w
                for w in state.workers.values()
                if w not in ts.who_has and not w.paused and w.status == RUNNING
            ),
            key=lambda w: w.nbytes,
        )[:missing]
        holders = [w.address for w in ts.who_has]
        for target in targets:
            orders.setdefault(target, {})[key] = holders
    for target, who_has in orders.items():
        state._emit(cmd.AcquireReplicas(worker=target.address, who_has=who_has))


def replicas_added(state: SchedulerState, event: ev.ReplicasAdded) -> None:
    ws = state.workers.get(event.worker)
    if ws is None:
        return
    stale: list[str] = []
    for key in event.keys:
        ts = state.tasks.get(key)
        if ts is None or ts.state != MEMORY:
            stale.append(key)
        elif ws not in ts.who_has:
            ts.who_has = added(ts.who_has, ws)
            ws.has_what.add(ts)
            ws.nbytes += ts.nbytes
            if state.rebalancing:
                rebalance.copied(state, ws, ts)
    if stale:
        state._emit(cmd.FreeKeys(worker=ws.address, keys=tuple(stale)))


# ---------------------------------------------- holders that do not hold


def drop_holders(state: SchedulerState, dep: TaskState, holders: Iterable[str]) -> None:
    """These workers do not have ``dep`` after all; recompute it if nobody does."""
    if dep.state != MEMORY:
        return
    for holder in holders:
        hs = state.workers.get(holder)
        if hs is not None and hs in dep.who_has:
            dep.who_has = discarded(dep.who_has, hs)
            hs.has_what.discard(dep)
            hs.nbytes -= dep.nbytes
    if not dep.who_has and dep.inline is None:
        lost_all(state, [dep], cause=f"no worker holds {dep.key!r} after all (its holders said so)")


def dependency_missing(state: SchedulerState, event: ev.DependencyMissing) -> None:
    ws = state.workers.get(event.worker)
    ts = state.tasks.get(event.key)
    dep = state.tasks.get(event.dependency)
    if dep is not None:
        drop_holders(state, dep, event.holders)
    if ts is None or ws is None or ts.state != PROCESSING or ts.processing_on is not ws:
        return
    state._stop_processing(ts)
    state._set_state(ts, WAITING)
    ts.waiting_on = {d for d in ts.dependencies if d.state != MEMORY} or EMPTY
    if not ts.waiting_on:
        state._ready(ts)
    state._fill(ws)


def replicas_missing(state: SchedulerState, event: ev.ReplicasMissing) -> None:
    """A client asked these holders for these keys and they answered without them."""
    for key, holders in event.holders:
        dep = state.tasks.get(key)
        if dep is not None:
            drop_holders(state, dep, holders)


# -------------------------------------------------------------- suspects


def isolate(state: SchedulerState) -> None:
    """Run each suspect alone on a worker, so a death names the culprit.

    A task that was running when its worker died may be the cause, or may have
    been unlucky to share the worker. Run alone, it either finishes (and is
    cleared) or kills the worker again (and takes the blame alone).
    """
    while state.suspects:
        empty = [
            ws
            for ws in state.workers.values()
            if not ws.processing and not ws.paused and ws.isolated is None and ws.status == RUNNING
        ]
        ts = state.suspects[0]
        target = next((ws for ws in empty if allowed(ts, ws)), None)
        if target is None:
            # Hold back the least busy allowed worker until it is empty.
            if not any(ws.draining for ws in state.workers.values()):
                candidates = [
                    ws
                    for ws in state.workers.values()
                    if allowed(ts, ws)
                    and not ws.paused
                    and ws.isolated is None
                    and ws.status == RUNNING
                ]
                if candidates:
                    drain = min(candidates, key=lambda w: len(w.processing))
                    drain.draining = True
                    state._update_free(drain)
            return
        state.suspects.pop(0)
        state._queued_count -= 1
        target.draining = False
        target.isolated = ts
        state._send_to(ts, target)
        timeline.record(
            state,
            "task-isolated",
            f"suspect task {ts.key!r} runs alone on worker {target.address}",
            key=ts.key,
            worker=target.address,
        )
    undrain(state)


def undrain(state: SchedulerState) -> None:
    for ws in state.workers.values():
        if ws.draining:
            ws.draining = False
            state._update_free(ws)
            state._fill(ws)


# --------------------------------------------------------------- restart


def restart(state: SchedulerState) -> None:
    """Every client's futures are cancelled and every task is forgotten."""
    for client in state.clients.values():
        for ts in client.wants:
            state._emit(cmd.ReportCancelled(client=client.id, key=ts.key))
        client.wants.clear()
    for ts in state.tasks.values():
        state.log.append((ts.key, ts.state, FORGOTTEN, state._stimulus))
    state.tasks.clear()
    state._queue.clear()
    state._queued_count = 0
    state.suspects.clear()
    state.deaths.clear()
    state.replicas.clear()
    state.inline_bytes = 0
    for ws in state.workers.values():
        ws.processing.clear()
        ws.slotless.clear()
        ws.used.clear()
        ws.has_what.clear()
        ws.nbytes = 0
        ws.isolated = None
        ws.draining = False
        state._update_free(ws)


def state_restored(state: SchedulerState, event: ev.StateRestored) -> None:
    """A restarted scheduler's journal: rebuild the graph; nothing runs until RecoveryFinished."""
    state.recovering = True
    rows: dict[str, ev.RestoredTask] = {}
    for row in event.tasks:
        if row.key not in rows and row.key not in state.tasks:
            rows[row.key] = row
    # The journal holds what clients sent, read like any submission: a row may name a
    # dependency written after it, and one that can never run must not enter the graph.
    found = graph.problems({k: r.dependencies for k, r in rows.items()}, state.tasks)
    for key, row in rows.items():
        ts = TaskState(key, row.run_spec, (-graph.bounded_priority(row.priority), next(state._seq)))
        ts.retries = max(0, row.retries)
        ts.pure = row.pure
        if row.workers:
            ts.restrictions = frozenset(row.workers)
        if row.replicas > 1:
            state.replicas[key] = row.replicas
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
        state.tasks[key] = ts
    errors: dict[graph.Problem, TaskError] = {}
    for key, row in rows.items():
        ts = state.tasks[key]
        problem = found.get(key)
        if problem is None:
            for dep_key in row.dependencies:
                dep = state.tasks[dep_key]
                ts.dependencies = added(ts.dependencies, dep)
                dep.dependents = added(dep.dependents, ts)
        elif ts.error is None:
            error = errors.get(problem)
            if error is None:
                error = errors[problem] = graph.task_error(problem)
            ts.state = ERRED  # restored as erred, as a journal's erred task is
            ts.error = error
    if found:
        state._emit(cmd.Log(level="warning", message=graph.summary("the journal", found)))
    for client_id, key in event.wants:
        wanted = state.tasks.get(key)
        if wanted is not None:
            if client_id == FIRE_AND_FORGET and wanted.state == ERRED:
                continue  # fired and forgotten, and done: nothing left to wish
            client = state._client(client_id)
            wanted.who_wants = added(wanted.who_wants, client)
            client.wants.add(wanted)


def recovery_finished(state: SchedulerState) -> None:
    """Compute what clients want that no worker brought back. What nobody needs is kept
    until ``ReattachGraceEnded``: a client resends the submissions the journal may have
    missed once it is back, and one may name tasks of an earlier submission that was
    written (say the inputs of a dask graph's last task, sent in a later message);
    forgotten now, they would make its resent tasks err."""
    state.recovering = False
    state.keeping_restored = True
    recomputed = 0
    for ts in list(state.tasks.values()):
        if ts.state == RELEASED and ts.who_wants:
            recomputed += 1
            state._compute(ts)
    timeline.record(
        state,
        "scheduler-recovered",
        f"scheduler recovered from its journal: {len(state.tasks)} tasks, "
        f"{recomputed} wanted result(s) computed again",
        tasks=len(state.tasks),
        recomputed=recomputed,
    )
    state._fill_all()


def reattach_grace_ended(state: SchedulerState) -> None:
    """Clients had their chance to resend: free what nobody needs."""
    if not state.keeping_restored:
        return
    state.keeping_restored = False
    unclaimed, state.unclaimed = state.unclaimed, {}
    stale: dict[str, list[str]] = {}
    for key, holders in unclaimed.items():
        ts = state.tasks.get(key)
        for address in holders:
            ws = state.workers.get(address)
            if ws is not None and (ts is None or ws not in ts.who_has):
                stale.setdefault(address, []).append(key)
    for address, keys in stale.items():
        state._emit(cmd.FreeKeys(worker=address, keys=tuple(keys)))
    for ts in list(state.tasks.values()):
        if state.tasks.get(ts.key) is not ts:
            continue
        if ts.state == MEMORY and not state._needed(ts):
            state._release(ts)
            state._check_forget(ts)
        elif ts.state in (RELEASED, ERRED) and not state._needed(ts):
            state._check_forget(ts)
