"""dask collections: the same dask.array and dask.dataframe graphs on regrow and dask.

Each repetition builds its collection anew and has the system under test compute it,
``dask.compute(collection, scheduler=client.get)``, with that system's client passed
explicitly (both clients make themselves dask's default scheduler, and both are open
in this process). **Timed: the ``dask.compute`` call**, i.e. dask's optimization and
graph construction (regrow: in the client; dask.distributed: on its scheduler, a
thread of this process), sending the graph, running it, the result back. Every
repetition gets keys of its own (a new fill value, seed or ``nonce`` in the graph's
token), so no system can reuse a result of an earlier repetition, and checks its value:

* **scheduler-bound array**: ``(x + x.T).sum()``, ``x = da.full((7_000, 7_000), v,
  chunks=100)`` with a new ``v`` each repetition: 4,900 chunks, 11,466 graph nodes
  (dask's count, 71 of them aliases or data nodes). Must equal ``2 v 7_000**2``
  exactly. Also as graph nodes per second. Target: >= 3x dask.
* **compute-bound array**: ``(x @ x.T).sum()``, ``x`` 6,000 x 6,000 uniform random
  (``da.random.default_rng(seed)``, a new seed each repetition) in 1,000 x 1,000
  chunks: 216 block products of 2 GFLOP each (tens of ms of BLAS), 410 nodes. Checked
  against ``sum_k (sum_i x_ik)**2``, computed (untimed) with dask's synchronous
  scheduler in this process, to a relative 1e-9. Target: no slower than dask. The
  BLAS runs on one thread in every worker process of both systems (printed with the
  row): dask's nannies set ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
  ``MKL_NUM_THREADS`` to 1 (``distributed.nanny.pre-spawn-environ``) in this process's
  environment when they start, and regrow's workers, started after them, inherit it.
  regrow started alone sets nothing: its workers' BLAS would take 2 threads each here.
* **groupby**: ``df.groupby("name").x.mean(split_out=1)`` over 10,000,000 rows in 40
  partitions, made on the workers by ``dd.from_map(tasks.make_frame, ...)`` from a
  fixed seed (the ``nonce`` argument changes the keys, not the data): ``id`` int64,
  ``name`` (26 names, a string column), ``x`` float64. ``split_out=1``: the
  tree reduction, as dask would pick a shuffle (``split_out`` = npartitions / 15) whose
  method depends on which client set dask's config. Checked against the means computed
  once in this process with pandas, partition by partition, to a relative 1e-9.
  Target: no slower than dask.
* **shuffle**: ``df.shuffle("id")`` of 2,000,000 rows in 32 partitions (ids drawn
  from 1,000,000), then ``map_partitions(tasks.shuffle_stats)``: each partition's
  length, distinct ids and id sum. Checked: 32 partitions, none empty, 2,000,000 rows,
  the id sum, and the distinct ids summed over the partitions equal to the distinct
  ids of the whole frame (which holds only if every id went to one partition). regrow
  runs dask's task-based shuffle (``shuffle_method="tasks"``: dask's p2p needs
  dask.distributed's scheduler). Two rows: dask with its default on a distributed
  cluster, ``"p2p"``, and dask with ``"tasks"``, regrow the same in both. Target: no
  slower than dask, in each.

The data frame rows run at least ``SHORT_REPS`` (5) repetitions: they are short, and
their single repetitions swing by 2x on a busy 2-core machine.

Ray runs no dask collections here (Ray is not installed where this was written, and
its ``ray_dask_get`` would be a third scheduler, not Ray's own API): its cells say
``not run``.

Run alone: ``python -m benchmarks.dask_collections [--reps N] [--systems regrow,dask]``.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import tasks
from benchmarks.common import (
    Report,
    Series,
    System,
    Workload,
    check,
    main,
    run_workloads,
    times_better,
)

SYSTEMS_HERE = ("regrow", "dask")

ARRAY_N = 7_000
ARRAY_CHUNK = 100
MATMUL_N = 6_000
MATMUL_CHUNK = 1_000
GROUPBY_ROWS = 10_000_000
GROUPBY_PARTS = 40
SHUFFLE_ROWS = 2_000_000
SHUFFLE_PARTS = 32
SHUFFLE_IDS = 1_000_000
SEED = 20261122
RTOL = 1e-9
# The data frame rows take 2-5 s a repetition, and on this 2-core machine single
# repetitions of them swing by 2x: at least this many, whatever --reps says.
SHORT_REPS = 5

NO_SLOWER = times_better("no slower than dask (>= 1x)", dask=1)

# New fill values, seeds and nonces: every repetition of every system gets keys of its own.
_fresh = itertools.count(1)


def compute(system: System, collection: Any) -> tuple[Any, float]:
    """(value, seconds): ``collection`` computed by ``system``'s client."""
    import dask

    start = time.perf_counter()
    (value,) = dask.compute(collection, scheduler=system.client.get)
    return value, time.perf_counter() - start


