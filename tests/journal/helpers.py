"""Starting and stopping regrow processes of our own (``python -m regrow.cli ...``),
signalling only the PIDs we started, waiting with deadlines."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from regrow.testing import wait_until


def child_env(token: str, **settings: object) -> dict[str, str]:
    """The token, settings as REGROW_* variables, and our sys.path (so the workers
    import ``journal.tasks`` as we do)."""
    env = dict(os.environ)
    env["REGROW_TOKEN"] = token
    for name, value in settings.items():
        env[f"REGROW_{name.upper()}"] = str(value)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])
    return env


def regrow_cli(args: list[str], env: dict[str, str], ready_file: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m regrow.cli ARGS``; it writes its address to ``ready_file`` once
    it serves, and exits by itself if this process dies."""
    cmd = [sys.executable, "-m", "regrow.cli", *args, "--ready-file", str(ready_file)]
    cmd += ["--parent-pid", str(os.getpid()), "--log-level", "ERROR"]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen[bytes], ready_file: Path, timeout: float = 30.0) -> str:
    """The address a process wrote to its ready file; fails at once if it exits instead."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode}")
        return ready_file.exists()

    wait_until(ready, timeout=timeout, what=f"{ready_file.name} written")
    return ready_file.read_text().strip()


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM the processes we started, SIGKILL those left after ``timeout``; reap all."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


class CliCluster:
    """A scheduler (``--journal``) and nanny-managed workers started through the CLI.

    ``kill_scheduler()`` SIGKILLs the scheduler we started; ``start_scheduler()``
    starts it again on the same port and journal. ``close()`` stops everything.
    """

    def __init__(self, tmp: Path, journal: Path, n_workers: int = 2, **settings: object) -> None:
        self.tmp = tmp
        self.journal = journal
        self.token = secrets.token_hex(16)
        self.env = child_env(self.token, **settings)
        self.port = 0
        self.address = ""
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.starts = 0
        try:
            self.start_scheduler()
            for i in range(n_workers):
                ready = tmp / f"worker-{i}.ready"
                w = regrow_cli(["worker", self.address, "--name", f"w{i}"], self.env, ready)
                self.workers.append(w)
                wait_ready(w, ready)
        except BaseException:
            self.close()
            raise

    def start_scheduler(self) -> str:
        ready = self.tmp / f"scheduler-{self.starts}.ready"
        self.starts += 1
        args = ["scheduler", "--port", str(self.port), "--journal", str(self.journal)]
        self.scheduler = regrow_cli(args, self.env, ready)
        address = wait_ready(self.scheduler, ready)
        if not self.address:
            self.address = address
            self.port = int(address.rpartition(":")[2])
        assert address == self.address, (address, self.address)
        return address

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.kill()  # SIGKILL, to the pid we started
        self.scheduler.wait(timeout=10)

    def close(self) -> None:
        # The scheduler first: it tells the nannies to stop their workers.
        stop([self.scheduler] if self.scheduler is not None else [])
        stop(self.workers)


@contextlib.contextmanager
def cli_cluster(tmp: Path, journal: Path, **kwargs: object) -> Iterator[CliCluster]:
    cluster = CliCluster(tmp, journal, **kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    finally:
        cluster.close()
