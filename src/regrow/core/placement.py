"""Choosing a worker for a ready task: pure functions over the scheduler's state.

The rule: go where most of the task's input bytes already are, unless the
worker there is so busy that moving the inputs is cheaper than waiting; break
ties by load. Only workers with a free slot are considered; a task with none
stays queued at the scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from regrow.core.scheduler_state import TaskState, WorkerState


def _allowed(ts: TaskState, ws: WorkerState) -> bool:
    r = ts.restrictions
    return r is None or ws.address in r or ws.name in r


def decide_worker(
    ts: TaskState,
    free: Iterable[WorkerState],
    bandwidth: float,
    avg_duration: float,
) -> WorkerState | None:
    best: WorkerState | None = None
    best_cost = 0.0
    deps = ts.dependencies
    for ws in free:
        if ts.restrictions is not None and not _allowed(ts, ws):
            continue
        load = len(ws.processing) / ws.nthreads
        cost = load * avg_duration
        if deps:
            missing = 0
            for dep in deps:
                if ws not in dep.who_has:
                    missing += dep.nbytes
            cost += missing / bandwidth
        if best is None or cost < best_cost:
            best, best_cost = ws, cost
    return best