def graph_nodes(collection: Any) -> int:
    """How many nodes dask's graph of ``collection`` has, as ``dask.compute`` builds it."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    return len(FinalizeCompute(collections_to_expr([collection], True)).optimize().__dask_graph__())


# ------------------------------------------------------------------------ arrays
def small_chunks(v: float) -> Any:
    import dask.array as da

    x = da.full((ARRAY_N, ARRAY_N), v, chunks=ARRAY_CHUNK)
    return (x + x.T).sum()


@functools.cache
def small_chunks_nodes() -> int:
    return graph_nodes(small_chunks(0.0))


def scheduler_bound(system: System) -> tuple[float, float]:
    nodes = small_chunks_nodes()  # untimed, on a graph of the same shape
    v = float(next(_fresh))
    total, elapsed = compute(system, small_chunks(v))
    expected = 2 * v * ARRAY_N**2
    check(total == expected, f"(x + x.T).sum(): got {total}, expected {expected}")
    return elapsed, nodes / elapsed


_blas_shown: set[str] = set()


def matmul(system: System) -> float:
    import dask
    import dask.array as da

    if system.name not in _blas_shown:  # the workers' BLAS threads (see the docstring)
        _blas_shown.add(system.name)
        threads = sorted(set(system.client.run(tasks.blas_threads).values()), key=str)
        print(f"  {system.name:<6}  BLAS threads per worker process: {threads}", flush=True)
    seed = SEED + next(_fresh)

    def x() -> Any:
        return da.random.default_rng(seed).random((MATMUL_N, MATMUL_N), chunks=MATMUL_CHUNK)

    # sum(x @ x.T) = sum_k (sum_i x_ik)**2: cheap, and by another route.
    (expected,) = dask.compute((x().sum(axis=0) ** 2).sum(), scheduler="sync")
    a = x()
    total, elapsed = compute(system, (a @ a.T).sum())
    check(
        math.isclose(total, expected, rel_tol=RTOL),
        f"(x @ x.T).sum(): got {total}, expected {expected}",
    )
    return elapsed


# ------------------------------------------------------------------- data frames
def frame(rows: int, parts: int, ids: int) -> Any:
    """The frame: ``parts`` partitions of ``rows / parts`` rows, made on the workers."""
    import dask.dataframe as dd

    per_part = rows // parts
    meta = tasks.make_frame(0, 0, SEED, ids)
    return dd.from_map(
        tasks.make_frame,
        range(parts),
        args=(per_part, SEED, ids, next(_fresh)),
        meta=meta,
        label="make-frame",
        enforce_metadata=False,
    )


@functools.cache
def groupby_expected() -> Any:
    """The means by name, from pandas in this process (one partition at a time)."""
    import pandas as pd

    parts = [
        tasks.make_frame(i, GROUPBY_ROWS // GROUPBY_PARTS, SEED, GROUPBY_ROWS)
        .groupby("name")["x"]
        .agg(["sum", "count"])
        for i in range(GROUPBY_PARTS)
    ]
    total = pd.concat(parts).groupby(level=0).sum()
    return (total["sum"] / total["count"]).sort_index()


def groupby(system: System) -> float:
    import numpy as np

    expected = groupby_expected()
    df = frame(GROUPBY_ROWS, GROUPBY_PARTS, GROUPBY_ROWS)
    means, elapsed = compute(system, df.groupby("name").x.mean(split_out=1))
    means = means.sort_index()
    check(
        list(means.index) == list(expected.index)
        and np.allclose(means.to_numpy(), expected.to_numpy(), rtol=RTOL, atol=0),
        f"groupby mean: got {means.to_dict()}, expected {expected.to_dict()}",
    )
    return elapsed


@functools.cache
def shuffle_expected() -> tuple[int, int]:
    """(distinct ids, sum of the ids) of the whole shuffled frame."""
    import numpy as np

    ids = np.concatenate(
        [
            tasks.make_frame(i, SHUFFLE_ROWS // SHUFFLE_PARTS, SEED, SHUFFLE_IDS)["id"].to_numpy()
            for i in range(SHUFFLE_PARTS)
        ]
    )
    return len(np.unique(ids)), int(ids.sum())


def shuffle(system: System, dask_method: str) -> float:
    distinct, id_sum = shuffle_expected()
    method = dask_method if system.name == "dask" else "tasks"
    df = frame(SHUFFLE_ROWS, SHUFFLE_PARTS, SHUFFLE_IDS)
    stats = df.shuffle("id", shuffle_method=method).map_partitions(
        tasks.shuffle_stats, meta=tasks.shuffle_stats(df._meta)
    )
    got, elapsed = compute(system, stats)
    check(len(got) == SHUFFLE_PARTS, f"shuffle: {len(got)} partitions, expected {SHUFFLE_PARTS}")
    check(bool((got["rows"] > 0).all()), f"shuffle: an empty partition: {list(got['rows'])}")
    check(
        int(got["rows"].sum()) == SHUFFLE_ROWS,
        f"shuffle: {int(got['rows'].sum())} rows, expected {SHUFFLE_ROWS}",
    )
    check(
        int(got["id_sum"].sum()) == id_sum,
        f"shuffle: ids sum to {int(got['id_sum'].sum())}, expected {id_sum}",
    )
    check(
        int(got["ids"].sum()) == distinct,
        f"shuffle: {int(got['ids'].sum())} distinct ids summed over the partitions, "
        f"{distinct} in the frame: some id is in more than one partition",
    )
    return elapsed


WORKLOADS = [
    Workload(
        f"dask.array (x + x.T).sum(), {ARRAY_N:,}^2 in {ARRAY_CHUNK}^2 chunks "
        f"({(ARRAY_N // ARRAY_CHUNK) ** 2:,} chunks)",
        "s",
        False,
        scheduler_bound,
        more=(Series("same, dask graph nodes per second", "nodes/s", True),),
        target=times_better(dask=3),
    ),
    Workload(
        f"dask.array (x @ x.T).sum(), {MATMUL_N:,}^2 random in {MATMUL_CHUNK:,}^2 chunks "
        f"({(MATMUL_N // MATMUL_CHUNK) ** 3} block products)",
        "s",
        False,
        matmul,
        target=NO_SLOWER,
    ),
    Workload(
        f"dask.dataframe groupby('name').x.mean() of {GROUPBY_ROWS:,} rows, "
        f"{GROUPBY_PARTS} partitions made on the workers",
        "s",
        False,
        groupby,
        target=NO_SLOWER,
        warmups=1,  # the workers' first data frame imports pandas, pyarrow, dask.dataframe
        min_reps=SHORT_REPS,
    ),
    Workload(
        f"dask.dataframe shuffle('id') of {SHUFFLE_ROWS:,} rows, {SHUFFLE_PARTS} partitions "
        "+ check per partition; dask: p2p (its default), regrow: tasks",
        "s",
        False,
        functools.partial(shuffle, dask_method="p2p"),
        target=NO_SLOWER,
        min_reps=SHORT_REPS,
    ),
    Workload(
        "same shuffle; dask: tasks, regrow: tasks",
        "s",
        False,
        functools.partial(shuffle, dask_method="tasks"),
        target=NO_SLOWER,
        min_reps=SHORT_REPS,
    ),
]


def run(systems: Sequence[str], reps: int) -> Report:
    # dask's cluster starts first: its nannies set one-thread BLAS in this process's
    # environment, which regrow's workers, started after, then inherit too (see the
    # docstring), so both systems' matrix products run on one thread per worker.
    ordered = [s for s in reversed(SYSTEMS_HERE) if s in systems]
    rows = run_workloads(WORKLOADS, ordered, reps)
    for name in [s for s in systems if s not in SYSTEMS_HERE]:
        for row in rows:
            row.errors[name] = "not run: dask collections run on regrow and dask only here"
    return Report(rows=rows)


if __name__ == "__main__":
    main("dask collections", run)
