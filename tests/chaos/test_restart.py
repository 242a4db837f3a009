"""client.restart(): cancels every future and replaces every worker, frozen ones too."""

from __future__ import annotations

import time

import psutil
import pytest

from regrow import CancelledError, Client
from regrow.testing import wait_until

from .helpers import Frozen, MakeCluster, gone, pids, workers
from .tasks import slow_inc


def test_restart(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster()
    before = pids(client)
    old_procs = [psutil.Process(pid) for pid in before.values()]
    futs = client.map(slow_inc, range(200), seconds=0.05)
    with Client(cluster, set_as_default=False) as other:
        # Another client's futures: only the scheduler can tell it about the restart.
        theirs = other.map(slow_inc, range(1000, 1100), seconds=0.05)
        wait_until(lambda: sum(f.done() for f in futs) >= 10, timeout=30, what="10 done")
        assert not all(f.done() for f in futs)

        client.restart(timeout=30)
        # Every old future is cancelled, finished or not.
        assert [f.status for f in futs] == ["cancelled"] * len(futs)
        with pytest.raises(CancelledError):
            futs[0].result(timeout=5)
        with pytest.raises(CancelledError):
            futs[-1].result(timeout=5)
        wait_until(
            lambda: all(f.status == "cancelled" for f in theirs),
            timeout=10,
            what="the other client's futures are cancelled",
        )
    # restart() returned once fresh workers had registered: same nannies, new processes.
    after = pids(client)
    assert set(after) == set(before)
    assert not set(after.values()) & set(before.values())
    assert all(gone(p) for p in old_procs)
    info = client.scheduler_info()
    assert not info["tasks"]
    assert all(w["nkeys"] == 0 and w["processing"] == 0 for w in info["workers"].values())

    # New work runs, including a key computed before the restart (it runs anew).
    assert client.submit(slow_inc, 1000, 0.0).result(timeout=30) == 1001
    assert client.submit(slow_inc, 0, 0.05).result(timeout=30) == 1
    assert client.gather(client.map(slow_inc, range(20), seconds=0.0), timeout=30) == list(
        range(1, 21)
    )


def test_restart_with_frozen_worker(make_cluster: MakeCluster) -> None:
    # A long heartbeat timeout: the frozen worker is not removed for silence, so only
    # its nanny's SIGKILL can get the restart through.
    _, client = make_cluster(heartbeat_timeout=60.0)
    before = pids(client)
    futs = client.map(slow_inc, range(100), seconds=0.05)
    wait_until(lambda: sum(f.done() for f in futs) >= 5, timeout=30, what="5 done")
    victim = sorted(before.values())[0]
    with Frozen(victim) as frozen:
        t0 = time.monotonic()
        client.restart(timeout=30)
        took = time.monotonic() - t0
        assert gone(frozen.proc)
    assert took < 15, took
    assert all(f.cancelled() for f in futs)
    after = pids(client)
    assert set(after) == set(before)
    assert not set(after.values()) & set(before.values())
    assert len(workers(client)) == 2
    assert client.gather(client.map(slow_inc, range(10), seconds=0.0), timeout=30) == list(
        range(1, 11)
    )
