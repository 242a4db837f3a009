"""Run every benchmark on regrow and on dask.distributed; print one table.

``python -m benchmarks.compare [--reps N] [--systems regrow,dask]``

Each workload module starts its own pair of clusters (regrow's, then dask's),
so the modules do not disturb one another; within a module the clusters are
shared by its workloads. ``journal`` runs on regrow only (a plain and a
journaled cluster), and so does ``pipeline`` (dask has no pipelines): their rows
have no dask figures.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from benchmarks import chain, journal, pipeline, recovery, throughput, transfer, tree
from benchmarks.common import Report, main

MODULES = (throughput, chain, tree, transfer, recovery, journal, pipeline)


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
    main("regrow vs dask.distributed", run)
