"""Choosing a worker for a ready task: pure functions over the scheduler's state.

The rule: go where most of the task's input bytes already are, unless the
worker there is so busy that moving the inputs is cheaper than waiting; break
ties by load. Only workers with a free slot are considered; a task with none
stays queued at the scheduler.

Cost per decision does not grow with the number of workers: the candidates are
the free workers that hold an input, plus the few free workers that were given
work least recently (``free`` is kept in that order by the scheduler state). It is
linear in the task's inputs (and their holders), however many candidates there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from regrow.core.scheduler_state import TaskState, WorkerRecord


# How many of the least recently used free workers are weighed for each task.
_LRU_CANDIDATES = 4


def allowed(ts: TaskState, ws: WorkerRecord) -> bool:
    """Whether ``ts``'s restrictions (worker addresses, names or nannies) admit ``ws``,
    and whether ``ws`` has the resources ``ts`` needs free now."""
    r = ts.restrictions
    if r is not None and not (
        ws.address in r or ws.name in r or (bool(ws.nanny) and ws.nanny in r)
    ):
        return False
    need = ts.resources
    if need:
        have, used = ws.resources, ws.used
        for name, n in need.items():
            if have.get(name, 0.0) - used.get(name, 0.0) < n:
                return False
    return True


def take(ts: TaskState, ws: WorkerRecord, sign: float) -> None:
    """``ts`` starts (``sign`` 1) or stops (-1) using its resources on ``ws``."""
    if ts.resources:
        used = ws.used
        for name, n in ts.resources.items():
            left = used.get(name, 0.0) + sign * n
            if left > 1e-9:
                used[name] = left
            else:
                used.pop(name, None)


def decide_worker(
    ts: TaskState,
    free: Mapping[WorkerRecord, None],
    bandwidth: float,
    avg_duration: float,
) -> WorkerRecord | None:
    if not free:
        return None
    # The bytes of its inputs each worker holds, in one pass over the inputs: a task with
    # a huge fan-in costs O(inputs), not O(inputs x candidates).
    total = 0
    held: dict[WorkerRecord, int] = {}
    for dep in ts.dependencies:
        nbytes = dep.nbytes
        total += nbytes
        for ws in dep.who_has:
            held[ws] = held.get(ws, 0) + nbytes
    candidates: Iterable[WorkerRecord]
    if ts.restrictions is not None or ts.resources:
        candidates = [ws for ws in free if allowed(ts, ws)]
    elif held:
        lru = list(islice(free, _LRU_CANDIDATES))
        candidates = lru + [ws for ws in held if ws in free and ws not in lru]
    else:  # nothing to weigh but load (a map of 100,000: every task)
        candidates = islice(free, _LRU_CANDIDATES)
    best: WorkerRecord | None = None
    best_cost = 0.0
    for ws in candidates:
        cost = (len(ws.processing) - len(ws.slotless)) / ws.nthreads * avg_duration
        if total:
            cost += (total - held.get(ws, 0)) / bandwidth
        if best is None or cost < best_cost:
            best, best_cost = ws, cost
            if cost <= 0.0:  # none can beat it: idle, and holding all the inputs
                break
    return best


def beside_inputs(ts: TaskState, estimate: float, bandwidth: float) -> WorkerRecord | None:
    """The worker holding most of ``ts``'s input bytes, if moving them would take longer
    than ``ts`` is expected to run (``estimate``, s), whether it has a free slot or not.

    Such a task costs its inputs' holder less time than the move would cost the two
    workers (a dask graph's ``getitem`` of a large tuple, a pipeline's ``take`` of a
    step's outputs: a ~230 KB StepResult took ~7 ms of pickling and unpickling to move
    for a task of 20 us). Should the holder stay busy for long, an idle worker steals
    it (``stealing.balance``)."""
    held: dict[WorkerRecord, int] = {}
    for dep in ts.dependencies:
        for ws in dep.who_has:
            held[ws] = held.get(ws, 0) + dep.nbytes
    if not held:
        return None
    holder = max(held, key=held.__getitem__)
    return holder if held[holder] / bandwidth > estimate else None
