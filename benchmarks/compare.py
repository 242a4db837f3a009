"""Run every benchmark on regrow, dask.distributed and Ray; print one table.

``python -m benchmarks.compare [--reps N] [--systems regrow,dask,ray]``

Each workload module starts its own clusters (regrow's, dask's, then a local
Ray instance, shut down at the module's end), so the modules do not disturb one
another; within a module the clusters are shared by its workloads.
``journal`` runs on regrow only (a plain and a journaled cluster), and so do
``pipeline`` (neither dask nor Ray has regrow's pipelines) and ``scale`` (the pure
scheduler core simulated, and the scheduler's memory per task): their rows have no
dask or Ray figures. ``transfer_hosts`` (two network namespaces joined by a veth
pair) runs regrow and dask, and needs root; without it its rows say why not.
``dask_collections`` (dask.array and dask.dataframe graphs), ``values`` (11 kinds of
100 MB value in three directions; ``values_hosts``: the same across the veth pair, with
root) and ``many_workers`` (16 and 64 workers) run regrow and dask; their Ray cells say
``not run``. ``wordcount`` runs regrow's pipeline against dask.bag and, where pyspark
and a Java runtime are installed, PySpark's ``local[2]`` (a PySpark column appears).
The table shows regrow's targets and whether they were met.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks import (
    chain,
    dask_collections,
    journal,
    many_workers,
    pipeline,
    recovery,
    scale,
    throughput,
    transfer,
    transfer_hosts,
    tree,
    values,
    values_hosts,
    wordcount,
)
from benchmarks.common import Report, main

MODULES = (
    throughput,
    chain,
    tree,
    transfer,
    values,
    transfer_hosts,
    values_hosts,
    many_workers,
    recovery,
    dask_collections,
    journal,
    pipeline,
    wordcount,
    scale,
)


def run(systems: Sequence[str], reps: int) -> Report:
    report = Report()
    start = time.perf_counter()
    for module in MODULES:
        name = module.__name__.rpartition(".")[2]
        print(f"[{name}]", flush=True)
        report.extend(module.run(systems, reps))
    print(f"all benchmarks took {time.perf_counter() - start:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main("regrow vs dask.distributed vs Ray", run)
