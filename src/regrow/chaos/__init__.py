"""``regrow chaos``: a soak that runs real graphs on a real cluster while it breaks it.

A ``LocalCluster`` of processes (nannies, a scheduler journaled to a temporary file so
that it can be killed and come back) runs a random mix of graphs, several at a time:
maps, reduction trees, scattered data, Disco-style pipelines and, when dask is
installed, dask bags and arrays. Meanwhile faults come one at a time, each after a
random pause: a worker or a nanny SIGKILLed, a worker or a nanny frozen (SIGSTOP) for
1-8 s, the scheduler SIGKILLed, and the network of one worker cut (a worker in a Linux
network namespace, joined by a veth pair). Every result is checked against a serial
oracle computed here; the report says what was wrong, what hung, what erred as regrow
may err under such faults, how long the cluster took to recover from each fault, and
how much memory its processes use (what counts as which: ``regrow.chaos.soak``).

Everything is drawn from RNGs seeded by ``--seed``: which graphs, their data, which
fault, its victim, how long it lasts. Timing is not (the cluster's processes are real),
so a run is repeatable in what it does, not in when.

The package, one module per part, each importing only those below it:
- ``soak``: the run (set up, graphs kept in flight and judged, tear down), ``run_soak``;
- ``faults``: the fault schedule, injecting each fault, waiting for recovery;
- ``cluster``: the cluster under test, its client and every process the soak started;
- ``workloads``: the graph kinds, built on the cluster and computed by serial oracles;
- ``report``: the report, its statistics and its printout;
- ``tasks``: the functions the graphs run on the workers (importable by them);
- ``settings``: ``SoakConfig`` and the names of the graph and fault kinds.

Owns: the public face of the soak (what ``regrow.cli`` and the tests use). Must not:
signal a process it did not start (every victim is a pid of its own cluster, checked to
be a child of a nanny it started), nor hide a wrong result or a hang: finding those is
its purpose.
"""

from regrow.chaos.report import Report, format_report
from regrow.chaos.settings import DASK_KINDS, FAULT_KINDS, GRAPH_KINDS, SoakConfig
from regrow.chaos.soak import run_soak

__all__ = [
    "DASK_KINDS",
    "FAULT_KINDS",
    "GRAPH_KINDS",
    "Report",
    "SoakConfig",
    "format_report",
    "run_soak",
]
