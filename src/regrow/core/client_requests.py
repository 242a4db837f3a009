"""What clients ask of the scheduler core: submit, want, release, cancel, scatter.

Owns the bookkeeping of who wants which key (``TaskState.who_wants`` /
``ClientState.wants``) as client requests change it; what follows from it (computing,
releasing, forgetting) is the state's toolkit (``_compute``, ``_release``...).
Plain functions over a ``SchedulerState``, called by its ``handle``.
Must not: do IO, or know about connections (a client's reconnection grace is the shell's).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import graph
from regrow.core.records import EMPTY, ClientState, TaskError, TaskState, added, discarded
from regrow.core.transitions import ERRED, MEMORY, PROCESSING, RELEASED

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState

# The scheduler's own pseudo-client (as dask.distributed's): it wants the keys clients
# fired and forgot (``fire_and_forget``) until each is done, in memory or erred. No
# client may register under this id (the shell refuses it), and it never disconnects.
FIRE_AND_FORGET = "fire-and-forget"
# Errors a retry cannot mend: the graph itself is wrong (a cycle, an unknown input), and
# the task that has them was never linked to its inputs.
_PERMANENT = frozenset({"InvalidGraphError", "FutureLostError"})


def tasks_submitted(state: SchedulerState, event: ev.TasksSubmitted) -> None:
    """New tasks enter the graph; the client holds futures for ``event.wanted``.

    A key names one task: a key the scheduler knows keeps its task (the work is shared,
    whatever this spec says, as in dask.distributed), and a key given twice in one
    submission keeps its first spec, so batching never decides which one runs. Tasks may
    come in any order. Those that can never run (``graph.problems``: an unknown
    dependency, a cycle) err for their client; the tasks that need them err through
    them. Nothing else in the state changes for a bad submission.
    """
    client = state._client(event.client)
    specs = new_specs(event, state.tasks)
    if len(client.wants) + len(specs) > state.max_client_tasks:
        _refuse_too_many(state, client, event, len(specs))
        return
    found = graph.problems({k: s.dependencies for k, s in specs.items()}, state.tasks)
    fresh: list[TaskState] = []
    for key, spec in specs.items():
        ts = TaskState(
            key, spec.run_spec, (-graph.bounded_priority(spec.priority), next(state._seq))
        )
        ts.retries = max(0, spec.retries)
        ts.pure = spec.pure
        if spec.workers:
            ts.restrictions = frozenset(spec.workers)
        if spec.resources:
            ts.resources = dict(spec.resources)
        state.tasks[key] = ts
        fresh.append(ts)
    # Linked once every new task exists: a dependency may come later in the message.
    errors: dict[graph.Problem, TaskError] = {}
    for ts in fresh:
        problem = found.get(ts.key)
        if problem is None:
            for dep_key in specs[ts.key].dependencies:
                dep = state.tasks[dep_key]
                ts.dependencies = added(ts.dependencies, dep)
                dep.dependents = added(dep.dependents, ts)
            continue
        # Erred in place, not through _err: nobody wants it yet, and _err would forget
        # it before the client's want (and its report) is registered below. Not linked
        # to its inputs: it never runs, and a cycle must not enter the graph.
        error = errors.get(problem)
        if error is None:
            error = errors[problem] = graph.task_error(problem)
        state._set_state(ts, ERRED)
        ts.error = error
    if found:
        state._emit(
            cmd.Log(level="warning", message=graph.summary(f"client {event.client}", found))
        )
    for key in event.wanted:
        target = state.tasks.get(key)
        if target is None:
            # Nothing would ever settle its future: say so rather than leave it pending.
            _report_unknown(
                state,
                client,
                key,
                f"the scheduler does not know key {graph.key_text(key)}: it is not in the "
                "submission that wants it, and was never submitted or already released",
            )
            continue
        want(state, client, target)
    for ts in fresh:
        if ts.state in (RELEASED, ERRED) and not state._needed(ts):
            state._check_forget(ts)


def new_specs(event: ev.TasksSubmitted, known: Container[str]) -> dict[str, ev.TaskSpec]:
    """The tasks a submission adds, by key: those not ``known``, each key's first spec
    (the journal records exactly these)."""
    specs: dict[str, ev.TaskSpec] = {}
    for spec in event.tasks:
        if spec.key not in specs and spec.key not in known:
            specs[spec.key] = spec
    return specs


def _refuse_too_many(
    state: SchedulerState, client: ClientState, event: ev.TasksSubmitted, new: int
) -> None:
    """A submission past ``max_client_tasks``: nothing of it enters the state; the keys it
    wants err for its client, with the reason (``TooManyTasksError``)."""
    text = (
        f"this client holds {len(client.wants):,} keys and submitted {new:,} more: past the "
        f"scheduler's limit of {state.max_client_tasks:,} per client (max_client_tasks); "
        "release futures, or wait for results, before submitting more"
    )
    state._emit(cmd.Log(level="warning", message=f"client {client.id}: {text}"))
    for key in event.wanted:
        target = state.tasks.get(key)
        if target is not None:
            want(state, client, target)  # a key it already knows: no new task
            continue
        _report_unknown(state, client, key, text, kind="TooManyTasksError")


def _report_unknown(
    state: SchedulerState,
    client: ClientState,
    key: str,
    text: str,
    kind: str = "FutureLostError",
) -> None:
    """Tell ``client`` its future of ``key`` (no task here) errs: ``kind`` names the
    exception it raises."""
    state._emit(
        cmd.ReportErred(
            client=client.id,
            key=key,
            exception=b"",
            traceback=b"",
            kind=kind,
            text=text,
            blame=key,
        )
    )


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


def _known(state: SchedulerState, client: ClientState, key: str) -> TaskState | None:
    """``key``'s task, or None after telling ``client`` the scheduler does not know it."""
    ts = state.tasks.get(key)
    if ts is None:
        _report_unknown(
            state, client, key, f"the scheduler does not know key {key!r} (it was released)"
        )
    return ts


