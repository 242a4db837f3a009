"""scale() and adapt() on a LocalCluster of real processes: grow under a queue, shrink
when idle by retiring workers gracefully (their results moved, nothing recomputed)."""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from regrow import Client, Future, LocalCluster
from regrow.deploy.adaptive import AdaptivePolicy, Load, WorkerLoad
from regrow.testing import wait_until

from .tasks import double, gated_double


@pytest.fixture
def empty_cluster() -> Iterator[tuple[LocalCluster, Client]]:
    with (
        LocalCluster(n_workers=0, threads_per_worker=1, log_level="ERROR") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield cluster, client


def n_workers(client: Client) -> int:
    return len(client.scheduler_info()["workers"])


def runs_per_task(runs: Path) -> collections.Counter[int]:
    return collections.Counter(int(name.split("-")[0]) for name in os.listdir(runs))


class Gated:
    """``gated_double`` tasks: they wait for ``gate`` and leave a file per run in ``runs``."""

    def __init__(self, tmp: Path) -> None:
        self.gate, self.runs = tmp / "gate", tmp / "runs"
        self.runs.mkdir()

    def map(self, client: Client, n: int) -> list[Future]:
        return client.map(gated_double, range(n), gate=str(self.gate), runs=str(self.runs))

    def ran_once_each(self, n: int) -> bool:
        return runs_per_task(self.runs) == {i: 1 for i in range(n)}


def test_adapt_grows_under_a_queue_and_shrinks_when_idle_recomputing_nothing(
    empty_cluster: tuple[LocalCluster, Client], tmp_path: Path
) -> None:
    cluster, client = empty_cluster
    tasks = Gated(tmp_path)
    adaptive = cluster.adapt(minimum=0, maximum=2, interval=0.1, wait_count=3)
    assert n_workers(client) == 0
    futures = tasks.map(client, 6)
    # Six tasks wait for threads: it grows to its maximum, and no further.
    wait_until(lambda: n_workers(client) == 2, timeout=30, what="adapt grows to 2 workers")
    tasks.gate.touch()
    assert client.gather(futures) == [2 * i for i in range(6)]
    # Idle, but holding results: retired down to one worker, which must keep them all.
    wait_until(lambda: n_workers(client) == 1, timeout=30, what="adapt shrinks to 1 worker")
    assert len(cluster._unit_names()) == 1
    assert client.gather(futures) == [2 * i for i in range(6)]
    assert tasks.ran_once_each(6), "a task ran twice"
    counts = client.scheduler_info()["counts"]
    assert counts.get("recomputed", 0) == 0 and counts.get("lost", 0) == 0, counts
    # Nothing held: down to the minimum, 0.
    del futures
    wait_until(lambda: n_workers(client) == 0, timeout=30, what="adapt shrinks to 0")
    wait_until(lambda: not cluster._unit_names(), timeout=30, what="the last process exits")
    assert adaptive.last_error is None
    # It grows again from nothing.
    assert client.submit(double, 21).result(timeout=30) == 42
    logs = cluster.get_logs()
    assert "scheduler" in logs and any(k.startswith("worker") for k in logs)
    assert "retir" in logs["scheduler"].lower(), logs["scheduler"][-2000:]


def test_scale_up_and_down_moves_results(
    empty_cluster: tuple[LocalCluster, Client], tmp_path: Path
) -> None:
    cluster, client = empty_cluster
    tasks = Gated(tmp_path)
    tasks.gate.touch()
    cluster.scale(3)
    cluster.wait_for_workers(3, timeout=30)
    futures = tasks.map(client, 9)
    assert client.gather(futures) == [2 * i for i in range(9)]
    cluster.scale(1)
    assert n_workers(client) == 1
    assert len(client.who_has(futures)) == 9
    assert client.gather(futures) == [2 * i for i in range(9)]
    assert tasks.ran_once_each(9), "a task ran twice"
    # scale() takes jobs= as dask-jobqueue's, and stops adapt.
    adaptive = cluster.adapt(minimum=2, maximum=4, interval=0.1)
    wait_until(lambda: n_workers(client) == 2, timeout=30, what="adapt's minimum")
    cluster.scale(jobs=3)
    assert cluster._adaptive is None and adaptive._stop.is_set()
    cluster.wait_for_workers(3, timeout=30)


def test_scale_and_adapt_reject_bad_arguments(
    empty_cluster: tuple[LocalCluster, Client],
) -> None:
    cluster, _ = empty_cluster
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="number of workers"):
            cluster.scale(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        cluster.scale(1, jobs=1)
    with pytest.raises(ValueError, match="maximum"):
        cluster.adapt(minimum=3, maximum=1)
    with pytest.raises(ValueError, match="minimum"):
        cluster.adapt(minimum=-1)
    with pytest.raises(ValueError, match="wait_count"):
        cluster.adapt(wait_count=0)
    with pytest.raises(ValueError, match="duration"):
        cluster.adapt(interval="soon")
    with pytest.raises(ValueError, match="interval"):
        cluster.adapt(interval=0)
    assert cluster._adaptive is None


def test_scale_inprocess_cluster(caplog: pytest.LogCaptureFixture) -> None:
    # get_logs() of an in-process cluster keeps what regrow's loggers let through.
    caplog.set_level(logging.INFO, logger="regrow")
    with (
        LocalCluster(n_workers=1, processes=False) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=10)
        futures = client.map(double, range(4))
        assert client.gather(futures) == [0, 2, 4, 6]
        cluster.scale(1)
        assert n_workers(client) == 1
        assert client.gather(futures) == [0, 2, 4, 6]
        logs = cluster.get_logs()["cluster"]
        assert "registered" in logs and "retired" in logs, logs[-2000:]


# ------------------------------------------------------------ the pure policy
def load(*processing: int, starting: int = 0, demand: int = 0, threads: int = 1) -> Load:
    workers = tuple(
        WorkerLoad(name=str(i), nthreads=threads, processing=p, memory=100 * i)
        for i, p in enumerate(processing)
    )
    return Load(workers, starting, demand, threads)


def test_policy_grows_at_once_within_bounds() -> None:
    policy = AdaptivePolicy(minimum=1, maximum=4, wait_count=2)
    assert policy.recommend(load(demand=0)) == (1, [])  # the minimum, from nothing
    assert policy.recommend(load(1, demand=10)) == (4, [])  # capped at the maximum
    assert policy.recommend(load(1, 1, demand=3, threads=2)) == (2, [])  # 3 tasks, 2 threads
    # Units still starting count: no second job for the same demand.
    assert policy.recommend(load(1, starting=1, demand=2)) == (2, [])


def test_policy_shrinks_after_wait_count_idle_first_least_memory_first() -> None:
    policy = AdaptivePolicy(minimum=0, maximum=4, wait_count=3)
    idle = load(0, 0, 1, demand=1)
    assert policy.recommend(idle) == (3, [])
    assert policy.recommend(idle) == (3, [])
    # Third vote in a row: the two idle workers go, the one with less memory first.
    assert policy.recommend(idle) == (1, ["0", "1"])
    # A vote to grow resets the count.
    policy.recommend(idle)
    policy.recommend(load(1, 1, 1, demand=5))
    assert policy.recommend(idle) == (3, [])
    # Busy workers are never picked; starting units go before any worker.
    policy = AdaptivePolicy(minimum=0, maximum=4, wait_count=1)
    assert policy.recommend(load(1, 1, starting=2, demand=2)) == (2, [])
    assert policy.recommend(load(0, 1, starting=1, demand=1)) == (1, ["0"])


def test_policy_keeps_one_worker_while_results_are_held() -> None:
    policy = AdaptivePolicy(minimum=0, maximum=4, wait_count=1)
    holding = Load((WorkerLoad("0", 1, 0, 10, nkeys=1), WorkerLoad("1", 1, 0, 5)), 0, 0, 1)
    assert policy.recommend(holding) == (1, ["1"])
    empty = Load((WorkerLoad("0", 1, 0, 0),), 0, 0, 1)
    assert policy.recommend(empty) == (0, ["0"])
