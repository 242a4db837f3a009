"""client.run, who_has, scheduler_info, and freeing memory when futures are dropped."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import numpy as np
import pytest

from regrow import Client, LocalCluster
from regrow.testing import wait_until

from .tasks import Gate, MyError, fail, gated, inc, worker_state


def test_scheduler_info_fields(client: Client, cluster: LocalCluster) -> None:
    info = client.scheduler_info()
    assert info["address"] == cluster.scheduler_address == client.scheduler_address
    assert cluster.scheduler_proc is not None and info["pid"] == cluster.scheduler_proc.pid
    assert info["tasks"] == {}
    assert len(info["workers"]) == 2
    names = set()
    for address, w in info["workers"].items():
        assert w["address"] == address and address.startswith("tcp://127.0.0.1:")
        assert w["nthreads"] == 1
        assert isinstance(w["pid"], int) and w["pid"] not in (0, os.getpid())
        assert w["memory"] == 0 and w["nkeys"] == 0 and w["processing"] == 0
        assert w["memory_limit"] == cluster.memory_limit
        names.add(w["name"])
    assert names == {wp.name for wp in cluster.workers}
    assert client.nthreads() == {a: 1 for a in info["workers"]}


def test_scheduler_info_reflects_work(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    f = client.submit(gated, np.ones(10_000), *gate.args)
    gate.wait_started()
    info = client.scheduler_info()
    assert sum(w["processing"] for w in info["workers"].values()) == 1
    assert info["tasks"] == {"processing": 1}
    gate.open()
    f.result(timeout=30)
    info = client.scheduler_info()
    assert info["tasks"] == {"memory": 1}
    (holder,) = client.who_has(f)[f.key]
    assert info["workers"][holder]["nkeys"] == 1
    assert info["workers"][holder]["memory"] >= 80_000
    assert sum(w["processing"] for w in info["workers"].values()) == 0


def test_run_on_every_worker(client: Client) -> None:
    info = client.scheduler_info()["workers"]
    pids = client.run(os.getpid)
    assert pids == {a: w["pid"] for a, w in info.items()}
    assert client.run(lambda x, y=0: x + y, 1, y=2) == {a: 3 for a in info}
    states = client.run(worker_state)
    assert {a: s["pid"] for a, s in states.items()} == pids


def test_run_on_chosen_workers_and_errors(client: Client) -> None:
    info = client.scheduler_info()["workers"]
    first = sorted(info)[0]
    assert list(client.run(os.getpid, workers=[first])) == [first]
    assert list(client.run(os.getpid, workers=info[first]["name"])) == [first]
    with pytest.raises(MyError, match="in run"):
        client.run(fail, "in run")
    assert len(client.run(os.getpid)) == 2  # the workers survive


def test_who_has(client: Client) -> None:
    workers = set(client.scheduler_info()["workers"])
    fs = client.map(inc, range(10))
    client.gather(fs, timeout=30)
    holders = client.who_has(fs)
    assert set(holders) == {f.key for f in fs}
    assert all(len(h) == 1 and h[0] in workers for h in holders.values())
    assert client.who_has(fs[0]) == {fs[0].key: holders[fs[0].key]}
    assert set(client.who_has()) == {f.key for f in fs}


def cluster_holds_nothing(client: Client) -> bool:
    info = client.scheduler_info()
    if info["tasks"] or any(w["nkeys"] or w["memory"] for w in info["workers"].values()):
        return False
    return all(s["data"] == 0 and s["tasks"] == 0 for s in client.run(worker_state).values())


def test_memory_released_when_futures_are_dropped(client: Client) -> None:
    fs = client.map(lambda n: np.ones(n), range(1000, 1100))
    scattered = client.scatter([np.zeros(5000), np.ones(5000)])
    total = client.submit(lambda xs: sum(float(x.sum()) for x in xs), [*fs, *scattered])
    bad = client.submit(fail, "kept error", total)
    with pytest.raises(MyError):
        bad.result(timeout=30)
    assert total.result(timeout=30) > 0
    info = client.scheduler_info()
    assert info["tasks"]["memory"] == len(fs) + len(scattered) + 1
    assert info["tasks"]["erred"] == 1
    assert sum(s["data"] for s in client.run(worker_state).values()) >= len(fs) + 3
    del fs, scattered, total, bad
    gc.collect()
    wait_until(lambda: cluster_holds_nothing(client), timeout=10, what="every key freed")


def test_intermediate_results_are_freed(client: Client) -> None:
    x = client.submit(inc, 0)
    for _ in range(50):
        x = client.submit(inc, x)
    assert x.result(timeout=30) == 51
    # Only the last result is held (the others stay as lineage, without data).
    wait_until(lambda: client.scheduler_info()["tasks"].get("memory") == 1, timeout=10)
    assert set(client.scheduler_info()["tasks"]) <= {"memory", "released"}
    wait_until(lambda: sum(s["data"] for s in client.run(worker_state).values()) == 1)
    del x
    wait_until(lambda: cluster_holds_nothing(client), timeout=10, what="every key freed")


def test_release_while_running(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    f = client.submit(gated, 1, *gate.args)
    gate.wait_started()
    f.release()
    wait_until(lambda: not client.scheduler_info()["tasks"], timeout=10)
    gate.open()
    wait_until(lambda: cluster_holds_nothing(client), timeout=10, what="every key freed")


def test_release_while_running_then_want_it_again(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    f = client.submit(gated, 2, *gate.args, workers=workers[0])
    key = f.key
    gate.wait_started()
    del f
    gc.collect()
    wait_until(lambda: not client.scheduler_info()["tasks"], timeout=10, what="key released")
    g = client.submit(gated, 2, *gate.args, workers=workers[0])
    assert g.key == key
    gate.open()
    assert g.result(timeout=30) == 2
