"""Throughput: trivial independent tasks, as tasks per second.

Two ways of sending them: ``client.submit`` called once per task in a Python
loop (10,000 tasks), and one ``client.map`` call (100,000 tasks). Both with
``pure=False`` (no hashing of the arguments) and timed from the first submit
until ``client.gather`` returned all the results. On Ray (``ray_client``):
``ray.remote(inc).remote(i)`` per task and ``ray.get`` of the list; Ray has no
batch submission, so its ``map`` is the same loop of ``.remote`` calls.

Target (regrow): at least 10x dask's rate and 3x Ray's, in both rows.

dask runs about 300-500 trivial tasks/s on a 2-core machine, so one repetition
of the 100,000-task map takes it 3-6 minutes: that workload's hang timeout is
``MAP_TIMEOUT`` instead of the usual 300 s.

Run alone: ``python -m benchmarks.throughput``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks.common import (
    Report,
    System,
    Workload,
    check,
    main,
    run_workloads,
    times_better,
)
from benchmarks.tasks import inc

N_SUBMIT = 10_000
N_MAP = 100_000
# A map repetition is a hang only below 100 tasks/s.
MAP_TIMEOUT = N_MAP / 100
TARGET = times_better(dask=10, ray=3)


def submit_loop(system: System) -> float:
    client = system.client
    start = time.perf_counter()
    futures = [client.submit(inc, i, pure=False) for i in range(N_SUBMIT)]
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    check(results == list(range(1, N_SUBMIT + 1)), "submit loop: wrong results")
    return N_SUBMIT / elapsed


def map_tasks(system: System, n: int = N_MAP) -> float:
    client = system.client
    start = time.perf_counter()
    futures = client.map(inc, range(n), pure=False)
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    check(results == list(range(1, n + 1)), "map: wrong results")
    return n / elapsed


WORKLOADS = [
    Workload(
        f"throughput: {N_SUBMIT:,} x submit() + gather",
        "tasks/s",
        True,
        submit_loop,
        target=TARGET,
    ),
    Workload(
        f"throughput: map() of {N_MAP:,} + gather",
        "tasks/s",
        True,
        map_tasks,
        target=TARGET,
        timeout=MAP_TIMEOUT,
    ),
]


def run(systems: Sequence[str], reps: int) -> Report:
    return Report(rows=run_workloads(WORKLOADS, systems, reps))


if __name__ == "__main__":
    main("throughput", run)
