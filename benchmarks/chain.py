"""Latency: a chain of 1,000 tasks, each depending on the previous one.

``x = client.submit(inc, x)`` 1,000 times (default ``pure=True``), then
``x.result()``; reported as milliseconds per task (total / 1,000). Only one task
can run at a time, so this measures the round trip a task's result takes
through the scheduler to start its dependent. Each repetition starts from a
different number so it never reuses the keys of the previous one.

On Ray (``ray_client``): ``ray.remote(inc).remote(ref)`` with the previous
task's ObjectRef as the argument; the owner (this process) starts each task
once the previous one's result exists, so the round trip goes through the
client process rather than a scheduler (``pure`` means nothing to Ray: there
are no keys to reuse).

Target (regrow): at most 1/6 of dask's time per task and 1/2 of Ray's (6x and
2x better).

Run alone: ``python -m benchmarks.chain``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Report, System, Workload, check, main, run_workloads, times_better
from benchmarks.tasks import inc

N_TASKS = 1_000
_starts = itertools.count(1)


def chain(system: System) -> float:
    client = system.client
    first = next(_starts) * 10_000_000
    start = time.perf_counter()
    x: Any = first
    for _ in range(N_TASKS):
        x = client.submit(inc, x)
    result = x.result()
    elapsed = time.perf_counter() - start
    check(result == first + N_TASKS, f"chain: got {result}, expected {first + N_TASKS}")
    return elapsed / N_TASKS * 1000


WORKLOADS = [
    Workload(
        f"latency: chain of {N_TASKS:,} dependent tasks",
        "ms/task",
        False,
        chain,
        target=times_better(dask=6, ray=2),
    )
]


def run(systems: Sequence[str], reps: int) -> Report:
    return Report(rows=run_workloads(WORKLOADS, systems, reps))


if __name__ == "__main__":
    main("chain", run)
