"""Helpers for the pipeline tests: the 3-stage numeric pipeline, gates (files a stage
call waits for), and killing a worker by the pid the scheduler reports."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import psutil

from regrow import Client
from regrow.pipeline import Pipeline, Stage, group_all, group_label, split
from regrow.testing import wait_until

from . import tasks

TIMEOUT = 60.0  # for gather(): a job that takes longer is stuck


def numeric_pipeline(square_params: Any = None) -> Pipeline:
    return Pipeline(
        [
            (split, Stage("square", process=tasks.square, params=square_params)),
            (
                group_label,
                Stage("shift", init=tasks.shift_init, process=tasks.shift, done=tasks.shift_done),
            ),
            (
                group_all,
                Stage("final", init=tasks.final_init, process=tasks.final, done=tasks.final_done),
            ),
        ]
    )


class Gate:
    """A file that a gated stage call waits for; it writes its pid to ``started`` first."""

    def __init__(self, directory: Path, n: int) -> None:
        self.path = directory / f"gate-{n}"
        self.started = directory / f"started-{n}"

    def spec(self, match: object) -> tuple[str, str, object]:
        """The ``"gate"`` entry of a stage's params (see tasks.py)."""
        return (str(self.path), str(self.started), match)

    def open(self) -> None:
        self.path.touch()

    def wait_started(self, timeout: float = 60.0) -> int:
        """The pid of the worker process that is now blocked on this gate."""
        wait_until(self.started.exists, timeout=timeout, what=f"{self.started.name} written")
        return int(self.started.read_text())


def worker_pids(client: Client) -> set[int]:
    return {w["pid"] for w in client.scheduler_info()["workers"].values()}


def kill_worker(client: Client, pid: int) -> None:
    """SIGKILL the worker process ``pid`` (it must be one the scheduler lists) and wait
    until it is gone."""
    assert pid in worker_pids(client), f"{pid} is not a worker pid the scheduler reports"
    proc = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)

    def gone() -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        return True

    wait_until(gone, timeout=10, what=f"worker {pid} gone")


def wait_for_workers(client: Client, n: int = 2, not_pid: int | None = None) -> None:
    """Wait until ``n`` workers are registered, none of them with pid ``not_pid``."""

    def ready() -> bool:
        pids = worker_pids(client)
        return len(pids) == n and not_pid not in pids

    wait_until(ready, timeout=30, what=f"{n} workers (not pid {not_pid})")
