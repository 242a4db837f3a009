"""What clients ask of the scheduler core: submit, want, release, cancel, scatter.

Owns the bookkeeping of who wants which key (``TaskState.who_wants`` /
``ClientState.wants``) as client requests change it; what follows from it (computing,
releasing, forgetting) is the state's toolkit (``_compute``, ``_release``...).
Plain functions over a ``SchedulerState``, called by its ``handle``.
Must not: do IO, or know about connections (a client's reconnection grace is the shell's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.records import EMPTY, ClientState, TaskError, TaskState, added, discarded
from regrow.core.transitions import ERRED, MEMORY, PROCESSING, RELEASED

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState


def tasks_submitted(state: SchedulerState, event: ev.TasksSubmitted) -> None:
    client = state._client(event.client)
    fresh: list[TaskState] = []
    for spec in event.tasks:
        ts = state.tasks.get(spec.key)
        if ts is not None:
            continue  # a pure key already known: the work is shared
        ts = TaskState(spec.key, spec.run_spec, (-spec.priority, next(state._seq)))
        ts.retries = spec.retries
        ts.pure = spec.pure
        if spec.workers:
            ts.restrictions = frozenset(spec.workers)
        missing = [d for d in spec.dependencies if d not in state.tasks]
        for dep_key in spec.dependencies:
            dep = state.tasks.get(dep_key)
            if dep is not None:
                ts.dependencies = added(ts.dependencies, dep)
                dep.dependents = added(dep.dependents, ts)
        state.tasks[spec.key] = ts
        if missing:
            # Erred in place, not through _err: nobody wants it yet, and _err would
            # forget it before the client's want (and its report) is registered below.
            state._set_state(ts, ERRED)
            ts.error = TaskError(
                blame=ts.key,
                kind="FutureLostError",
                text=f"task {ts.key!r} depends on {missing[0]!r}, which the scheduler "
                "no longer knows (was its future released?)",
            )
        fresh.append(ts)
    for key in event.wanted:
        ts = state.tasks.get(key)
        if ts is None:
            continue
        want(state, client, ts)
    for ts in fresh:
        if ts.state in (RELEASED, ERRED) and not state._needed(ts):
            state._check_forget(ts)


def want(state: SchedulerState, client: ClientState, ts: TaskState, report: bool = False) -> None:
    """``client`` holds a future for ``ts``: compute it, or tell it the outcome already known."""
    new = report or client not in ts.who_wants
    ts.who_wants = added(ts.who_wants, client)
    client.wants.add(ts)
    if ts.state == RELEASED:
        state._compute(ts)
    elif new and ts.state == MEMORY:
        state._emit(
            cmd.ReportInMemory(
                client=client.id,
                key=ts.key,
                type_name=ts.type_name,
                nbytes=ts.nbytes,
                inline=ts.inline,
            )
        )
    elif new and ts.state == ERRED:
        state._report_erred(client, ts)


def keys_desired(state: SchedulerState, event: ev.KeysDesired) -> None:
    client = state._client(event.client)
    for key in event.keys:
        ts = state.tasks.get(key)
        if ts is None:
            state._emit(
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
        want(state, client, ts, report=True)


def keys_released(state: SchedulerState, client_id: str, keys: Iterable[str]) -> None:
    client = state.clients.get(client_id)
    if client is None:
        return
    for key in keys:
        ts = state.tasks.get(key)
        if ts is None or client not in ts.who_wants:
            continue
        ts.who_wants = discarded(ts.who_wants, client)
        client.wants.discard(ts)
        if not state._needed(ts):
            state._release(ts)
            state._check_forget(ts)


def client_disconnected(state: SchedulerState, client_id: str) -> None:
    client = state.clients.get(client_id)
    if client is None:
        return
    keys_released(state, client_id, [ts.key for ts in list(client.wants)])
    del state.clients[client_id]


def keys_cancelled(state: SchedulerState, event: ev.KeysCancelled) -> None:
    client = state._client(event.client)
    doomed: dict[TaskState, None] = {}
    for key in event.keys:
        ts = state.tasks.get(key)
        if ts is None:
            state._emit(cmd.ReportCancelled(client=client.id, key=key))
            continue
        others = any(c is not client for c in ts.who_wants)
        if others and not event.force:
            if client in ts.who_wants:
                state._emit(cmd.ReportCancelled(client=client.id, key=key))
            keys_released(state, client.id, [key])
            continue
        stack = [ts]
        while stack:
            t = stack.pop()
            if t in doomed:
                continue
            doomed[t] = None
            stack.extend(t.dependents)
        if client not in ts.who_wants:
            state._emit(cmd.ReportCancelled(client=client.id, key=key))
    for ts in doomed:
        for c in ts.who_wants:
            c.wants.discard(ts)
            state._emit(cmd.ReportCancelled(client=c.id, key=ts.key))
        ts.who_wants = EMPTY
    if event.force:
        for ts in doomed:
            if ts.state == PROCESSING and ts.processing_on is not None:
                state._emit(cmd.Interrupt(worker=ts.processing_on.address, key=ts.key))
    # Dependents first, so their inputs lose their last waiter afterwards (and no
    # queued dependent is sent out while one of its inputs is already freed).
    for ts in dependents_first(doomed):
        if ts.state == ERRED:
            state._set_state(ts, RELEASED)
        state._release(ts)
    for ts in doomed:
        state._check_forget(ts)


def dependents_first(tasks: Iterable[TaskState]) -> list[TaskState]:
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


def data_scattered(state: SchedulerState, event: ev.DataScattered) -> None:
    client = state._client(event.client)
    for item in event.keys:
        holders = [state.workers[w] for w in item.workers if w in state.workers]
        ts = state.tasks.get(item.key)
        if ts is None:
            ts = TaskState(item.key, None, (0, next(state._seq)))
            state.tasks[item.key] = ts
        if ts.state not in (MEMORY, RELEASED):
            continue
        if not holders:
            ts.who_wants = added(ts.who_wants, client)
            client.wants.add(ts)
            state._err(
                ts,
                TaskError(
                    blame=ts.key,
                    kind="LostDataError",
                    text=f"scattered data {ts.key!r} has no live worker holding it",
                ),
            )
            continue
        if ts.state == RELEASED:
            state._set_state(ts, MEMORY)
        if event.replicas > 1:
            state.replicas[ts.key] = event.replicas
        ts.nbytes = item.nbytes
        ts.type_name = item.type_name
        for ws in holders:
            if ws not in ts.who_has:
                ts.who_has = added(ts.who_has, ws)
                ws.has_what.add(ts)
                ws.nbytes += ts.nbytes
        want(state, client, ts)
        state._wake_dependents(ts)
