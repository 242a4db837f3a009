"""Recovery: what a worker failing in the middle of a run costs.

Both workloads run tasks that sleep 5 ms (``slow_inc``, ``pure=False``, so every
repetition has fresh keys) on the 2 workers x 1 thread, and hit one worker's
*worker process* (not its nanny) once 30% of the futures are done, counted by
done-callbacks; the signal is sent from the benchmark thread. The victim's pid
comes from ``client.run(os.getpid)`` on that worker (dask's ``scheduler_info()``
has no ``pid`` field).

* **recovery**: 2,000 tasks, timed from the first submit until ``gather``
  returned every result. Each repetition does a clean run, then the same with the
  worker process SIGKILLed at 30% done (its nanny starts a new one; the
  scheduler reruns what was lost). Rows: both times, and the ratio killed/clean
  of each repetition's pair (median of the per-repetition ratios). After a
  killed run the benchmark waits, with a deadline, until the cluster has 2
  workers again (the killed pid gone) and warms the new worker up, untimed.
* **sigstop**: 1,000 tasks; the worker process is SIGSTOPped at 30% done (it is
  alive and its connections stay open, but it answers nothing). Timed: from the
  SIGSTOP until every future is done (``wait``), i.e. until the scheduler has
  noticed and the work has finished elsewhere; capped at ``STOP_CAP`` s. The
  worker is SIGCONTed in a ``finally`` whatever happens, then every result is
  gathered and checked and the benchmark waits for 2 responsive workers again.
  regrow removes a worker after 3 s without a heartbeat (``heartbeat_timeout``);
  dask's defaults are not tuned here: its scheduler removes a silent worker after
  ``distributed.scheduler.worker-ttl`` (5 minutes), so it is expected to hit the cap.

On Ray (``ray_client``) the workloads are the same, with what differs:

* Ray's worker processes have no names and there is no ``client.run``: they
  are found by ``N_WORKERS`` overlapping tasks that each return ``os.getpid()``
  (``RayClient.worker_pids``), and the victim is the first in pid order. Both
  run tasks throughout (2,000 tasks, 2 single-task workers).
* There is no nanny: when a worker process dies, the raylet starts a new one
  when a task needs it, and the task's owner (this process) resubmits the task
  that was running (Ray's default ``max_retries`` = 3, left as it is). Small
  results live in the owner's memory, so no finished result is lost.
* ``_restore`` waits until ``worker_pids`` names 2 processes again, none the
  killed one; the warm-up tasks are not pinned (Ray cannot pin).
* Ray has no heartbeat on a worker process of a live node: a SIGSTOPped worker
  keeps its sockets open and is not detected, so Ray is expected to hit the
  sigstop cap as dask does.

Target (regrow): a killed/clean ratio no worse than the best (lowest) of dask's
and Ray's in the same run.

Run alone: ``python -m benchmarks.recovery``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks import tasks
from benchmarks.common import (
    N_WORKERS,
    Report,
    Series,
    System,
    Workload,
    check,
    main,
    no_worse_than_best_peer,
    run_workloads,
)
from benchmarks.tasks import slow_inc

TASK_SECONDS = 0.005
N_RECOVERY = 2_000
N_STOP = 1_000
AT_FRACTION = 0.3
# The sigstop wait is cut here. regrow needs its 3 s heartbeat timeout plus the
# remaining work (~5 s); dask's worker TTL is 300 s: any cap in between gives the
# same answer, and a capped system's remaining repetitions are skipped.
STOP_CAP = 30.0
# Deadlines: the 30% mark to be reached, the cluster to be back to 2 workers,
# the results to arrive after SIGCONT.
MARK_TIMEOUT = 120.0
RESTORE_TIMEOUT = 60.0
RESULT_TIMEOUT = 120.0


class DoneCounter:
    """A done-callback counting finished futures; ``reached`` is set at ``threshold``."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.count = 0
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, future: Any) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.threshold:
                self.reached.set()


def _submit(system: System, n: int, counter: DoneCounter) -> list[Any]:
    client = system.client
    futures = []
    for i in range(n):
        future = client.submit(slow_inc, i, TASK_SECONDS, pure=False)
        future.add_done_callback(counter)
        futures.append(future)
    return futures


def _check_results(futures: list[Any], results: list[int], what: str) -> None:
    check(len(results) == len(futures), f"{what}: {len(results)} results for {len(futures)}")
    wrong = [i for i, r in enumerate(results) if r != i + 1]
    check(not wrong, f"{what}: {len(wrong)} wrong results, first at {wrong[:3]}")


def _victim_pid(system: System) -> int:
    """The pid of the worker process to hit: the first worker in address order (Ray: pid order)."""
    pid = system.pids[system.workers[0]]
    check(pid not in (os.getpid(), os.getppid()), f"victim pid {pid} is this process")
    return pid


def _await_mark(counter: DoneCounter, n: int, what: str) -> int:
    """Block until 30% are done; the count at that moment (callbacks keep counting)."""
    check(counter.reached.wait(MARK_TIMEOUT), f"{what}: 30% mark not reached in {MARK_TIMEOUT} s")
    done = counter.count
    check(done < n, f"{what}: all {n} futures were done before the signal")
    return done


def _workers(system: System) -> tuple[list[str], dict[str, int]]:
    """(the workers the cluster lists, {worker: pid} of those that answered)."""
    client = system.client
    if system.name == "ray":  # no worker list: the processes that run tasks are the workers
        with contextlib.suppress(TimeoutError):
            pids = client.worker_pids(N_WORKERS, timeout=10.0)
            return list(pids), pids
        return [], {}
    seen = sorted(client.scheduler_info()["workers"])
    pids: dict[str, int] = {}
    if len(seen) == N_WORKERS:
        with contextlib.suppress(Exception):  # a worker may be going away meanwhile
            pids = dict(client.run(tasks.pid))
    return seen, pids


