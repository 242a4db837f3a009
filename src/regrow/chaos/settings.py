"""What a chaos soak is asked to do: its settings and the kinds of graphs and faults.

Owns: ``SoakConfig`` (the options of ``regrow chaos``) and the names of the graph kinds
and fault kinds the soak knows, in the order the report lists them.

Must not: do anything: no I/O, no imports of regrow; the modules that run the soak read
these.
"""

from __future__ import annotations

from dataclasses import dataclass

GRAPH_KINDS = ("map", "tree", "scatter", "pipeline", "dask-bag", "dask-array")
DASK_KINDS = ("dask-bag", "dask-array")
FAULT_KINDS = (
    "kill-worker",
    "kill-nanny",
    "stop-worker",
    "stop-nanny",
    "kill-scheduler",
    "cut-network",
)


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 60.0
    seed: int = 0
    workers: int = 3
    graph_timeout: float = 120.0
    netns: bool = True
    scheduler_kill: bool = True
    in_flight: int = 4
    heartbeat_timeout: float = 3.0
    allowed_failures: int = 10
    # A fault the cluster has not recovered from within this many seconds is reported.
    recovery_timeout: float = 60.0
    json_path: str | None = None
    log_level: str = "ERROR"