def keys_desired(state: SchedulerState, event: ev.KeysDesired) -> None:
    client = state._client(event.client)
    for key in event.keys:
        ts = _known(state, client, key)
        if ts is not None:
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


def keys_fired(state: SchedulerState, event: ev.KeysFiredAndForgotten) -> None:
    """``fire_and_forget``: the scheduler itself wants ``event.keys`` (its pseudo-client
    ``FIRE_AND_FORGET``), so they are computed even once every client let go of them, or
    left; each is let go once done (``fired_settled``). A key done already needs nothing
    more, nor does an unknown one (its submission was refused, or it was cancelled)."""
    fired = state._client(FIRE_AND_FORGET)
    for key in event.keys:
        ts = state.tasks.get(key)
        if ts is None or ts.state in (MEMORY, ERRED):
            continue
        ts.who_wants = added(ts.who_wants, fired)
        fired.wants.add(ts)
        if ts.state == RELEASED:
            state._compute(ts)
    if not fired.wants:
        del state.clients[FIRE_AND_FORGET]


def note_done(state: SchedulerState, ts: TaskState) -> None:
    """``ts`` just went to memory or erred (``_set_state``): if it was fired and
    forgotten, let it go once the event is dealt with (``fired_settled``)."""
    fired = state.clients.get(FIRE_AND_FORGET)
    if fired is not None and fired in ts.who_wants:
        state.fired_done.append(ts)


def fired_settled(state: SchedulerState) -> None:
    """Let go of the fired-and-forgotten keys that are done, as a client releasing them
    would: after the event that settled them, never in the middle of a transition. The
    state calls it only when not recovering: a result a worker brings back then may be
    the input of a restored task, computed when the recovery ends."""
    done, state.fired_done = state.fired_done, []
    fired = state.clients.get(FIRE_AND_FORGET)
    if fired is None:
        return
    keys = [ts.key for ts in done if ts.state in (MEMORY, ERRED) and ts in fired.wants]
    keys_released(state, FIRE_AND_FORGET, keys)
    if not fired.wants:
        del state.clients[FIRE_AND_FORGET]


def retry_requested(state: SchedulerState, event: ev.RetryRequested) -> None:
    """``Future.retry``: each erred key, and the erred inputs it erred through, goes
    back to released and is computed again as any wanted key is; the clients that want
    any of them are told it is pending again (``ReportRetried``). A key that did not err
    is reported as it stands, as ``keys_desired`` does; so is one whose error no rerun
    mends (the graph is wrong: ``_PERMANENT``)."""
    client = state._client(event.client)
    for key in event.keys:
        ts = _known(state, client, key)
        if ts is None:
            continue
        if ts.state == ERRED:
            _unerr(state, ts)
        want(state, client, ts, report=True)


def _unerr(state: SchedulerState, root: TaskState) -> None:
    """``root`` (erred) and the erred inputs it erred through back to released, their
    errors dropped; nothing at all if one of them has a ``_PERMANENT`` error."""
    chain: list[TaskState] = []
    seen: set[TaskState] = set()
    stack = [root]
    while stack:
        ts = stack.pop()
        if ts in seen:
            continue
        seen.add(ts)
        if ts.error is not None and ts.error.kind in _PERMANENT:
            return
        chain.append(ts)
        stack.extend(dep for dep in ts.dependencies if dep.state == ERRED)
    for ts in chain:
        state._set_state(ts, RELEASED)
        ts.error = None
        for c in ts.who_wants:
            state._emit(cmd.ReportRetried(client=c.id, key=ts.key))


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
