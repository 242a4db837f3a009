"""Every public exception regrow raises.

All of them pickle and unpickle with their message intact, because they cross
process boundaries (worker -> scheduler -> client) as opaque payloads.
"""

from __future__ import annotations

import concurrent.futures


class RegrowError(Exception):
    """Base class of regrow's own errors."""


class ProtocolError(RegrowError):
    """A peer sent bytes or a message that does not follow the wire protocol."""


class AuthenticationError(RegrowError):
    """A peer failed to prove knowledge of the cluster token (or we did)."""


class CommClosedError(RegrowError, ConnectionError):
    """The connection to a peer closed while we still needed it."""


class KilledWorker(RegrowError):
    """A task was running on workers that died too many times; it is treated as poison."""

    def __init__(self, key: str, workers: list[str], reason: str = "") -> None:
        self.key = key
        self.workers = list(workers)
        self.reason = reason
        msg = (
            f"task {key!r} was running on {len(self.workers)} worker(s) that died: "
            f"{', '.join(self.workers)}"
        )
        if reason:
            msg += f" ({reason})"
        super().__init__(msg)

    def __reduce__(self) -> tuple[type, tuple[str, list[str], str]]:
        return (type(self), (self.key, self.workers, self.reason))


class LostDataError(RegrowError):
    """Data that cannot be recomputed (scattered, without a surviving replica) is gone."""


class LendRefusedError(RegrowError):
    """A worker could not read the buffers a client on its host lent it (another host,
    or no permission to read another process's memory): they are sent inline instead."""


class SchedulerLostError(RegrowError):
    """The client lost its scheduler and could not reconnect in time."""


class CancelledError(RegrowError, concurrent.futures.CancelledError):
    """The future was cancelled (by this client, another client, or a restart)."""


class FutureLostError(RegrowError):
    """The future's key is no longer known to the scheduler."""


class InvalidGraphError(RegrowError, ValueError):
    """A submitted graph cannot run as given: its tasks depend on each other in a cycle.

    Raised by the futures of the tasks on the cycle, and of those that need them; the
    scheduler decides it, and the rest of the cluster carries on.
    """


class TooManyTasksError(RegrowError):
    """A submission would have left its client with more keys on the scheduler than
    ``max_client_tasks`` allows: release futures, or wait for results, and submit again."""


class RemoteError(RegrowError):
    """A task raised an exception that could not travel back as itself.

    Raised in its place when the original exception cannot be pickled on the
    worker or unpickled in the client; it names the original type and message.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.type_name, self.message))


__all__ = [
    "AuthenticationError",
    "CancelledError",
    "CommClosedError",
    "FutureLostError",
    "InvalidGraphError",
    "KilledWorker",
    "LostDataError",
    "ProtocolError",
    "RegrowError",
    "RemoteError",
    "SchedulerLostError",
    "TooManyTasksError",
]


def explain(exc: BaseException) -> str:
    """``Type: text``, or the type alone when the exception says nothing: a reason
    never ends in an empty string (``TimeoutError()`` says nothing)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reason(exc: BaseException) -> str:
    """The exception's text, or its type when it has none."""
    return str(exc).strip() or type(exc).__name__
