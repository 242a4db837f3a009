"""Scale by simulation: the pure scheduler core with 1,000 simulated workers.

No sockets and no processes: the benchmark plays the workers itself, feeding the
core ``TaskFinished`` for every ``Compute`` it emits. Three figures:

- cost per task (µs) from 10,000 to 1,000,000 independent tasks, submitted in
  batches of 1,000, each run to completion and released: it must stay flat;
- cost per task of 100,000 such tasks with 10, 1,000 and 10,000 simulated workers:
  it must stay flat as workers grow too;
- scheduler memory per task: resident bytes of a fresh process holding a
  submitted, not yet run, 1,000,000-task graph (a chain of pairs: each task depends
  on the one before), with payloads of the size regrow's client sends, divided by
  the number of tasks; and the same after the graph completed and was released.

And one figure from a real cluster (processes, sockets): the resident memory of a
``regrow scheduler`` process while a client's ``map`` of 1,000,000 trivial tasks is
submitted and runs on 2 workers (its peak, and once all are done with the results
still held), above what it used before, divided by the number of tasks.

Run: ``python -m benchmarks.scale [--max-tasks N] [--no-cluster]``.
"""

from __future__ import annotations

import argparse
import gc
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from benchmarks.common import Report, Row, _progress, at_most
from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.scheduler_state import SchedulerState
from regrow.testing import child_env, regrow_cli, stop, wait_ready

# What a trivial task's payload looks like on the wire: the pickled function (shared
# by all tasks of a map, as the client shares it) and ~40 bytes of pickled arguments.
FN = b"\x80\x05\x95" + b"f" * 57


def _payload(i: int) -> tuple[int, list[bytes]]:
    return (1, [FN, b"\x80\x05\x95" + str(i).encode().ljust(37, b" ")])


def cost_per_task(n: int, n_workers: int = 1000, batch: int = 1000) -> float:
    """Microseconds of core time per task, for ``n`` independent tasks."""
    s = SchedulerState()
    for i in range(n_workers):
        s.handle(ev.WorkerAdded(worker=f"w{i}", nthreads=1))
    gc.collect()
    start = time.perf_counter()
    for b in range(0, n, batch):
        specs = tuple(
            ev.TaskSpec(key=f"t{i}", run_spec=_payload(i)) for i in range(b, min(n, b + batch))
        )
        out = s.handle(
            ev.TasksSubmitted(client="c", tasks=specs, wanted=tuple(x.key for x in specs))
        )
        while True:
            computes = [c for c in out if isinstance(c, cmd.Compute)]
            if not computes:
                break
            out = []
            for c in computes:
                out += s.handle(
                    ev.TaskFinished(worker=c.worker, key=c.key, run_id=c.run_id, nbytes=28)
                )
        s.handle(ev.KeysReleased(client="c", keys=tuple(x.key for x in specs)))
    elapsed = time.perf_counter() - start
    assert not s.tasks, "every task should be forgotten"
    return elapsed / n * 1e6


def _memory_child(n: int) -> None:
    """Run in a fresh process: print bytes/task with the graph held, then after it ran."""
    proc = psutil.Process()
    s = SchedulerState()
    s.handle(ev.WorkerAdded(worker="w0", nthreads=1), ev.WorkerAdded(worker="w1", nthreads=1))
    gc.collect()
    base = proc.memory_info().rss
    batch = 10_000
    for b in range(0, n, batch):
        specs = tuple(
            ev.TaskSpec(
                key=f"inc-{i:032x}",
                dependencies=(f"inc-{i - 1:032x}",) if i % 2 else (),
                run_spec=_payload(i),
            )
            for i in range(b, min(n, b + batch))
        )
        s.handle(ev.TasksSubmitted(client="c", tasks=specs, wanted=tuple(x.key for x in specs)))
    gc.collect()
    held = proc.memory_info().rss - base
    # Run everything, then release it all.
    pending = [c for c in s.handle(ev.Ticked()) if isinstance(c, cmd.Compute)]
    for ws in s.workers.values():
        pending += [
            cmd.Compute(
                worker=ws.address,
                key=t.key,
                run_id=t.run_id,
                run_spec=None,
                who_has={},
                nbytes={},
                priority=(0, 0),
            )
            for t in ws.processing
        ]
    while pending:
        c = pending.pop()
        out = s.handle(ev.TaskFinished(worker=c.worker, key=c.key, run_id=c.run_id, nbytes=28))
        pending += [x for x in out if isinstance(x, cmd.Compute)]
    s.handle(ev.KeysReleased(client="c", keys=tuple(s.tasks)))
    gc.collect()
    after = proc.memory_info().rss - base
    print(f"{held / n:.0f} {after / n:.0f} {len(s.tasks)}")


