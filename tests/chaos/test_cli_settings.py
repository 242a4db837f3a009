"""The scheduler's failure settings given as command-line flags (a scheduler started
with ``python -m regrow.cli scheduler``, not through LocalCluster)."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from regrow import Client, KilledWorker
from regrow.testing import wait_until

from .helpers import Frozen, StillBroken, child_env, regrow_cli, stop, wait_ready, workers
from .tasks import suicide

FLAGS_BUG = (
    "regrow bug: cli.scheduler() accepts --heartbeat-timeout and --allowed-failures but "
    "builds Settings.from_env(worker_saturation=..., steal_interval=...) without them, "
    "so both flags are ignored"
)


class Processes:
    """A scheduler and workers started from the command line; ``close()`` stops them."""

    def __init__(self, tmp_path: Path, scheduler_flags: list[str]) -> None:
        self.tmp = tmp_path
        self.token = secrets.token_hex(16)
        self.env = child_env(self.token)
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.address = self._start("scheduler", ["scheduler", "--port", "0", *scheduler_flags])
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, args: list[str]) -> str:
        ready = self.tmp / f"{name}.ready"
        proc = regrow_cli(args, self.env, ready)
        self.procs.append(proc)
        return wait_ready(proc, ready)

    def worker(self, name: str, *flags: str) -> str:
        return self._start(name, ["worker", self.address, "--name", name, *flags])

    def client(self) -> Client:
        return Client(self.address, token=self.token, set_as_default=False)

    def close(self) -> None:
        stop(self.procs)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[Processes]]:
    made: list[Processes] = []
    yield made
    for p in made:
        p.close()


def test_allowed_failures_flag(processes: list[Processes], tmp_path: Path) -> None:
    cluster = Processes(tmp_path, ["--allowed-failures", "1"])
    processes.append(cluster)
    cluster.worker("w", "--nthreads", "1")  # under a nanny, which restarts it
    with cluster.client() as client:
        wait_until(lambda: len(workers(client)) == 1, timeout=30, what="the worker")
        poison = client.submit(suicide)
        with pytest.raises(KilledWorker) as info:
            poison.result(timeout=60)
        deaths = len(info.value.workers)
        if deaths != 1:
            raise StillBroken(f"KilledWorker after {deaths} deaths, not 1: {info.value}")


def test_heartbeat_timeout_flag(processes: list[Processes], tmp_path: Path) -> None:
    timeout = 1.0
    cluster = Processes(tmp_path, ["--heartbeat-timeout", str(timeout)])
    processes.append(cluster)
    worker = cluster.worker("w", "--nthreads", "1", "--no-nanny")
    with cluster.client() as client:
        wait_until(lambda: len(workers(client)) == 1, timeout=30, what="the worker")
        pid = workers(client)[worker]["pid"]
        with Frozen(pid) as frozen:
            wait_until(
                lambda: worker not in workers(client),
                timeout=15,
                interval=0.02,
                what="the frozen worker is removed",
            )
            took = time.monotonic() - frozen.stopped_at
        if took > timeout + 1:
            raise StillBroken(f"removed {took:.1f} s after it froze, not within {timeout} + 1 s")
