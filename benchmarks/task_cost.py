"""The cost of a trivial task at the limit: CPU per task in each of the three processes
(client, scheduler, workers) of a 100,000-task ``map``, against the floor.

Measured (regrow only): a ``LocalCluster`` of 2 workers of 1 thread; the CPU time
(user + system, from ``psutil``) of the client (this process), the scheduler and both
workers (their nannies do nothing meanwhile) over ``client.map(inc, range(N),
pure=False)`` and its ``gather``, divided by ``N``.

The floor: what any system must do per task, with regrow's own messages, batched as
regrow batches them (1,000 tasks a message): the client packs a submission entry,
the scheduler unpacks it and packs a compute order, the worker unpacks that, runs
``inc``, and packs its result report, the scheduler unpacks that and packs the client's
report, the client unpacks it. That is 4 packs and 4 unpacks of the same shapes regrow
sends, plus the call, timed in one process with no sockets (one ``send``/``recv`` per
1,000 tasks costs ~10 µs, i.e. 0.01 µs per task). Regrow's CPU per task over this floor
says how much bookkeeping (state machines, futures, reference counts) costs beyond
moving the bytes.

Run: ``python -m benchmarks.task_cost`` (~30 s).
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from benchmarks.tasks import inc

N = 100_000
BATCH = 1_000


def _cpu(procs: list[psutil.Process]) -> list[float]:
    out = []
    for p in procs:
        t = p.cpu_times()
        out.append(t.user + t.system)
    return out


def measured() -> dict[str, float]:
    """µs of CPU per task in each process of a real run."""
    import regrow

    with (
        regrow.LocalCluster(n_workers=2, threads_per_worker=1) as cluster,
        regrow.Client(cluster) as client,
    ):
        client.gather(client.map(inc, range(1000), pure=False))  # warm-up
        workers = [psutil.Process(w["pid"]) for w in client.scheduler_info()["workers"].values()]
        assert cluster.scheduler_proc is not None
        procs = [psutil.Process(), psutil.Process(cluster.scheduler_proc.pid), *workers]
        before = _cpu(procs)
        start = time.perf_counter()
        results = client.gather(client.map(inc, range(N), pure=False))
        wall = time.perf_counter() - start
        after = _cpu(procs)
        assert results == list(range(1, N + 1))
    used = [(a - b) / N * 1e6 for a, b in zip(after, before, strict=True)]
    return {
        "client": used[0],
        "scheduler": used[1],
        "workers": sum(used[2:]),
        "wall": wall / N * 1e6,
    }


def floor() -> float:
    """µs per task of the messages alone: 4 packs and 4 unpacks, batched, and the call."""
    from regrow.protocol.messages import (
        ComputeMsg,
        SubmitMsg,
        TaskEntry,
        TaskFinishedMsg,
        pack_messages,
        unpack_messages,
    )

    def hop(msgs: list[Any]) -> list[Any]:
        return [m for m, _ in unpack_messages(pack_messages([(m, ()) for m in msgs]))]

    payload = b"\x80\x05\x95" + b"x" * 37
    start = time.perf_counter()
    for b in range(0, N, BATCH):
        keys = [f"inc-{i}" for i in range(b, b + BATCH)]
        entries = [TaskEntry(key=k, fn_frames=1, frames=2) for k in keys]
        [got] = hop([SubmitMsg(seq=b, tasks=entries, wanted=keys)])
        orders = hop(
            [ComputeMsg(key=t.key, run_id=1, priority=(0, i), who_has={}, fn_frames=1)
             for i, t in enumerate(got.tasks)]
        )  # fmt: skip
        done = hop(
            [TaskFinishedMsg(key=o.key, run_id=1, nbytes=28, type_name="int", inline=payload)
             for o in orders if inc(1)]
        )  # fmt: skip
        hop(done)  # the client's reports
    return (time.perf_counter() - start) / N * 1e6


def main() -> None:
    base = floor()
    got = measured()
    total = got["client"] + got["scheduler"] + got["workers"]
    print(f"trivial tasks, map of {N:,} on 2 workers: CPU per task (µs)")
    print("| process | µs CPU per task |")
    print("|---|---:|")
    for name in ("client", "scheduler", "workers"):
        print(f"| {name} | {got[name]:.1f} |")
    print(f"| all three | {total:.1f} |")
    print(f"| wall clock per task | {got['wall']:.1f} |")
    print(f"| floor: the messages alone, 4 packs + 4 unpacks, batched | {base:.1f} |")
    print(f"regrow's CPU per task is {total / base:.1f}x the floor of its messages")


if __name__ == "__main__":
    main()
