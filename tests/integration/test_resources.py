"""Worker resources on a real cluster (``--resources``, ``LocalCluster(resources=)``,
``submit(resources=)``), and LocalCluster's dask.distributed keyword arguments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import regrow
from conftest import MakeCluster
from regrow.testing import wait_until


def test_a_gpu_task_runs_one_at_a_time_per_gpu(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """2 workers of 4 threads, 1 GPU each: 12 tasks needing a GPU never run more than
    one per worker at once, all of them finish, and plain tasks still use every thread."""

    def on_gpu(i: int) -> tuple[str, int]:
        me = tmp_path / f"running-{os.getpid()}-{i}"
        me.touch()
        here = len(list(tmp_path.glob(f"running-{os.getpid()}-*")))
        time.sleep(0.05)  # the task's work: other GPU tasks would start meanwhile
        me.unlink()
        return str(os.getpid()), here

    _, client = make_cluster(n_workers=2, threads_per_worker=4, resources={"GPU": 1})
    info = client.scheduler_info()["workers"]
    assert len(info) == 2
    out = client.gather(client.map(on_gpu, range(12), resources={"GPU": 1}))
    assert max(n for _, n in out) == 1
    assert client.gather(client.map(lambda x: x + 1, range(50))) == list(range(1, 51))


def test_a_task_needing_more_than_any_worker_has_waits(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, resources={"GPU": 1})
    big = client.submit(lambda: 1, resources={"GPU": 2})
    small = client.submit(lambda: 2, resources={"GPU": 1})
    assert small.result(timeout=30) == 2
    assert big.status == "pending"
    with pytest.raises(TypeError, match="is not a number"):
        client.submit(lambda: 1, resources={"GPU": "one"})
    with pytest.raises(ValueError, match=">= 0"):
        client.submit(lambda: 1, resources={"GPU": -1})


def test_the_worker_command_takes_resources() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "regrow.cli", "worker", "tcp://127.0.0.1:1", "--resources", "GPU"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "not NAME=AMOUNT" in out.stderr and "Traceback" not in out.stderr


def test_local_cluster_names_a_dask_argument_it_does_not_take() -> None:
    with pytest.raises(TypeError, match="scheduler_kwargs= is not taken"):
        regrow.LocalCluster(n_workers=0, scheduler_kwargs={})
    with pytest.raises(TypeError, match="worker_class"):
        regrow.LocalCluster(n_workers=0, worker_class=dict)
    with pytest.raises(ValueError, match="silence_logs"):
        regrow.LocalCluster(n_workers=0, silence_logs="loud")
    with pytest.raises(TypeError, match="unknown"):
        regrow.LocalCluster(n_workers=0, no_such_thing=1)
    with pytest.raises(TypeError, match="resources"):
        regrow.LocalCluster(n_workers=0, resources=["GPU"])  # type: ignore[arg-type]


def test_local_cluster_takes_silence_logs(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=1, silence_logs=False)
    assert cluster.log_level == "DEBUG"
    assert client.submit(lambda: 3).result(timeout=30) == 3


def test_jupyter_views_of_cluster_client_and_future(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=1)
    assert "LocalCluster" in cluster._repr_html_() and "workers: 1" in cluster._repr_html_()
    assert "regrow Client" in client._repr_html_()
    f = client.submit(lambda: b"x" * 10, key="<b>bold</b>")
    f.result(timeout=30)
    html = f._repr_html_()
    assert "finished" in html and "bytes" in html
    [worker] = client.scheduler_info()["workers"]
    assert f"worker: {worker}" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html


def test_replicate_keeps_copies_even_after_a_worker_is_lost(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=3)
    f = client.submit(lambda: list(range(1000)))
    client.replicate(f, n=2)
    assert len(client.who_has(f)[f.key]) == 2
    client.replicate([f])  # n=None: every worker
    assert len(client.who_has(f)[f.key]) == 3
    # A holder SIGKILLed: its nanny starts another worker, which gets a copy too.
    victim = client.who_has(f)[f.key][0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: victim not in client.who_has(f)[f.key] and len(client.who_has(f)[f.key]) == 3,
        timeout=60,
        what="a copy on the worker that replaced the lost one",
    )
    assert f.result(timeout=10) == list(range(1000))
    with pytest.raises(ValueError, match="n must be"):
        client.replicate(f, n=0)
    with pytest.raises(TypeError, match="takes futures"):
        client.replicate([1])  # type: ignore[list-item]


def test_rebalance_moves_results_without_recomputing(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=2)
    a, b = sorted(client.scheduler_info()["workers"])
    futures = [
        client.submit(lambda i: bytes(1_000_000) + bytes([i]), i, workers=[a]) for i in range(10)
    ]
    client.gather(futures)
    assert {len(v) for v in client.has_what().values()} == {0, 10}
    before = client.scheduler_info()["counts"]
    client.rebalance(futures)
    held = client.has_what()
    assert 4 <= len(held[a]) <= 6 and len(held[a]) + len(held[b]) == 10, held
    assert client.scheduler_info()["counts"] == before  # nothing recomputed or rerun
    assert [f.result(timeout=30)[-1] for f in futures] == list(range(10))
    client.rebalance()  # balanced already: nothing moves
    assert client.has_what() == held


def test_dask_only_submit_keywords_are_refused_at_the_call(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    with pytest.raises(TypeError, match=r"allow_other_workers= is dask\.distributed's"):
        client.submit(lambda: 1, allow_other_workers=True)
    with pytest.raises(TypeError, match=r"actor= is dask\.distributed's"):
        client.map(lambda x: x, [1], actor=True)
