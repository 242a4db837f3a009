"""What a client lets go of around a scheduler's death stays let go: releases sent
just before a SIGKILL (before the journal had them) or while the scheduler is away,
and cancelled futures, which stay cancelled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from regrow import Client
from regrow.testing import MakeCluster, wait_until

from .tasks import inc, slow_inc


def _empty(client: Client) -> bool:
    info = client.scheduler_info()
    return not info["tasks"] and all(w["nkeys"] == 0 for w in info["workers"].values())


def test_release_just_before_kill(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    futures = client.map(inc, range(200))
    assert client.gather(futures, timeout=60) == list(range(1, 201))
    # Submitted, and dropped at once: the kill may come before their submission is
    # acknowledged (the client then sends it again, but must not want them any more).
    dropped = client.map(inc, range(1000, 1050))
    del futures, dropped  # the releases leave at once; the kill follows before the journal
    cluster.restart_scheduler_process()
    wait_until(lambda: client.status == "running", timeout=30, what="client back")
    wait_until(lambda: _empty(client), timeout=30, what="the released keys are freed")
    # The same (pure) keys again: computed and reported as if new.
    assert client.gather(client.map(inc, range(200)), timeout=60) == list(range(1, 201))


def test_release_while_scheduler_away(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    futures = client.map(inc, range(100))
    assert client.gather(futures, timeout=60) == list(range(1, 101))
    scheduler = cluster.scheduler_proc
    assert scheduler is not None
    os.kill(scheduler.pid, signal.SIGKILL)  # the cluster's watcher starts a new one
    wait_until(lambda: client.status != "running", timeout=30, what="client notices")
    del futures
    wait_until(lambda: cluster.scheduler_proc is not scheduler, timeout=30, what="restart")
    wait_until(lambda: client.status == "running", timeout=30, what="client back")
    wait_until(lambda: _empty(client), timeout=30, what="the released keys are freed")
    assert client.gather(client.map(inc, range(100)), timeout=60) == list(range(1, 101))


def test_cancelled_stay_cancelled(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    done = client.submit(inc, 1)
    assert done.result(timeout=30) == 2
    running = client.submit(slow_inc, 1, 1.0)
    kept = client.submit(slow_inc, 2, 0.5)
    client.cancel([done, running])
    assert done.cancelled() and running.cancelled()
    cluster.restart_scheduler_process()
    assert kept.result(timeout=60) == 3
    wait_until(lambda: client.status == "running", timeout=30, what="client back")
    assert done.cancelled() and running.cancelled(), (done.status, running.status)
    info = client.scheduler_info()
    assert info["tasks"] == {"memory": 1}, info["tasks"]


def test_requests_in_flight_at_kill(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Results stay with their workers only: the client must ask the scheduler for them.
    cluster, client = make_cluster(journal=tmp_path / "j.db", inline_result_bytes=0)
    futures = client.map(inc, range(100))
    assert client.gather(futures, timeout=60) == list(range(1, 101))
    for _ in range(2):
        scheduler = cluster.scheduler_proc
        assert scheduler is not None
        os.kill(scheduler.pid, signal.SIGKILL)  # the cluster's watcher starts a new one
        # At once, before the client may have noticed: gather asks the scheduler where
        # the results are, then fetches them from the workers.
        assert client.gather(futures, timeout=60) == list(range(1, 101))
        restarted = cluster.scheduler_proc
        assert restarted is not None and restarted is not scheduler
        os.kill(restarted.pid, signal.SIGKILL)  # and again; scheduler_info must wait for it
        # It answers once the new scheduler serves, whether or not the workers have
        # registered with it yet (under load they may not have): never more than two.
        assert len(client.scheduler_info()["workers"]) <= 2
        wait_until(
            lambda: len(client.scheduler_info()["workers"]) == 2,
            timeout=30,
            what="both workers back",
        )
        assert client.who_has(futures[:3])
