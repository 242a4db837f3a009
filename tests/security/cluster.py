"""A scheduler and a worker started with the ``regrow`` CLI, for the security tests.

As ``regrow.testing.regrow_cli`` starts them, but with the scheduler's log (stderr) kept
in a file at WARNING level: the tests read why a connection was dropped, and check that
no traceback was logged. Processes are stopped by PID (``regrow.testing.stop``).
"""

from __future__ import annotations

import contextlib
import operator
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from regrow import Client
from regrow.testing import child_env, stop, wait_ready, wait_until

MiB = 1 << 20


def cli(args: list[str], env: dict[str, str], ready: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "regrow.cli", *args]
    cmd += ["--ready-file", str(ready), "--parent-pid", str(os.getpid())]
    cmd += ["--log-level", "WARNING"]
    with open(log, "ab") as err:
        return subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )


class Cluster:
    """One scheduler process (with ``settings`` as REGROW_* variables) and one worker."""

    def __init__(self, tmp: Path, settings: dict[str, object], nthreads: int = 2) -> None:
        self.tmp = tmp
        self.token = secrets.token_hex(16)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_path = tmp / "scheduler.log"
        try:
            ready = tmp / "scheduler.ready"
            self.scheduler = cli(
                ["scheduler", "--port", "0"],
                child_env(self.token, **settings),
                ready,
                self.log_path,
            )
            self.procs.append(self.scheduler)
            self.address = wait_ready(self.scheduler, ready)
            self.proc = psutil.Process(self.scheduler.pid)
            self.worker_name = f"legit-worker-{secrets.token_hex(6)}"
            ready = tmp / "worker.ready"
            worker = cli(
                [
                    *("worker", self.address, "--no-nanny", "--nthreads", str(nthreads)),
                    *("--name", self.worker_name),
                ],
                child_env(self.token),
                ready,
                tmp / "worker.log",
            )
            self.procs.append(worker)
            wait_ready(worker, ready)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ looking at it
    def alive(self) -> bool:
        return self.scheduler.poll() is None

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_problems(self) -> list[str]:
        """What the scheduler's log says that means a crash, not a refusal: each such
        line with the traceback that follows it."""
        bad = ("Traceback", "Task exception was never retrieved", " ERROR ", " CRITICAL ")
        out: list[str] = []
        lines = self.log().splitlines()
        i = 0
        while i < len(lines):
            if any(b in lines[i] for b in bad):
                block = [lines[i]]
                i += 1
                while i < len(lines) and not lines[i][:1].isdigit():
                    block.append(lines[i])
                    i += 1
                out.append("\n".join(block))
            else:
                i += 1
        return out

    def open_connections(self, local_port: int) -> bool:
        """Whether the scheduler still holds its end of our connection from ``local_port``."""
        for c in self.proc.net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == local_port and c.status == psutil.CONN_ESTABLISHED:
                return True
        return False

    # ------------------------------------------------------------ legit peers
    def client(self, timeout: float = 10) -> Client:
        return Client(self.address, token=self.token, set_as_default=False, timeout=timeout)

    def baseline(self, client: Client) -> int:
        """The scheduler's RSS after a warm-up computation (the memory checks' reference)."""
        computes(client, n=500)
        computes(client, n=500)
        return self.rss()

    def wait_rss_back(self, baseline: int, timeout: float, slack: float = 0.10) -> int:
        """Wait until the RSS is within ``slack`` of ``baseline``; the last value seen."""
        seen = [0]

        def back() -> bool:
            seen[0] = self.rss()
            return seen[0] <= baseline * (1 + slack)

        try:
            wait_until(back, timeout=timeout, interval=0.1, what="scheduler RSS back")
        except TimeoutError:
            raise AssertionError(
                f"scheduler RSS {seen[0] / MiB:.1f} MiB, not back within {slack:.0%} of "
                f"its baseline {baseline / MiB:.1f} MiB after {timeout} s"
            ) from None
        return seen[0]

    def close(self) -> None:
        stop(self.procs)


def computes(client: Client, n: int = 50) -> None:
    """A legitimate client still gets correct results."""
    xs = list(range(n))
    futs = client.map(operator.mul, xs, xs, pure=False)
    assert client.gather(futs, timeout=30) == [x * x for x in xs]
    assert client.submit(sum, futs, pure=False).result(timeout=30) == sum(x * x for x in xs)
    del futs


@contextlib.contextmanager
def running(tmp: Path, **settings: object) -> Iterator[Cluster]:
    c = Cluster(tmp, settings)
    try:
        yield c
    finally:
        c.close()


class Sampler:
    """The peak of a process's RSS, sampled while a block runs (call ``sample``)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.peak = 0

    def sample(self) -> int:
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self.cluster.rss())
        return self.peak


def elapsed(start: float) -> float:
    return time.monotonic() - start
