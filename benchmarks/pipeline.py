"""Pipelines: what concurrent stages gain over a barrier on a skewed workload.
regrow only (dask.distributed has no pipelines: its column stays empty).

A 2-stage ``regrow.pipeline`` job (a map and a reduce, as in the word count):

* stage 0 ``skewed`` (``split``): 16 inputs, one task each. A task sleeps 1.5 s if
  its input is one of the 2 slow ones (inputs 0 and 1), 0.05 s otherwise (14 fast
  ones), then writes 100 records spread over 4 labels;
* stage 1 ``work`` (``group_label``: 4 tasks, one per label) sleeps 0.05 s per batch
  it consumes (16 batches per task: one per stage-0 task) and counts the records;
  its ``done`` writes ``((label, input), count)``.

Each repetition runs the job twice on the same cluster, once with stage 1
``concurrent=True`` (the default: a stage-1 task consumes a stage-0 task's output
as soon as it exists) and once with ``concurrent=False`` (a barrier: stage 1
starts when all of stage 0 has finished); concurrent first in even repetitions,
barrier first in odd ones, 0.25 s and a ``gc.collect()`` between runs. **Timed:
from ``run_pipeline`` to ``gather()`` returning**; every record is checked (25
records of each input under each label). Rows: both times and the ratio
barrier / concurrent of each repetition's pair (median of the per-repetition
ratios; above 1: concurrency gained).

Concurrency can only use threads that a barrier would leave idle, so the job
runs on two clusters, one after the other:

* **2 workers x 1 thread** (the layout of the other benchmarks). The job is 3.7 s
  of stage 0 and 3.2 s of stage 1 (4 chains of 0.8 s), 6.9 s of work on 2 threads:
  at least 3.45 s whatever the order, and a barrier is already close to that (stage
  0 ends at about 1.9 s when both workers have had their share, then the 4 chains
  take 2 x 0.8 s). Little to gain: the ratio should be close to 1.
* **2 workers x 4 threads** (the tasks sleep, so 8 threads on 2 cores are fine).
  While the 2 slow tasks run (1.5 s), 6 threads are free: with concurrent stages
  the 4 chains consume the 14 fast tasks' outputs then (0.7 s each) and only the 2
  slow batches remain after 1.5 s (0.1 s); with a barrier the whole 0.8 s of each
  chain comes after 1.5 s. Expected about 1.6 s against 2.3 s plus overheads.

Run alone: ``python -m benchmarks.pipeline``.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks import tasks
from benchmarks.common import (
    N_WORKERS,
    REP_TIMEOUT,
    Report,
    Row,
    System,
    WorkloadTimeout,
    _progress,
    _ready,
    check,
    main,
    time_limit,
)

N_INPUTS = 16
SLOW_INPUTS = (0, 1)
RECORDS = 100
LABELS = 4
SLOW = 1.5
FAST = 0.05
PER_BATCH = 0.05
RESULT_TIMEOUT = 120.0
THREADS = (1, 4)  # per worker, one cluster each


def rows_for(threads: int) -> dict[str, tuple[str, str, bool]]:
    layout = f"{N_WORKERS} workers x {threads} thread{'s' if threads > 1 else ''}"
    return {
        "concurrent": (
            f"pipeline, {layout}: {N_INPUTS} map tasks (2 of {SLOW} s, 14 of {FAST} s) "
            f"-> {LABELS} reduce tasks, reduce concurrent",
            "s",
            False,
        ),
        "barrier": (
            f"pipeline, {layout}: same, reduce a barrier (concurrent=False)",
            "s",
            False,
        ),
        "ratio": (
            f"pipeline, {layout}: ratio barrier / concurrent (>1: concurrency gained)",
            "ratio",
            True,
        ),
    }


@contextlib.contextmanager
def start_regrow(threads: int) -> Iterator[System]:
    """A regrow LocalCluster of ``N_WORKERS`` x ``threads`` and a Client; closed on exit."""
    import regrow

    with (
        regrow.LocalCluster(n_workers=N_WORKERS, threads_per_worker=threads) as cluster,
        regrow.Client(cluster) as client,
    ):
        yield _ready(System(f"regrow {N_WORKERS}x{threads}", client, regrow.wait))


def job(concurrent: bool) -> Any:
    from regrow.pipeline import Pipeline, Stage, group_label, split

    return Pipeline(
        [
            (
                split,
                Stage(
                    "skewed",
                    process=tasks.skewed_emit,
                    params={
                        "slow": SLOW,
                        "fast": FAST,
                        "slow_inputs": SLOW_INPUTS,
                        "labels": LABELS,
                    },
                ),
            ),
            (
                group_label,
                Stage(
                    "work",
                    init=tasks.batch_work_init,
                    process=tasks.batch_work,
                    done=tasks.batch_work_done,
                    concurrent=concurrent,
                    params={"per_batch": PER_BATCH},
                ),
            ),
        ]
    )


EXPECTED = sorted(
    ((label, i), RECORDS // LABELS) for label in range(LABELS) for i in range(N_INPUTS)
)


def run_job(system: System, concurrent: bool) -> tuple[float, str]:
    """Seconds from run_pipeline to gather, and a line on how the stages went."""
    from regrow.pipeline import run_pipeline

    inputs = [(i, RECORDS) for i in range(N_INPUTS)]
    start = time.perf_counter()
    t0 = time.time()
    result = run_pipeline(system.client, job(concurrent), inputs, input_batch=1)
    records = result.gather(timeout=RESULT_TIMEOUT)
    elapsed = time.perf_counter() - start
    check(sorted(records) == EXPECTED, f"wrong records: {sorted(records)[:8]}...")
    skewed, work = result.progress
    check((skewed.done, work.done) == (N_INPUTS, LABELS), f"tasks done: {result.progress}")
    check(skewed.failed == work.failed == 0, f"tasks failed: {result.progress}")
    times = result.task_times()
    stage0_end = max(end for stage, _, _, end in times if stage == "skewed") - t0
    stage1_start = min(start for stage, _, start, _ in times if stage == "work") - t0
    return elapsed, f"map done at {stage0_end:.2f} s, first reduce task at {stage1_start:.2f} s"


def _settle() -> None:
    gc.collect()
    time.sleep(0.25)


def run(systems: Sequence[str], reps: int) -> Report:
    if "regrow" not in systems:
        return Report()  # nothing here runs on dask
    report = Report()
    for threads in THREADS:
        rows = {k: Row(name, unit, higher) for k, (name, unit, higher) in rows_for(threads).items()}
        report.rows.extend(rows.values())
        try:
            with start_regrow(threads) as system:
                _measure(rows, system, reps)
        except Exception as exc:  # the cluster did not start (or stop)
            for row in rows.values():
                row.errors.setdefault("regrow", f"ERROR (cluster): {type(exc).__name__}: {exc}")
        for row in rows.values():
            _progress("regrow", row)
    return report


def _measure(rows: dict[str, Row], system: System, reps: int) -> None:
    for rep in range(reps):
        modes = [True, False] if rep % 2 == 0 else [False, True]
        took: dict[bool, float] = {}
        notes: dict[bool, str] = {}
        try:
            for concurrent in modes:
                _settle()
                what = f"{system.name} / pipeline {'concurrent' if concurrent else 'barrier'}"
                with time_limit(REP_TIMEOUT, f"{what} rep {rep + 1}"):
                    took[concurrent], notes[concurrent] = run_job(system, concurrent)
        except Exception as exc:
            kind = "HANG" if isinstance(exc, WorkloadTimeout) else "ERROR"
            for row in rows.values():
                row.errors["regrow"] = f"{kind}: {type(exc).__name__}: {exc}"
            return
        for key, value in (
            ("concurrent", took[True]),
            ("barrier", took[False]),
            ("ratio", took[False] / took[True]),
        ):
            rows[key].samples.setdefault("regrow", []).append(value)
        print(
            f"    {system.name} rep {rep + 1}: concurrent {took[True]:.2f} s ({notes[True]}); "
            f"barrier {took[False]:.2f} s ({notes[False]})",
            flush=True,
        )


if __name__ == "__main__":
    main("pipeline", run)
