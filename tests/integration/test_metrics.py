"""GET /metrics on a real scheduler: Prometheus' text format, parsed with
prometheus-client's own parser, its values checked against ``scheduler_info()``; off
loopback it needs the cluster token."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from regrow import Client
from regrow.testing import stop, wait_until

from .tasks import inc
from .test_health import Processes, health_url


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    stop(list(reversed(started.procs)))


def fetch(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` as prometheus-client parses them."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_match_the_scheduler(processes: Processes) -> None:
    _, address, health = processes.start(
        "scheduler", ["scheduler", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
    )
    for i in range(2):
        args = ["worker", address, "--nthreads", "2", "--name", f"w{i}"]
        processes.start(f"worker{i}", [*args, "--dashboard-address", "127.0.0.1:0"])
    url = health.removesuffix("/health") + "/metrics"
    token = processes.env["REGROW_TOKEN"]
    with Client(address, token=token, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=10)
        futures = client.map(inc, range(10))
        client.gather(futures)
        broken = client.submit(inc, "not a number")
        wait_until(broken.done, timeout=10)
        wait_until(
            lambda: all("rss" in w for w in client.scheduler_info()["workers"].values()),
            timeout=10,
            what="a heartbeat from each worker",
        )
        info = client.scheduler_info()
        status, text = fetch(url)  # on loopback: no token needed
        assert status == 200, text
        got = samples(text)
    assert got[("regrow_workers", (("status", "running"),))] == len(info["workers"]) == 2
    for state, n in info["tasks"].items():
        assert got[("regrow_tasks", (("state", state),))] == n
    assert got[("regrow_task_group_tasks", (("group", "inc"), ("state", "memory")))] == 10
    assert got[("regrow_task_group_tasks", (("group", "inc"), ("state", "erred")))] == 1
    assert got[("regrow_tasks_finished_total", ())] == info["counts"]["finished"] >= 10
    assert got[("regrow_tasks_erred_total", ())] == info["counts"]["erred"] == 1
    assert got[("regrow_workers_lost_total", ())] == 0
    assert got[("regrow_clients", ())] == info["clients"]
    for address_, w in info["workers"].items():
        labels = (("name", w["name"]), ("worker", address_))
        assert got[("regrow_worker_threads", labels)] == 2
        assert got[("regrow_worker_results", labels)] == w["nkeys"]
        assert got[("regrow_worker_held_bytes", labels)] == w["memory"]
        assert got[("regrow_worker_process_memory_bytes", labels)] > 0


def test_off_loopback_metrics_need_the_token_and_health_does_not(processes: Processes) -> None:
    _, _, health = processes.start(
        "scheduler", ["scheduler", "--port", "0", "--dashboard-address", "0.0.0.0:0"]
    )
    port = health.split(":")[2].split("/")[0]
    base = f"http://127.0.0.1:{port}"
    status, text = fetch(f"{base}/metrics")
    assert status == 401 and "token" in text
    assert fetch(f"{base}/metrics", token="not-the-token")[0] == 401
    status, text = fetch(f"{base}/metrics", token=processes.env["REGROW_TOKEN"])
    assert status == 200 and "regrow_workers" in text
    assert fetch(f"{base}/health") == (200, "ok\n")  # probes carry no token


def test_a_nanny_serves_no_metrics(processes: Processes, tmp_path: Path) -> None:
    local = ["--dashboard-address", "127.0.0.1:0"]
    _, address, _ = processes.start("scheduler", ["scheduler", "--port", "0", *local])
    _, _, url = processes.start("nanny", ["worker", address, *local])
    assert health_url(tmp_path / "nanny.log") == url
    assert fetch(url)[0] == 200
    assert fetch(url.removesuffix("/health") + "/metrics")[0] == 404
