"""Helpers for the chaos tests: worker processes as the scheduler reports them, signals
aimed only at PIDs the scheduler gave us, and waiting with deadlines."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Collection
from typing import Any

import psutil

from regrow import Client
from regrow.testing import MakeCluster as MakeCluster

# Re-exported for the tests of this folder (they live in regrow.testing).
from regrow.testing import child_env as child_env
from regrow.testing import regrow_cli as regrow_cli
from regrow.testing import stop as stop
from regrow.testing import wait_ready as wait_ready
from regrow.testing import wait_until


class StillBroken(AssertionError):
    """Raised at the one step where a bug the chaos tests once found would show again:
    the failure names the bug instead of a bare assertion."""


def workers(client: Client) -> dict[str, dict[str, Any]]:
    """``{worker address: info}`` as the scheduler sees it now."""
    info: dict[str, dict[str, Any]] = client.scheduler_info()["workers"]
    return info


def pids(client: Client) -> dict[str, int]:
    """``{nanny address: pid of its current worker}``."""
    return {w["nanny"]: w["pid"] for w in workers(client).values()}


def wait_for_workers(
    client: Client, n: int, *, not_pids: Collection[int] = (), timeout: float = 30.0
) -> dict[str, dict[str, Any]]:
    """Wait until ``n`` workers are registered and none of them has a pid in ``not_pids``."""
    seen: dict[str, dict[str, Any]] = {}

    def ready() -> bool:
        nonlocal seen
        seen = workers(client)
        return len(seen) == n and not {w["pid"] for w in seen.values()} & set(not_pids)

    wait_until(ready, timeout=timeout, what=f"{n} workers, none of pids {sorted(not_pids)}")
    return seen


def worker_events(client: Client, since: float = 0.0) -> list[str]:
    """Messages of the scheduler's 'workers' topic received since ``since`` (time.time())."""
    return [msg["text"] for t, _, msg in client.get_events("workers") if t >= since]


def lost_events(client: Client, since: float = 0.0) -> list[str]:
    return [m for m in worker_events(client, since) if ") lost:" in m]


class Frozen:
    """SIGSTOP a process on entry; always SIGCONT it on exit if it is still the same process.

    The identity check (psutil compares creation times) makes sure a recycled PID
    never gets our signal.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)
        self.stopped_at = 0.0

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped_at = time.monotonic()
        return self

    def resume(self) -> None:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if self.proc.is_running():
                os.kill(self.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        self.resume()


def gone(proc: psutil.Process) -> bool:
    """The process has exited (reaped, or a zombie waiting for its parent)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sigkill(pid: int) -> None:
    """SIGKILL a worker whose pid the scheduler reported (it may have died already)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
