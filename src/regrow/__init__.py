"""regrow: a distributed task executor for Python that keeps working when its parts fail.

The public names are loaded on first use (PEP 562), so a scheduler, nanny or worker
process that imports ``regrow.cli`` does not pay for the client, the deploy layer or
the other role's modules: a restarted scheduler is ready sooner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from regrow.errors import (
    AuthenticationError,
    CancelledError,
    CommClosedError,
    FutureLostError,
    InvalidGraphError,
    KilledWorker,
    LostDataError,
    ProtocolError,
    RegrowError,
    RemoteError,
    SchedulerLostError,
    TooManyTasksError,
)

if TYPE_CHECKING:
    from regrow.client.client import Client, get_client, worker_client
    from regrow.client.coordination import Event, Lock, Pub, Queue, Semaphore, Sub, Variable
    from regrow.client.futures import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_EXCEPTION,
        Future,
        as_completed,
        fire_and_forget,
        wait,
    )
    from regrow.client.plugins import NannyPlugin, SchedulerPlugin, WorkerPlugin
    from regrow.deploy import LocalCluster, SLURMCluster, SSHCluster
    from regrow.progress import progress
    from regrow.security import Security
    from regrow.worker import get_worker
    from regrow.worker.execution import rejoin, secede

__version__ = "0.1.0"

_LAZY = {
    "Client": "regrow.client.client",
    "get_client": "regrow.client.client",
    "ALL_COMPLETED": "regrow.client.futures",
    "FIRST_COMPLETED": "regrow.client.futures",
    "FIRST_EXCEPTION": "regrow.client.futures",
    "Future": "regrow.client.futures",
    "as_completed": "regrow.client.futures",
    "fire_and_forget": "regrow.client.futures",
    "wait": "regrow.client.futures",
    "LocalCluster": "regrow.deploy",
    "SLURMCluster": "regrow.deploy",
    "SSHCluster": "regrow.deploy",
    "Security": "regrow.security",
    "get_worker": "regrow.worker",
    "secede": "regrow.worker.execution",
    "rejoin": "regrow.worker.execution",
    "worker_client": "regrow.client.client",
    "WorkerPlugin": "regrow.client.plugins",
    "NannyPlugin": "regrow.client.plugins",
    "SchedulerPlugin": "regrow.client.plugins",
    "Event": "regrow.client.coordination",
    "Lock": "regrow.client.coordination",
    "Pub": "regrow.client.coordination",
    "Queue": "regrow.client.coordination",
    "Semaphore": "regrow.client.coordination",
    "Sub": "regrow.client.coordination",
    "Variable": "regrow.client.coordination",
    "progress": "regrow.progress",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'regrow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AuthenticationError",
    "CancelledError",
    "Client",
    "CommClosedError",
    "Event",
    "Future",
    "FutureLostError",
    "InvalidGraphError",
    "KilledWorker",
    "LocalCluster",
    "Lock",
    "LostDataError",
    "NannyPlugin",
    "ProtocolError",
    "Pub",
    "Queue",
    "RegrowError",
    "RemoteError",
    "SLURMCluster",
    "SSHCluster",
    "SchedulerLostError",
    "SchedulerPlugin",
    "Security",
    "Semaphore",
    "Sub",
    "TooManyTasksError",
    "Variable",
    "WorkerPlugin",
    "as_completed",
    "fire_and_forget",
    "get_client",
    "get_worker",
    "progress",
    "rejoin",
    "secede",
    "wait",
    "worker_client",
]
