"""validate_state(state): the scheduler core's invariants, checked in tests and debug mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState


class InvariantError(AssertionError):
    pass


def _check(cond: bool, msg: str) -> None:
    if not cond:
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
        _check(ts.key == key, f"{ts!r} filed under {key!r}")
        if ts.state == MEMORY:
            _check(bool(ts.who_has), f"{ts!r} in memory but held by no worker")
            _check(
                bool(ts.who_wants or ts.waiters),
                f"{ts!r} in memory but nobody needs it (leak)",
            )
        else:
            _check(not ts.who_has, f"{ts!r} not in memory but held by {ts.who_has}")
        if ts.state == PROCESSING:
            ws = ts.processing_on
            _check(ws is not None and ts in ws.processing, f"{ts!r} processing nowhere")
            _check(
                all(d.state == MEMORY for d in ts.dependencies),
                f"{ts!r} processing before its inputs are in memory",
            )
        else:
            _check(ts.processing_on is None, f"{ts!r} has processing_on but is {ts.state}")
        if ts.state == WAITING:
            _check(bool(ts.waiting_on), f"{ts!r} waiting on nothing")
            for dep in ts.waiting_on:
                _check(dep.state != MEMORY, f"{ts!r} waits on {dep!r} which is in memory")
                _check(dep.state != ERRED, f"{ts!r} waits on erred {dep!r}")
                _check(ts in dep.waiters, f"{ts!r} waits on {dep!r} without being its waiter")
        if ts.state == QUEUED:
            queued += 1
        if ts.state in (WAITING, QUEUED, PROCESSING):
            _check(
                bool(ts.who_wants or ts.waiters),
                f"{ts!r} is being computed but nobody needs it",
            )
            for dep in ts.dependencies:
                _check(ts in dep.waiters, f"{ts!r} runs but is not among {dep!r}'s waiters")
        for waiter in ts.waiters:
            _check(
                waiter.state in (WAITING, QUEUED, PROCESSING),
                f"{ts!r} has waiter {waiter!r} that is not waiting",
            )
        if ts.state in (RELEASED, ERRED):
            _check(
                bool(ts.who_wants or ts.dependents),
                f"{ts!r} is {ts.state} with no client and no dependents (should be forgotten)",
            )
        for dep in ts.dependencies:
            _check(ts in dep.dependents, f"{ts!r} missing from {dep!r}.dependents")
            _check(state.tasks.get(dep.key) is dep, f"{ts!r} depends on forgotten {dep!r}")
        for c in ts.who_wants:
            _check(ts in c.wants, f"{c!r} wants {ts!r} only one way")
        _check(ts.state != RELEASED or not ts.waiting_on, f"{ts!r} released but waiting")
    _check(queued == state._queued_count, f"queued count {state._queued_count} != {queued}")
    for ws in state.workers.values():
        for ts in ws.processing:
            _check(ts.processing_on is ws, f"{ws!r} lists {ts!r} it is not processing")
        for ts in ws.has_what:
            _check(ws in ts.who_has, f"{ws!r} holds {ts!r} one-way")
        _check(
            (len(ws.processing) < ws.slots) == (ws in state.free),
            f"{ws!r} free-slot bookkeeping wrong",
        )
    for c in state.clients.values():
        for ts in c.wants:
            _check(state.tasks.get(ts.key) is ts, f"{c!r} wants forgotten {ts!r}")
