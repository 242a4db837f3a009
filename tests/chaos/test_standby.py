"""A nanny's standby worker process: started ahead with its imports done, it takes over
the moment the worker dies, and another standby is started behind it."""

from __future__ import annotations

import psutil

from regrow.testing import wait_until

from .helpers import MakeCluster, gone, sigkill, wait_for_workers, workers
from .tasks import inc_sleep


def live_children(proc: psutil.Process) -> list[psutil.Process]:
    return [p for p in proc.children() if not gone(p)]


def test_standby_takes_over_when_the_worker_dies(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    [info] = workers(client).values()
    first = info["pid"]
    nanny = psutil.Process(first).parent()
    assert nanny is not None
    wait_until(lambda: len(live_children(nanny)) == 2, timeout=30, what="a standby process")
    [standby] = [p for p in live_children(nanny) if p.pid != first]

    sigkill(first)
    [info] = wait_for_workers(client, 1, not_pids=[first]).values()
    assert info["pid"] == standby.pid  # the standby took over: no fresh interpreter
    assert client.submit(inc_sleep, 1, seconds=0.0, pure=False).result(timeout=30) == 2
    # And another stands by behind it.
    wait_until(
        lambda: len(live_children(nanny)) == 2 and first not in {p.pid for p in nanny.children()},
        timeout=30,
        what="a new standby process",
    )


def test_no_standby_when_turned_off(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, standby_worker=False)
    [info] = workers(client).values()
    nanny = psutil.Process(info["pid"]).parent()
    assert nanny is not None
    assert [p.pid for p in live_children(nanny)] == [info["pid"]]
    sigkill(info["pid"])
    [info] = wait_for_workers(client, 1, not_pids=[info["pid"]]).values()
    assert [p.pid for p in live_children(nanny)] == [info["pid"]]
