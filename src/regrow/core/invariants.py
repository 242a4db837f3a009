"""validate_state(state): the scheduler core's invariants, checked in tests and debug mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState


class InvariantError(AssertionError):
    pass


def _fail(msg: str) -> None:
    # Messages are built only on failure: formatting reprs for every check made
    # validation cost far more than the transitions it checks.
    raise InvariantError(msg)


def validate_state(state: SchedulerState) -> None:
    from regrow.core.scheduler_state import (
        ERRED,
        MEMORY,
        PROCESSING,
        QUEUED,
        RELEASED,
        WAITING,
    )

    queued = 0
    for key, ts in state.tasks.items():
        if ts.key != key:
            _fail(f"{ts!r} filed under {key!r}")
        if ts.state == MEMORY:
            if not ts.who_has and ts.inline is None:
                _fail(f"{ts!r} in memory but held by no worker, nor kept by the scheduler")
            if not (ts.who_wants or ts.waiters or state.recovering or state.keeping_restored):
                _fail(f"{ts!r} in memory but nobody needs it (leak)")
        else:
            if ts.who_has:
                _fail(f"{ts!r} not in memory but held by {ts.who_has}")
            if ts.inline is not None:
                _fail(f"{ts!r} not in memory but its result is kept")
        if ts.state == PROCESSING:
            ws = ts.processing_on
            if ws is None or ts not in ws.processing:
                _fail(f"{ts!r} processing nowhere")
            if not all(d.state == MEMORY for d in ts.dependencies):
                _fail(f"{ts!r} processing before its inputs are in memory")
        else:
            if ts.processing_on is not None:
                _fail(f"{ts!r} has processing_on but is {ts.state}")
        if ts.state == WAITING:
            if not ts.waiting_on:
                _fail(f"{ts!r} waiting on nothing")
            for dep in ts.waiting_on:
                if dep.state == MEMORY:
                    _fail(f"{ts!r} waits on {dep!r} which is in memory")
                if dep.state == ERRED:
                    _fail(f"{ts!r} waits on erred {dep!r}")
                if ts not in dep.waiters:
                    _fail(f"{ts!r} waits on {dep!r} without being its waiter")
        if ts.state == QUEUED:
            queued += 1
        if ts.state in (WAITING, QUEUED, PROCESSING):
            if not (ts.who_wants or ts.waiters):
                _fail(f"{ts!r} is being computed but nobody needs it")
            for dep in ts.dependencies:
                if ts not in dep.waiters:
                    _fail(f"{ts!r} runs but is not among {dep!r}'s waiters")
        for waiter in ts.waiters:
            if waiter.state not in (WAITING, QUEUED, PROCESSING):
                _fail(f"{ts!r} has waiter {waiter!r} that is not waiting")
        if ts.state in (RELEASED, ERRED) and not (
            ts.who_wants or ts.dependents or state.recovering or state.keeping_restored
        ):
            _fail(f"{ts!r} is {ts.state} with no client and no dependents (should be forgotten)")
        for dep in ts.dependencies:
            if ts not in dep.dependents:
                _fail(f"{ts!r} missing from {dep!r}.dependents")
            if state.tasks.get(dep.key) is not dep:
                _fail(f"{ts!r} depends on forgotten {dep!r}")
        for c in ts.who_wants:
            if ts not in c.wants:
                _fail(f"{c!r} wants {ts!r} only one way")
        if ts.state == RELEASED and ts.waiting_on:
            _fail(f"{ts!r} released but waiting")
    if queued != state._queued_count:
        _fail(f"queued count {state._queued_count} != {queued}")
    kept = sum(len(ts.inline) for ts in state.tasks.values() if ts.inline is not None)
    if kept != state.inline_bytes:
        _fail(f"kept result bytes {state.inline_bytes} != {kept}")
    for ws in state.workers.values():
        for ts in ws.processing:
            if ts.processing_on is not ws:
                _fail(f"{ws!r} lists {ts!r} it is not processing")
        for ts in ws.has_what:
            if ws not in ts.who_has:
                _fail(f"{ws!r} holds {ts!r} one-way")
        used: dict[str, float] = {}
        for ts in ws.processing:
            for name, n in (ts.resources or {}).items():
                used[name] = used.get(name, 0.0) + n
        if any(abs(used.get(k, 0.0) - ws.used.get(k, 0.0)) > 1e-6 for k in {*used, *ws.used}):
            _fail(f"{ws!r} resources in use {ws.used} != its tasks' {used}")
        if not ws.slotless <= ws.processing.keys():
            _fail(f"{ws!r} has long-running tasks it is not processing")
        takes_tasks = (
            len(ws.processing) - len(ws.slotless) < ws.slots
            and not ws.paused
            and ws.isolated is None
            and not ws.draining
            and ws.status == "running"
        )
        if takes_tasks != (ws in state.free):
            _fail(f"{ws!r} free-slot bookkeeping wrong")
    retiring = {ws for r in state.retirements.values() for ws in r.pending}
    for ws in retiring:
        if state.workers.get(ws.address) is not ws:
            _fail(f"{ws!r} is being retired but was removed")
    for ws in state.workers.values():
        if ws.status == "retiring" and ws not in retiring:
            _fail(f"{ws!r} is retiring for no request")
    for c in state.clients.values():
        for ts in c.wants:
            if state.tasks.get(ts.key) is not ts:
                _fail(f"{c!r} wants forgotten {ts!r}")