def _restore(system: System, gone_pid: int | None = None) -> float:
    """Wait until the cluster has ``N_WORKERS`` responsive workers (none with ``gone_pid``).

    Polls ``scheduler_info`` (Ray: ``worker_pids``) with a deadline, then warms
    every worker up (untimed) and refreshes ``system.workers`` /
    ``system.pids``. Returns the seconds it waited.
    """
    client = system.client
    start = time.monotonic()
    deadline = start + RESTORE_TIMEOUT
    pids: dict[str, int] = {}
    seen: Any = None
    while True:
        seen, pids = _workers(system)
        if (
            len(seen) == N_WORKERS
            and sorted(pids) == sorted(seen)
            and gone_pid not in pids.values()
        ):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"cluster not back to {N_WORKERS} workers within {RESTORE_TIMEOUT} s: "
                f"scheduler lists {seen}, pids {pids}"
            )
        time.sleep(0.1)
    waited = time.monotonic() - start
    system.workers, system.pids = seen, pids
    if system.name == "ray":  # Ray cannot pin a task to a worker process
        warm = client.map(tasks.inc, range(2 * N_WORKERS), pure=False)
    else:
        warm = [
            client.submit(tasks.inc, i, pure=False, workers=[w])
            for i, w in enumerate(system.workers * 2)
        ]
    check(client.gather(warm) == [i + 1 for i in range(len(warm))], "warm-up: wrong results")
    return waited


# ---------------------------------------------------------------- recovery
def _recovery_run(system: System, kill: bool) -> tuple[float, str]:
    """Seconds from the first submit to gather; with ``kill``, SIGKILL a worker at 30%."""
    counter = DoneCounter(math.ceil(N_RECOVERY * AT_FRACTION))
    pid = _victim_pid(system)
    start = time.perf_counter()
    futures = _submit(system, N_RECOVERY, counter)
    note = ""
    if kill:
        done = _await_mark(counter, N_RECOVERY, "recovery")
        os.kill(pid, signal.SIGKILL)
        note = f"SIGKILL at {done}/{N_RECOVERY} done, {time.perf_counter() - start:.2f} s in"
    results = system.client.gather(futures)
    elapsed = time.perf_counter() - start
    _check_results(futures, results, "killed run" if kill else "clean run")
    del futures, results
    if kill:
        waited = _restore(system, gone_pid=pid)
        note += f"; {N_WORKERS} workers again {waited:.2f} s after gather"
    return elapsed, note


def recovery(system: System) -> tuple[float, float, float]:
    _restore(system)  # 2 workers, current pids (quick when nothing happened)
    clean, _ = _recovery_run(system, kill=False)
    time.sleep(0.25)  # as between repetitions: let the cluster free the clean run's keys
    killed, note = _recovery_run(system, kill=True)
    print(f"    {system.name:<6}  clean {clean:.2f} s, killed {killed:.2f} s ({note})", flush=True)
    return clean, killed, killed / clean


# ----------------------------------------------------------------- sigstop
@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """SIGSTOP ``pid`` for the block; SIGCONT it on the way out, whatever happens."""
    try:
        os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def sigstop(system: System) -> float:
    _restore(system)
    counter = DoneCounter(math.ceil(N_STOP * AT_FRACTION))
    pid = _victim_pid(system)
    futures = _submit(system, N_STOP, counter)
    done = _await_mark(counter, N_STOP, "sigstop")
    left = 0
    with _stopped(pid):
        start = time.perf_counter()
        try:
            system.wait(futures, timeout=STOP_CAP)
        except TimeoutError:
            elapsed = math.inf
            left = sum(not f.done() for f in futures)
        else:
            elapsed = time.perf_counter() - start
    resumed = time.perf_counter()
    system.wait(futures, timeout=RESULT_TIMEOUT)
    after_cont = time.perf_counter() - resumed
    _check_results(futures, system.client.gather(futures), "sigstop")
    del futures
    waited = _restore(system)
    shown = f"{elapsed:.2f} s"
    if math.isinf(elapsed):
        shown = f"> {STOP_CAP:.0f} s ({left} of {N_STOP} futures not done at the cap)"
    print(
        f"    {system.name:<6}  SIGSTOP at {done}/{N_STOP} done: {shown}; all done "
        f"{after_cont:.2f} s after SIGCONT; {N_WORKERS} workers again {waited:.2f} s later",
        flush=True,
    )
    return elapsed


WORKLOADS = [
    Workload(
        f"recovery: {N_RECOVERY:,} x 5 ms tasks, clean run (submit + gather)",
        "s",
        False,
        recovery,
        more=(
            Series("recovery: same, a worker process SIGKILLed at 30% done", "s", False),
            Series(
                "recovery: ratio killed run / clean run",
                "ratio",
                False,
                target=no_worse_than_best_peer(),
            ),
        ),
    ),
    Workload(
        f"sigstop: {N_STOP:,} x 5 ms tasks, a worker SIGSTOPped at 30% done: "
        "SIGSTOP -> all futures done",
        "s",
        False,
        sigstop,
        cap=STOP_CAP,
        cap_note="not detected",
    ),
]


def run(systems: Sequence[str], reps: int) -> Report:
    return Report(rows=run_workloads(WORKLOADS, systems, reps))


if __name__ == "__main__":
    main("recovery", run)
