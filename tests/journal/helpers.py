"""Starting and stopping regrow processes of our own (``python -m regrow.cli ...``),
signalling only the PIDs we started, waiting with deadlines."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

# Re-exported for the tests of this folder (they live in regrow.testing).
from regrow.testing import child_env as child_env
from regrow.testing import regrow_cli as regrow_cli
from regrow.testing import stop as stop
from regrow.testing import wait_ready as wait_ready


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
