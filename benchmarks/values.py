"""Every common kind of value, 100 MB, moved worker to worker, worker to client and
client to worker (scatter), on regrow and dask.distributed, on one host.

Kinds (``benchmarks.tasks.VALUE_KINDS``): ``bytes``, ``bytearray``, ``memoryview``,
``str`` (ASCII), a numpy array, a pandas DataFrame (10 float64 columns) and Series, an
Arrow table, and containers: a list of 10 arrays, a dict of 10 ``bytes``, a tuple of 10
``str``. Each value is made by a task (``make_value``) on worker A, untimed; then:

- **worker to worker**: a consumer pinned on B takes it as its argument and returns
  its size; timed from its submission to its result in the client (B fetches the value
  from A, unpickles it, runs, reports);
- **worker to client**: ``future.result()`` of the value held by A; timed from the call
  to the value in hand;
- **scatter**: ``client.scatter(value, workers=[A])`` of a value made in the client;
  timed until the call returns (both systems return once the worker holds it).

Reported in MB/s (100 MB / the time). Every repetition checks the size that arrived.
Targets (regrow): at least 2x dask and at least 5,000 MB/s, for every kind and
direction. Ray is not measured here: its values go through its shared object store,
which ``benchmarks.transfer`` compares with.

Run alone: ``python -m benchmarks.values [--kinds bytes,str]`` (~8 min for all).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import (
    Report,
    System,
    Target,
    Workload,
    check,
    main,
    run_workloads,
)
from benchmarks.tasks import VALUE_KINDS, consume_value, make_value, value_nbytes

NBYTES = 100_000_000
MB = 1e6
TIMEOUT = 120.0
MIN_REPS = 5
GOAL_MBS = 5_000.0


def _target() -> Target:
    def met(medians: Mapping[str, float], higher_is_better: bool) -> bool:
        return medians["regrow"] >= GOAL_MBS and medians["regrow"] >= 2 * medians["dask"]

    return Target(f">= 2x dask, >= {GOAL_MBS:,.0f}", ("regrow", "dask"), met)


def _made_on(system: System, kind: str, index: int = 0) -> Any:
    """A ``kind`` value of 100 MB made by a task on ``system.workers[index]``."""
    where = system.workers[index]
    future = system.client.submit(make_value, kind, NBYTES, pure=False, workers=[where])
    system.wait([future], timeout=TIMEOUT)
    check(future.status == "finished", f"{kind}: the producer ended as {future.status!r}")
    return future


def worker_to_worker(kind: str) -> Any:
    """Made on A, taken by a consumer on B."""

    def run(system: System) -> float:
        b = system.workers[1]
        value = _made_on(system, kind)
        start = time.perf_counter()
        nbytes, pid = system.client.submit(consume_value, value, pure=False, workers=[b]).result(
            timeout=TIMEOUT
        )
        elapsed = time.perf_counter() - start
        check(nbytes == NBYTES, f"{kind}: B saw {nbytes} bytes, expected {NBYTES}")
        check(pid == system.pids[b], f"{kind}: the consumer ran in pid {pid}, not B's")
        return NBYTES / MB / elapsed

    return run


def worker_to_client(kind: str, index: int = 0) -> Any:
    """Made on ``system.workers[index]``, fetched by the client."""

    def run(system: System) -> float:
        value = _made_on(system, kind, index)
        start = time.perf_counter()
        got = value.result(timeout=TIMEOUT)
        elapsed = time.perf_counter() - start
        check(value_nbytes(got) == NBYTES, f"{kind}: the client got {value_nbytes(got)} bytes")
        del got
        return NBYTES / MB / elapsed

    return run


def scatter(kind: str, index: int = 0) -> Any:
    """Made in the client, scattered to ``system.workers[index]``."""

    def run(system: System) -> float:
        where = system.workers[index]
        value = make_value(kind, NBYTES)
        start = time.perf_counter()
        # In a list: a list, tuple or dict given alone would be scattered item by item.
        [future] = system.client.scatter([value], workers=[where])
        elapsed = time.perf_counter() - start
        holders = list(system.client.who_has([future]).get(future.key, ()))
        check(holders == [where], f"{kind}: scattered to {where}, held by {holders}")
        del future, value
        return NBYTES / MB / elapsed

    return run


def workloads(
    kinds: Sequence[str], where: str = "", remote: int = 0, target: Target | None = None
) -> list[Workload]:
    """Three rows per kind. ``remote``: the worker the client fetches from and scatters
    to (1: B, on the other host in ``values_hosts``); ``where`` ends each row's name."""
    out = []
    for kind in kinds:
        for label, fn in (
            ("worker to worker", worker_to_worker(kind)),
            ("worker to client", worker_to_client(kind, remote)),
            ("scatter, client to worker", scatter(kind, remote)),
        ):
            out.append(
                Workload(
                    f"value {kind}, 100 MB: {label}{where}",
                    "MB/s",
                    True,
                    fn,
                    target=target or _target(),
                    warmups=1,
                    min_reps=MIN_REPS,
                    timeout=TIMEOUT * 2,
                )
            )
    return out


def run(systems: Sequence[str], reps: int, kinds: Sequence[str] = VALUE_KINDS) -> Report:
    systems = [s for s in systems if s != "ray"]
    return Report(rows=run_workloads(workloads(kinds), systems, reps))


def kinds_option(argv: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """``--kinds a,b`` taken out of ``argv`` (the rest goes to the common parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--kinds", default=",".join(VALUE_KINDS))
    known, rest = parser.parse_known_args(argv)
    kinds = tuple(k for k in known.kinds.split(",") if k)
    unknown = [k for k in kinds if k not in VALUE_KINDS]
    if unknown or not kinds:
        parser.error(f"unknown kind(s) {unknown}; choose from {list(VALUE_KINDS)}")
    return rest, kinds


if __name__ == "__main__":
    rest, chosen = kinds_option(sys.argv[1:])
    main("values", lambda s, r: run(s, r, chosen), rest)
