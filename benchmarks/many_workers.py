"""Many workers: 16 and 64 worker processes of one thread on this 2-core machine,
regrow and dask.distributed side by side (Ray is left out: it starts one worker process
per CPU and schedules onto them, so "64 workers" means nothing there).

Oversubscribed on purpose: the scheduler's cost per worker (registrations, heartbeats,
placement over more workers) is what shows. Per size and system, each repetition:

- **ready**: seconds from constructing the LocalCluster until the client saw every
  worker registered (``wait_for_workers(n)``): imports, processes, registrations.
- **throughput**: a ``map`` of ``N_TASKS`` trivial tasks (``pure=False``) and its
  ``gather``, in tasks/s, once the cluster is ready.

Targets (regrow): 64 workers ready in at most 10 s; with 16 workers, at least 10x dask's
task rate with 16.

The core alone, with 1,000 and 10,000 simulated workers, is ``benchmarks.scale``'s.

Run alone: ``python -m benchmarks.many_workers`` (~6 min; ``--reps 1`` ~2 min).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.common import (
    Report,
    Row,
    Target,
    at_most,
    check,
    main,
    times_better,
)
from benchmarks.tasks import inc

SIZES = (16, 64)
N_TASKS = 20_000
READY_TIMEOUT = 300.0
READY_TARGET = 10.0


def _cluster(system: str, n: int) -> Any:
    if system == "regrow":
        import regrow

        return regrow.LocalCluster(n_workers=n, threads_per_worker=1)
    import distributed

    return distributed.LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )


def _client(system: str, cluster: Any) -> Any:
    if system == "regrow":
        import regrow

        return regrow.Client(cluster)
    import distributed

    return distributed.Client(cluster)


def one(system: str, n: int) -> tuple[float, float]:
    """(seconds until ``n`` workers are ready, tasks/s of a map) for one fresh cluster."""
    start = time.perf_counter()
    cluster = _cluster(system, n)
    try:
        client = _client(system, cluster)
        try:
            client.wait_for_workers(n, timeout=READY_TIMEOUT)
            ready = time.perf_counter() - start
            workers = client.scheduler_info()["workers"]
            check(len(workers) == n, f"{system}: {len(workers)} workers, expected {n}")
            client.gather(client.map(inc, range(4 * n), pure=False))  # warm-up, untimed
            t0 = time.perf_counter()
            results = client.gather(client.map(inc, range(N_TASKS), pure=False))
            rate = N_TASKS / (time.perf_counter() - t0)
            check(results == list(range(1, N_TASKS + 1)), f"{system}: wrong map results")
            return ready, rate
        finally:
            client.close()
    finally:
        cluster.close()


def run(systems: Sequence[str], reps: int) -> Report:
    systems = [s for s in systems if s != "ray"]
    rows: list[Row] = []
    for n in SIZES:
        ready_target: Target | None = (
            at_most(READY_TARGET, f"<= {READY_TARGET:g} s") if n == 64 else None
        )
        rate_target = times_better(dask=10) if n == 16 else None
        ready = Row(f"many workers: {n} workers ready", "s", False, target=ready_target)
        rate = Row(
            f"many workers: {n} workers, map of {N_TASKS:,} + gather",
            "tasks/s",
            True,
            target=rate_target,
        )
        for _ in range(reps):
            for system in systems:
                try:
                    seconds, tasks_per_s = one(system, n)
                except Exception as exc:
                    ready.errors[system] = rate.errors[system] = f"{type(exc).__name__}: {exc}"
                    continue
                ready.samples.setdefault(system, []).append(seconds)
                rate.samples.setdefault(system, []).append(tasks_per_s)
                print(
                    f"  {system:7} {n} workers: ready in {seconds:.1f} s, "
                    f"{tasks_per_s:,.0f} tasks/s",
                    flush=True,
                )
        rows += [ready, rate]
    return Report(rows=rows)


if __name__ == "__main__":
    main("many_workers", run)
