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

from chaos.helpers import Frozen
from chaos.tasks import checksum, make_array
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


def worker_samples(
    got: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str
) -> dict[str, float]:
    """``{worker address: value}`` of the per-worker sample ``name``."""
    return {dict(labels)["worker"]: v for (n, labels), v in got.items() if n == name}


def test_worker_traffic_cpu_silence_and_heartbeat_misses(processes: Processes) -> None:
    timeout = 2.0
    _, address, health = processes.start(
        "scheduler",
        [
            "scheduler",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--heartbeat-timeout",
            str(timeout),
        ],
    )
    for i in range(2):
        args = ["worker", address, "--nthreads", "1", "--name", f"w{i}"]
        processes.start(f"worker{i}", [*args, "--dashboard-address", "127.0.0.1:0"])
    url = health.removesuffix("/health") + "/metrics"

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = fetch(url)
        assert status == 200, text
        return samples(text)

    with Client(address, token=processes.env["REGROW_TOKEN"], set_as_default=False) as client:
        client.wait_for_workers(2, timeout=10)
        info = client.scheduler_info()["workers"]
        by_name = {w["name"]: a for a, w in info.items()}
        source, sink = by_name["w0"], by_name["w1"]
        wait_until(
            lambda: all("sent" in w for w in client.scheduler_info()["workers"].values()),
            timeout=10,
            what="a heartbeat from each worker",
        )
        got = metrics()
        # No journal: no journal metrics.
        assert not [n for n, _ in got if n.startswith("regrow_journal")]
        misses = got[("regrow_heartbeat_misses_total", ())]
        lost = got[("regrow_workers_lost_total", ())]
        assert misses == lost == 0
        for name in ("regrow_worker_cpu_percent", "regrow_worker_silence_seconds"):
            values = worker_samples(got, name)
            assert set(values) == {source, sink}, name
            assert all(v >= 0 for v in values.values()), (name, values)
        silence = worker_samples(got, "regrow_worker_silence_seconds")
        # At most the timeout (and a tick) by the scheduler's latest event, or it is gone.
        assert all(v <= timeout + 1 for v in silence.values()), silence
        sent_before = worker_samples(got, "regrow_worker_sent_bytes_total")
        received_before = worker_samples(got, "regrow_worker_received_bytes_total")
        assert set(sent_before) == set(received_before) == {source, sink}

        # A result made on one worker is needed on the other: it travels between them.
        n = 50_000  # float64s: 400 KB, far above what travels inline with the news
        array = client.submit(make_array, 1, n, workers=[source])
        assert client.submit(checksum, array, workers=[sink]).result(timeout=30) == float(n)

        def moved() -> bool:
            got = metrics()
            sent = worker_samples(got, "regrow_worker_sent_bytes_total")
            received = worker_samples(got, "regrow_worker_received_bytes_total")
            return (
                sent[source] - sent_before[source] >= 8 * n
                and received[sink] - received_before[sink] >= 8 * n
            )

        wait_until(moved, timeout=10, what="the transfer counted by both workers")
        got = metrics()
        assert worker_samples(got, "regrow_worker_sent_bytes_total")[sink] < 8 * n
        assert worker_samples(got, "regrow_worker_received_bytes_total")[source] < 8 * n

        # A worker that goes silent is removed, and counted as a heartbeat miss.
        with Frozen(info[sink]["pid"]):
            wait_until(
                lambda: sink not in client.scheduler_info()["workers"],
                timeout=timeout + 10,
                what="the frozen worker is removed",
            )
            got = metrics()
            assert got[("regrow_heartbeat_misses_total", ())] == misses + 1
            assert got[("regrow_workers_lost_total", ())] == lost + 1
            assert sink not in worker_samples(got, "regrow_worker_silence_seconds")
        # Thawed, it registers again; nothing more was missed meanwhile.
        wait_until(
            lambda: sink in client.scheduler_info()["workers"],
            timeout=30,
            what="the thawed worker registers again",
        )
        assert metrics()[("regrow_heartbeat_misses_total", ())] == misses + 1


def journaled(processes: Processes, tmp_path: Path) -> tuple[str, str]:
    """A scheduler with a journal: its address and its /metrics URL."""
    journal = tmp_path / "journal.sqlite"
    args = ["scheduler", "--port", "0", "--dashboard-address", "127.0.0.1:0"]
    _, address, health = processes.start("scheduler", [*args, "--journal", str(journal)])
    return address, health.removesuffix("/health") + "/metrics"


def journal_figures(url: str) -> tuple[float, float, float]:
    """(lag s, transactions committed, last commit's duration s) from /metrics."""
    status, text = fetch(url)
    assert status == 200, text
    got = samples(text)
    return (
        got[("regrow_journal_lag_seconds", ())],
        got[("regrow_journal_writes_total", ())],
        got[("regrow_journal_last_write_seconds", ())],
    )


def test_journal_metrics(processes: Processes, tmp_path: Path) -> None:
    address, url = journaled(processes, tmp_path)
    lag, before, last = journal_figures(url)
    assert lag >= 0 and last >= 0
    with Client(address, token=processes.env["REGROW_TOKEN"], set_as_default=False) as client:
        # No worker: the tasks wait, and their submission is in the journal.
        futures = client.map(inc, range(10))
        wait_until(
            lambda: journal_figures(url)[1] > before,
            timeout=10,
            what="the submission committed to the journal",
        )
        lag, writes, last = journal_figures(url)
        assert last > 0 and lag >= 0
        client.cancel(futures)
        wait_until(
            lambda: journal_figures(url)[1] > writes,
            timeout=10,
            what="the cancellation committed",
        )


def test_journal_lag_is_zero_while_nothing_waits_to_be_committed(
    processes: Processes, tmp_path: Path
) -> None:
    """The lag is the age of the oldest change not yet committed: none, none."""
    address, url = journaled(processes, tmp_path)
    # Started, nothing submitted: nothing to commit (the scheduler's own ticks and its
    # clients' connections are no changes to the journal).
    with Client(address, token=processes.env["REGROW_TOKEN"], set_as_default=False) as client:
        assert client.scheduler_info()["workers"] == {}
        lag, writes, _ = journal_figures(url)
        assert lag == 0
        futures = client.map(inc, range(10))
        wait_until(lambda: journal_figures(url)[1] > writes, timeout=10, what="a commit")
        # Committed, and nothing has changed since: no lag.
        wait_until(lambda: journal_figures(url)[0] == 0, timeout=10, what="nothing left to commit")
        assert not any(f.done() for f in futures)  # no worker: they still wait
