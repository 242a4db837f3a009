"""A LocalCluster keeps the number of workers it was asked for: a nanny killed with
SIGKILL is replaced; one told to close (a retired worker) is not."""

from __future__ import annotations

import operator
import os
import signal

import psutil

from regrow.testing import MakeCluster, wait_until


def test_a_killed_nanny_is_replaced(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=2)
    before = {wp.pid for wp in cluster.workers}
    victim = cluster.workers[0]
    os.kill(victim.pid, signal.SIGKILL)  # a nanny this cluster started, by its pid
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL

    def two_new() -> bool:
        pids = {wp.pid for wp in cluster.workers}
        live = [wp for wp in cluster.workers if wp.proc.poll() is None and wp.address]
        return len(live) == 2 and victim.pid not in pids and len(pids - before) == 1

    wait_until(two_new, timeout=30, what="a new nanny in the killed one's place")
    wait_until(
        lambda: len(client.scheduler_info()["workers"]) == 2,
        timeout=30,
        what="two workers registered",
    )
    assert client.submit(operator.add, 1, 2, pure=False).result(timeout=30) == 3
    # The client's event log says what happened, and why.
    replaced = f"the nanny of worker {victim.name} (pid {victim.pid}), killed by SIGKILL"
    wait_until(
        lambda: any(replaced in m["text"] for _, _, m in client.get_events("workers")),
        timeout=10,
        what="the replacement in get_events('workers')",
    )
    # The new nanny is a child of this process's cluster, as the others.
    assert all(psutil.Process(wp.pid).ppid() == os.getpid() for wp in cluster.workers)


def test_a_retired_worker_is_not_replaced(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=2)
    address = next(iter(client.scheduler_info()["workers"]))
    client.retire_workers([address])
    wait_until(
        lambda: len([wp for wp in cluster.workers if wp.proc.poll() is None]) == 1,
        timeout=30,
        what="its nanny gone",
    )
    assert len(cluster.workers) == 2  # the exited one is still listed, and none was added
    assert len(client.scheduler_info()["workers"]) == 1
