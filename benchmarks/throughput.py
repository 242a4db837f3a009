"""Throughput: 10,000 trivial independent tasks, as tasks per second.

Two ways of sending them: ``client.submit`` called once per task in a Python
loop, and one ``client.map`` call. Both with ``pure=False`` (no hashing of the
arguments) and timed from the first submit until ``client.gather`` returned all
10,000 results.

Run alone: ``python -m benchmarks.throughput``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks.common import Report, System, Workload, check, main, run_workloads
from benchmarks.tasks import inc

N_TASKS = 10_000


def submit_loop(system: System) -> float:
    client = system.client
    start = time.perf_counter()
    futures = [client.submit(inc, i, pure=False) for i in range(N_TASKS)]
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    check(results == list(range(1, N_TASKS + 1)), "submit loop: wrong results")
    return N_TASKS / elapsed


def map_tasks(system: System) -> float:
    client = system.client
    start = time.perf_counter()
    futures = client.map(inc, range(N_TASKS), pure=False)
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    check(results == list(range(1, N_TASKS + 1)), "map: wrong results")
    return N_TASKS / elapsed


WORKLOADS = [
    Workload(f"throughput: {N_TASKS:,} x submit() + gather", "tasks/s", True, submit_loop),
    Workload(f"throughput: map() of {N_TASKS:,} + gather", "tasks/s", True, map_tasks),
]


def run(systems: Sequence[str], reps: int) -> Report:
    return Report(rows=run_workloads(WORKLOADS, systems, reps))


if __name__ == "__main__":
    main("throughput", run)