def memory_per_task(n: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--memory-child", str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    ).stdout.split()
    return float(out[0]), float(out[1])


def cluster_scheduler_memory(n: int) -> tuple[float, float, float]:
    """(peak, all done) bytes per task of a real scheduler process running a map of ``n``;
    and the seconds the map took."""
    import regrow
    from benchmarks.tasks import inc

    token = secrets.token_hex(16)
    env = child_env(token)
    with tempfile.TemporaryDirectory() as tmp:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ready = Path(tmp) / "scheduler"
            procs.append(regrow_cli(["scheduler", "--port", "0"], env, ready))
            address = wait_ready(procs[0], ready)
            for i in range(2):
                ready = Path(tmp) / f"worker-{i}"
                procs.append(regrow_cli(["worker", address, "--no-nanny"], env, ready))
                wait_ready(procs[-1], ready)
            sched = psutil.Process(procs[0].pid)
            with regrow.Client(address, token=token) as client:
                client.wait_for_workers(2, timeout=60)
                client.gather(client.map(inc, range(100), pure=False))  # warm up
                base = sched.memory_info().rss
                peak = base
                done = threading.Event()

                def sample() -> None:
                    nonlocal peak
                    while not done.wait(0.05):
                        peak = max(peak, sched.memory_info().rss)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                start = time.perf_counter()
                futures = client.map(inc, range(n), pure=False)
                regrow.wait(futures, timeout=3600)
                elapsed = time.perf_counter() - start
                held = sched.memory_info().rss
                done.set()
                sampler.join()
                assert all(f.status == "finished" for f in futures)
                del futures
        finally:
            stop(procs)
    return (max(peak, held) - base) / n, (held - base) / n, elapsed


SIM_SIZES = (10_000, 100_000, 1_000_000)
WORKER_COUNTS = (10, 1_000, 10_000)
WORKERS_TASKS = 100_000
MEMORY_TASKS = 1_000_000


def run(systems: Sequence[str], reps: int) -> Report:
    """The rows for ``benchmarks.compare`` (regrow alone: dask and Ray have no pure core).

    Each simulation size ``reps`` times; the memory figures once each (a 1,000,000-task
    graph is minutes of work, and memory does not vary like time does).
    """
    if "regrow" not in systems:
        return Report()
    sim = {n: Row(f"scale (core, 1,000 simulated workers): {n:,} tasks", "µs/task", False)
           for n in SIM_SIZES}  # fmt: skip
    flat = Row(
        f"scale: cost per task at {SIM_SIZES[-1]:,} / at {SIM_SIZES[0]:,} tasks",
        "ratio",
        False,
        target=at_most(1.5, "<= 1.5 (flat)"),
    )
    core = Row(
        f"scheduler memory (core): {MEMORY_TASKS:,}-task graph held", "bytes/task", False,
        target=at_most(1024, "<= 1 KB"),
    )  # fmt: skip
    real = Row(
        f"scheduler memory (regrow scheduler process): map of {MEMORY_TASKS:,}, peak",
        "bytes/task",
        False,
        target=at_most(1024, "<= 1 KB"),
    )
    by_workers = {
        w: Row(f"scale (core, {w:,} simulated workers): {WORKERS_TASKS:,} tasks", "µs/task", False)
        for w in WORKER_COUNTS
    }
    flat_workers = Row(
        f"scale: cost per task with {WORKER_COUNTS[-1]:,} / with {WORKER_COUNTS[0]:,} workers",
        "ratio",
        False,
        target=at_most(1.5, "<= 1.5 (flat)"),
    )
    rows = [*sim.values(), flat, *by_workers.values(), flat_workers, core, real]
    for _ in range(reps):
        for n in SIM_SIZES:
            sim[n].samples.setdefault("regrow", []).append(cost_per_task(n))
        for w in WORKER_COUNTS:
            by_workers[w].samples.setdefault("regrow", []).append(
                cost_per_task(WORKERS_TASKS, n_workers=w)
            )
    small, large = sim[SIM_SIZES[0]].median("regrow"), sim[SIM_SIZES[-1]].median("regrow")
    if small and large:
        flat.samples["regrow"] = [large / small]
    few = by_workers[WORKER_COUNTS[0]].median("regrow")
    many = by_workers[WORKER_COUNTS[-1]].median("regrow")
    if few and many:
        flat_workers.samples["regrow"] = [many / few]
    try:
        core.samples["regrow"] = [memory_per_task(MEMORY_TASKS)[0]]
    except Exception as exc:
        core.errors["regrow"] = f"ERROR: {type(exc).__name__}: {exc}"
    try:
        real.samples["regrow"] = [cluster_scheduler_memory(MEMORY_TASKS)[0]]
    except Exception as exc:
        real.errors["regrow"] = f"ERROR: {type(exc).__name__}: {exc}"
    for row in rows:
        _progress("regrow", row)
    return Report(rows=rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tasks", type=int, default=1_000_000)
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-cluster", action="store_true", help="skip the real scheduler's memory (~4 min)"
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    sizes = [n for n in (10_000, 30_000, 100_000, 300_000, 1_000_000) if n <= args.max_tasks]
    print("scheduler core, 1,000 simulated workers, independent tasks (submit, run, release)")
    print("| tasks | µs per task |")
    print("|---:|---:|")
    for n in sizes:
        print(f"| {n:,} | {cost_per_task(n):.1f} |", flush=True)
    n = args.max_tasks
    held, after = memory_per_task(n)
    print()
    print(f"scheduler memory, {n:,}-task graph (pairs of dependent tasks), 2 workers")
    print("| while held (bytes/task) | after it ran and was released (bytes/task) | target |")
    print("|---:|---:|---:|")
    print(f"| {held:,.0f} | {after:,.0f} | <= 1,024 |")
    if args.no_cluster:
        return
    peak, done, elapsed = cluster_scheduler_memory(n)
    print()
    print(f"real `regrow scheduler` process, map of {n:,} trivial tasks on 2 workers")
    print("| peak (bytes/task) | all done, results held (bytes/task) | map took | target |")
    print("|---:|---:|---:|---:|")
    print(f"| {peak:,.0f} | {done:,.0f} | {elapsed:.0f} s | <= 1,024 |")


if __name__ == "__main__":
    main()
