"""Every common kind of value, 100 MB, moved across hosts: ``benchmarks.values``'
workloads over the veth pair of ``benchmarks.transfer_hosts``, on regrow and
dask.distributed.

The layout is ``transfer_hosts``': the scheduler, worker A and the client in the root
network namespace ("host A"), worker B in a namespace of its own ("host B"), joined by
a veth pair, each worker with a host name of its own (so nothing goes through shared
memory). Every movement crosses the link:

- **worker to worker**: made on A, taken by a consumer on B;
- **worker to client**: made on B, fetched by the client on A;
- **scatter**: made in the client on A, scattered to B.

Reported in MB/s (100 MB / the time), at least ``values.MIN_REPS`` repetitions. The
link itself carries ~3,000 MB/s over one TCP connection here and ~4,400 over four (the
limits of ``transfer_hosts``): the 5,000 MB/s of one host is out of reach by
construction, so the target here is 2x dask.distributed only.

Needs Linux, root, ``ip`` and ``unshare`` (as ``transfer_hosts``); otherwise its rows
say ``not run`` with the reason.

Run alone: ``python -m benchmarks.values_hosts [--reps N] [--kinds bytes,str]``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks import values
from benchmarks.common import Report, Row, System, main, run_workloads, times_better
from benchmarks.tasks import VALUE_KINDS
from benchmarks.transfer_hosts import CLUSTERS, skip_reason
from regrow.testing import veth_link

WHERE = " across hosts"


def _not_run(report: Report, systems: Sequence[str], why: str) -> Report:
    for row in report.rows:
        for name in systems:
            row.errors[name] = f"not run: {why}"
    return report


def run(systems: Sequence[str], reps: int, kinds: Sequence[str] = VALUE_KINDS) -> Report:
    workloads = values.workloads(kinds, WHERE, remote=1, target=times_better(dask=2.0))
    others = [s for s in systems if s not in CLUSTERS]
    systems = [s for s in systems if s in CLUSTERS]
    only = f"this module starts {' and '.join(CLUSTERS)} only"
    reason = skip_reason()
    if reason is not None:
        print(f"  values_hosts skipped: {reason}", flush=True)
        rows = [Row(w.name, w.unit, w.higher_is_better, target=w.target) for w in workloads]
        return _not_run(_not_run(Report(rows=rows), systems, reason), others, only)
    with (
        tempfile.TemporaryDirectory(prefix="regrow-bench-values-") as tmp,
        veth_link("regrow-vals", "rgv") as link,
    ):

        @contextlib.contextmanager
        def start(name: str) -> Iterator[System]:
            (Path(tmp) / name).mkdir()
            with CLUSTERS[name](link, Path(tmp) / name) as system:
                yield system

        report = Report(rows=run_workloads(workloads, systems, reps, start=start))
    return _not_run(report, others, only)


if __name__ == "__main__":
    rest, chosen = values.kinds_option(sys.argv[1:])
    main("values across hosts", lambda s, r: run(s, r, chosen), rest)
