"""Tree reduction: 4,096 leaves summed pairwise down to one value.

Leaves come from ``client.map(inc, range(...))``; then each level adds adjacent
pairs of the one below, ``client.map(add, level[0::2], level[1::2])``, until one
future is left (8,191 tasks in 13 map calls, default ``pure=True``). Reported
as total seconds from the first map call until the root's result is back. Each
repetition uses different leaf values so it never reuses the previous one's keys.

On Ray (``ray_client``): each ``map`` is one ``ray.remote(fn).remote(...)``
call per element, the futures of the level below passed as ObjectRefs. No
target: the project's issue sets none for this workload.

Run alone: ``python -m benchmarks.tree``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

from benchmarks.common import Report, System, Workload, check, main, run_workloads
from benchmarks.tasks import add, inc

N_LEAVES = 4_096
_bases = itertools.count(1)


def tree(system: System) -> float:
    client = system.client
    base = next(_bases) * 10_000_000
    start = time.perf_counter()
    level = client.map(inc, range(base, base + N_LEAVES))
    while len(level) > 1:
        level = client.map(add, level[0::2], level[1::2])
    total = level[0].result()
    elapsed = time.perf_counter() - start
    expected = sum(range(base, base + N_LEAVES)) + N_LEAVES
    check(total == expected, f"tree: got {total}, expected {expected}")
    return elapsed


WORKLOADS = [Workload(f"tree reduction of {N_LEAVES:,} leaves", "s", False, tree)]


def run(systems: Sequence[str], reps: int) -> Report:
    return Report(rows=run_workloads(WORKLOADS, systems, reps))


if __name__ == "__main__":
    main("tree", run)
