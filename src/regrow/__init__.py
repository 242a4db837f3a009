"""regrow: a distributed task executor for Python that keeps working when its parts fail."""

from regrow.client.client import Client, get_client
from regrow.client.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Future,
    as_completed,
    wait,
)
from regrow.deploy import LocalCluster
from regrow.errors import (
    AuthenticationError,
    CancelledError,
    CommClosedError,
    FutureLostError,
    KilledWorker,
    LostDataError,
    ProtocolError,
    RegrowError,
    RemoteError,
    SchedulerLostError,
)
from regrow.worker import get_worker

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AuthenticationError",
    "CancelledError",
    "Client",
    "CommClosedError",
    "Future",
    "FutureLostError",
    "KilledWorker",
    "LocalCluster",
    "LostDataError",
    "ProtocolError",
    "RegrowError",
    "RemoteError",
    "SchedulerLostError",
    "as_completed",
    "get_client",
    "get_worker",
    "wait",
]
