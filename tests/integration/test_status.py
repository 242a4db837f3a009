"""``regrow status SCHEDULER_ADDRESS``: the table, ``--json``, ``--watch``, and errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from regrow import Client, LocalCluster

from .tasks import inc


def status(
    cluster: LocalCluster, *args: str, token: str | None = None, address: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``regrow status`` for ``cluster``."""
    env = dict(os.environ, REGROW_TOKEN=token or cluster.token, COLUMNS="160")
    address = address or cluster.scheduler_address
    return [sys.executable, "-m", "regrow.cli", "status", address, *args], env


def run(cmd_env: tuple[list[str], dict[str, str]]) -> subprocess.CompletedProcess[str]:
    cmd, env = cmd_env
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_status_table_and_json_match_scheduler_info(cluster: LocalCluster, client: Client) -> None:
    futures = client.map(inc, range(10))
    client.gather(futures)
    info = client.scheduler_info()
    r = run(status(cluster, "--json"))
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert set(shown["workers"]) == set(info["workers"])
    assert shown["tasks"] == info["tasks"] == {"memory": 10}
    assert shown["counts"]["finished"] >= 10
    r = run(status(cluster))
    assert r.returncode == 0, r.stderr
    assert f"{len(info['workers'])} worker(s)" in r.stdout
    for address, w in info["workers"].items():
        row = next(line for line in r.stdout.splitlines() if address in line)
        assert f" {w['name']} " in row and "running" in row
    assert "memory 10" in r.stdout  # tasks by state


def test_status_watch_refreshes_until_interrupted(cluster: LocalCluster) -> None:
    cmd, env = status(cluster, "--json", "--watch", "0.1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        second = json.loads(proc.stdout.readline())
        assert set(first["workers"]) == set(second["workers"]) and first["workers"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_status_errors_are_one_line(cluster: LocalCluster) -> None:
    r = run(status(cluster, "--timeout", "1", token="not-the-token"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "token" in r.stderr
    r = run(status(cluster, "--timeout", "0.5", address="tcp://127.0.0.1:1"))
    assert r.returncode == 1 and r.stderr.startswith("regrow: error: could not reach"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run(status(cluster, address="nonsense"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
