"""The scheduler's journal: what it costs while all goes well, and how soon work
comes back after the scheduler process is SIGKILLed. regrow only (dask.distributed's
scheduler keeps no journal: its column stays empty).

Two regrow clusters of the usual layout are up for the whole module: a plain one,
and one with ``LocalCluster(journal=PATH)`` (an SQLite file in a temporary
directory, written every ``journal_interval`` = 20 ms by default).

* **journal cost**: 10,000 x ``client.submit(inc, i, pure=False)`` in a Python loop,
  then ``client.gather``, timed from the first submit until gather returned (as in
  ``throughput.py``), on each cluster in the same repetition (plain first in even
  repetitions, journaled first in odd ones). Rows: both rates, and the ratio
  journaled / plain of each repetition's pair (median of the per-repetition
  ratios; 0.85 would mean the journal costs 15% of the throughput).
* **scheduler SIGKILL -> first result**: on the journaled cluster, 8 tasks
  ``gated_inc(i, gate)`` are submitted (``pure=False``); they block until a gate
  file exists. Once the scheduler reports all 8 as processing (2 running, one per
  worker thread, the others queued; so all are in the journal), the clock starts
  and ``cluster.restart_scheduler_process()`` sends SIGKILL to the scheduler
  process and returns when the watcher's new scheduler process (same port, same
  journal) has written its ready file. Then the gate is opened. **Timed: from just
  before the SIGKILL to the first done-callback of the 8 futures** in the client,
  which did nothing meanwhile: the new process's start and journal load, the
  workers and the client reconnecting (each with its own backoff), the running
  tasks' results (finished on their workers while no scheduler was there) adopted
  and reported. A second row gives the part until the new scheduler was ready
  (``restart_scheduler_process`` returning). Each repetition then gathers and
  checks all 8 results and waits (with a deadline) until the cluster has its 2
  workers again.

Run alone: ``python -m benchmarks.journal``.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks.common import (
    N_WORKERS,
    REP_TIMEOUT,
    THREADS_PER_WORKER,
    Report,
    Row,
    System,
    WorkloadTimeout,
    _progress,
    _ready,
    at_least,
    check,
    main,
    time_limit,
)
from benchmarks.tasks import gated_inc, inc

N_TASKS = 10_000
N_PENDING = 8
# Deadlines: the 8 tasks to be processing, their results after the restart, the
# cluster to be back to 2 workers.
PROCESSING_TIMEOUT = 60.0
RESULT_TIMEOUT = 120.0
RESTORE_TIMEOUT = 60.0

PLAIN = "regrow"
JOURNALED = "regrow + journal"

ROWS = {
    "plain": (f"journal: {N_TASKS:,} x submit() + gather, no journal", "tasks/s", True),
    "journaled": (f"journal: {N_TASKS:,} x submit() + gather, with journal", "tasks/s", True),
    "ratio": ("journal: ratio with / without journal (1 = free)", "ratio", True),
    "first": (
        f"journal: scheduler SIGKILL -> first of {N_PENDING} pending futures done",
        "s",
        False,
    ),
    "ready": ("journal: scheduler SIGKILL -> new scheduler process ready", "s", False),
}


@contextlib.contextmanager
def start_regrow(journal: str | None) -> Iterator[System]:
    """A regrow LocalCluster (with ``journal=`` if given) and a Client; closed on exit."""
    import regrow

    with (
        regrow.LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=THREADS_PER_WORKER,
            journal=journal,
            log_level="ERROR",  # else every kill prints each process's reconnect warnings
        ) as cluster,
        regrow.Client(cluster) as client,
    ):
        system = _ready(System(JOURNALED if journal else PLAIN, client, regrow.wait))
        system.cluster = cluster  # type: ignore[attr-defined]
        yield system


def submit_loop(system: System) -> float:
    client = system.client
    start = time.perf_counter()
    futures = [client.submit(inc, i, pure=False) for i in range(N_TASKS)]
    results = client.gather(futures)
    elapsed = time.perf_counter() - start
    check(results == list(range(1, N_TASKS + 1)), f"{system.name}: wrong results")
    return N_TASKS / elapsed


class FirstDone:
    """A done-callback noting when the first future was done (perf_counter)."""

    def __init__(self) -> None:
        self.at = 0.0
        self.event = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, future: Any) -> None:
        now = time.perf_counter()
        with self._lock:
            if not self.event.is_set():
                self.at = now
                self.event.set()


def _wait_processing(system: System, n: int) -> None:
    deadline = time.monotonic() + PROCESSING_TIMEOUT
    while system.client.scheduler_info()["tasks"].get("processing", 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} tasks not processing within {PROCESSING_TIMEOUT} s")
        time.sleep(0.01)


def _restore(system: System) -> None:
    """Wait until the cluster has its workers again, then warm them up (untimed)."""
    client = system.client
    deadline = time.monotonic() + RESTORE_TIMEOUT
    while len(client.scheduler_info()["workers"]) < N_WORKERS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not back to {N_WORKERS} workers within {RESTORE_TIMEOUT} s")
        time.sleep(0.05)
    warm = [client.submit(inc, i, pure=False) for i in range(4 * N_WORKERS)]
    check(client.gather(warm) == list(range(1, len(warm) + 1)), "warm-up: wrong results")


def scheduler_kill(system: System, rep: int, tmp: str) -> tuple[float, float]:
    """(SIGKILL -> first future done, SIGKILL -> new scheduler ready), in seconds."""
    cluster = system.cluster  # type: ignore[attr-defined]
    client = system.client
    gate = os.path.join(tmp, f"gate-{rep}")
    first = FirstDone()
    futures = [client.submit(gated_inc, i, gate, pure=False) for i in range(N_PENDING)]
    for future in futures:
        future.add_done_callback(first)
    _wait_processing(system, N_PENDING)
    check(not any(f.done() for f in futures), "a gated future was done before the kill")
    old = cluster.scheduler_proc.pid
    start = time.perf_counter()
    new = cluster.restart_scheduler_process()
    ready = time.perf_counter() - start
    with open(gate, "w"):
        pass
    check(first.event.wait(RESULT_TIMEOUT), f"no future done within {RESULT_TIMEOUT} s")
    elapsed = first.at - start
    results = client.gather(futures, timeout=RESULT_TIMEOUT)
    check(results == list(range(1, N_PENDING + 1)), f"wrong results after the kill: {results}")
    check(new != old, "the scheduler process was not replaced")
    del futures, results
    _restore(system)
    print(
        f"    {system.name}  rep {rep + 1}: SIGKILL -> new scheduler ready {ready:.3f} s, "
        f"-> first future done {elapsed:.3f} s",
        flush=True,
    )
    return elapsed, ready


def _settle() -> None:
    gc.collect()
    time.sleep(0.25)


def run(systems: Sequence[str], reps: int) -> Report:
    if "regrow" not in systems:
        return Report()  # nothing here runs on dask
    rows = {k: Row(name, unit, higher) for k, (name, unit, higher) in ROWS.items()}
    # The journal issue's target: it costs at most 15% of throughput.
    rows["ratio"].target = at_least(0.85, ">= 0.85 (costs <= 15%)")
    report = Report(rows=list(rows.values()))
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="regrow-bench-journal-"))
        try:
            plain = stack.enter_context(start_regrow(None))
            journaled = stack.enter_context(start_regrow(os.path.join(tmp, "j.db")))
        except Exception as exc:
            for row in rows.values():
                row.errors["regrow"] = f"ERROR (cluster): {type(exc).__name__}: {exc}"
            return report
        _measure(rows, plain, journaled, reps, tmp)
    for row in rows.values():
        _progress("regrow", row)
    return report


def _measure(rows: dict[str, Row], plain: System, journaled: System, reps: int, tmp: str) -> None:
    def sample(key: str, value: float) -> None:
        rows[key].samples.setdefault("regrow", []).append(value)

    def fail(keys: Sequence[str], exc: Exception) -> None:
        kind = "HANG" if isinstance(exc, WorkloadTimeout) else "ERROR"
        for key in keys:
            rows[key].errors["regrow"] = f"{kind}: {type(exc).__name__}: {exc}"

    cost = ("plain", "journaled", "ratio")
    for rep in range(reps):
        order = [plain, journaled] if rep % 2 == 0 else [journaled, plain]
        rates: dict[str, float] = {}
        try:
            for system in order:
                _settle()
                with time_limit(REP_TIMEOUT, f"{system.name} / submit loop rep {rep + 1}"):
                    rates[system.name] = submit_loop(system)
        except Exception as exc:
            fail(cost, exc)
            break
        sample("plain", rates[PLAIN])
        sample("journaled", rates[JOURNALED])
        sample("ratio", rates[JOURNALED] / rates[PLAIN])
        print(
            f"    rep {rep + 1}: {rates[PLAIN]:,.0f} tasks/s without, "
            f"{rates[JOURNALED]:,.0f} with the journal",
            flush=True,
        )
    for rep in range(reps):
        _settle()
        try:
            with time_limit(REP_TIMEOUT, f"{journaled.name} / scheduler kill rep {rep + 1}"):
                first, ready = scheduler_kill(journaled, rep, tmp)
        except Exception as exc:
            fail(("first", "ready"), exc)
            break
        sample("first", first)
        sample("ready", ready)


if __name__ == "__main__":
    main("journal", run)
