"""Public helpers for testing code that uses regrow (and regrow itself).

- ``wait_until(predicate, timeout)``: poll a condition with a deadline instead of sleeping.
- ``children_of(pid)``: the live processes a process started (to check nothing leaks).
- ``child_env``, ``regrow_cli``, ``wait_ready``, ``stop``: start ``regrow`` processes from
  a test exactly as an operator would, and stop only those, by PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from regrow.deploy import stop_processes as stop

if TYPE_CHECKING:
    from regrow.client.client import Client
    from regrow.deploy import LocalCluster

# ``make_cluster(**LocalCluster keywords) -> (cluster, client)``: the tests' cluster factory.
MakeCluster = Callable[..., "tuple[LocalCluster, Client]"]


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> None:
    """Return once ``predicate()`` is truthy; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition {what or predicate!r} not met within {timeout} s")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.is_running()]
    except psutil.NoSuchProcess:
        return []


def child_env(token: str, **settings: object) -> dict[str, str]:
    """Environment for regrow processes a test starts itself: the token, settings as
    REGROW_* variables, and our sys.path (so they import the task modules as we do)."""
    env = dict(os.environ)
    env["REGROW_TOKEN"] = token
    for name, value in settings.items():
        env[f"REGROW_{name.upper()}"] = str(value)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])
    return env


def regrow_cli(
    args: list[str], env: dict[str, str], ready_file: Path, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m regrow.cli ARGS`` (after ``prefix``, e.g. ``ip netns exec NS``); it
    writes its address to ``ready_file`` once it serves, and exits if this process dies."""
    cmd = [*(prefix or []), sys.executable, "-m", "regrow.cli", *args]
    cmd += ["--ready-file", str(ready_file), "--parent-pid", str(os.getpid())]
    cmd += ["--log-level", "ERROR"]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen[bytes], ready_file: Path, timeout: float = 30.0) -> str:
    """The address a process wrote to its ready file; fails at once if it exits instead."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode}")
        return ready_file.exists()

    wait_until(ready, timeout=timeout, what=f"{ready_file.name} written")
    return ready_file.read_text().strip()


__all__ = [
    "MakeCluster",
    "child_env",
    "children_of",
    "regrow_cli",
    "stop",
    "wait_ready",
    "wait_until",
]
