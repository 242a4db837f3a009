"""GET /health (``--dashboard-address``) on real scheduler and nanny processes.

What Kubernetes' probes rely on: a scheduler answers 200 once it serves; a nanny answers
200 while it is registered with its scheduler and its worker process runs, and 503 with
the reason while not (its scheduler gone), then 200 again once a scheduler is back. The
URL a port 0 got is learnt as an operator would: from the process's log.
"""

from __future__ import annotations

import re
import secrets
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from regrow.cli import main
from regrow.testing import child_env, regrow_cli, stop, wait_ready, wait_until


def get(url: str) -> tuple[int, str]:
    """(status, body) of GET ``url``; an error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def health_url(log: Path) -> str:
    """The health endpoint's URL, as the process logged it at start (before it wrote its
    ready file, so it is there once the ready file is)."""
    found = re.search(r"health at (http://\S+/health)", log.read_text())
    assert found, f"no health URL in {log}:\n{log.read_text()}"
    return found.group(1)


class Processes:
    """The regrow processes a test started: each with its log; stopped at the end, by PID."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.env = child_env(secrets.token_hex(16))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen[bytes], str, str]:
        """Start ``regrow ARGS``; its process, address and health URL once it serves."""
        ready, log = self.tmp / f"{name}.ready", self.tmp / f"{name}.log"
        ready.unlink(missing_ok=True)
        proc = regrow_cli([*args, "--log-file", str(log)], self.env, ready)
        self.procs.append(proc)
        address = wait_ready(proc, ready)
        return proc, address, health_url(log)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    stop(list(reversed(started.procs)))


def test_scheduler_health(processes: Processes) -> None:
    proc, _, url = processes.start(
        "scheduler", ["scheduler", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
    )
    assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
    assert get(url) == (200, "ok\n")
    assert get(url.removesuffix("/health") + "/other")[0] == 404
    stop([proc])
    with pytest.raises(urllib.error.URLError):
        get(url)


def test_nanny_health_follows_its_scheduler(processes: Processes) -> None:
    scheduler, address, _ = processes.start(
        "scheduler", ["scheduler", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
    )
    _nanny, _, url = processes.start(
        "nanny", ["worker", address, "--dashboard-address", "127.0.0.1:0"]
    )
    # Once the nanny serves, it is registered and its worker process is up.
    assert get(url) == (200, "ok\n")

    # The scheduler dies (a clean stop would close its nannies too): the nanny says so.
    scheduler.send_signal(signal.SIGKILL)
    scheduler.wait()
    wait_until(lambda: get(url)[0] == 503, timeout=10, what="the nanny reports 503")
    status, reason = get(url)
    assert status == 503 and "scheduler" in reason and reason.count("\n") == 1, reason

    # A scheduler on the same address: the nanny registers again and is healthy.
    port = address.rpartition(":")[2]
    processes.start(
        "scheduler-2", ["scheduler", "--port", port, "--dashboard-address", "127.0.0.1:0"]
    )
    wait_until(lambda: get(url)[0] == 200, timeout=20, what="the nanny is healthy again")


@pytest.mark.parametrize("command", [["scheduler"], ["worker", "tcp://127.0.0.1:8786"]])
def test_bad_dashboard_address_is_a_usage_error(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--dashboard-address", "localhost"])
    assert result.exit_code == 2
    assert "Error: dashboard address 'localhost' is not HOST:PORT" in result.output


def test_taken_dashboard_port_fails_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["scheduler", "--port", "0", "--dashboard-address", f"127.0.0.1:{port}"]
        done = subprocess.run(
            [sys.executable, "-m", "regrow.cli", *args, "--log-level", "ERROR"],
            env=child_env(secrets.token_hex(16)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    why = f"cannot serve HTTP at 127.0.0.1:{port}: Address already in use"
    assert done.stderr == f"regrow: error: {why}\n"
