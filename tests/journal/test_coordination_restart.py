"""Coordination primitives held by a journaled scheduler survive its SIGKILL: what a
lock, semaphore, event, variable, queue, dataset or subscription held is there when it
is back, futures held in values stay computed, a request waiting at the kill is asked
again and answered, and a change whose answer was lost is not made twice."""

from __future__ import annotations

import threading
from pathlib import Path

import regrow
from conftest import MakeCluster
from regrow.testing import wait_until

from .tasks import inc


def test_primitives_survive_a_scheduler_kill(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    lock = regrow.Lock("held", client=client)
    assert lock.acquire(timeout=5)
    sem = regrow.Semaphore(max_leases=2, name="pool", client=client)
    assert sem.acquire(timeout=5)
    regrow.Event("ready", client=client).set()
    future = client.submit(inc, 41)
    var = regrow.Variable("v", client=client)
    var.set({"future": future, "text": "é", "n": [1, 2.5, None]})
    queue = regrow.Queue("q", client=client)
    for i in range(5):
        queue.put(i)
    queue.put(client.submit(inc, 99))
    client.publish_dataset(answer=future)
    sub = regrow.Sub("news", client=client)
    pub = regrow.Pub("news", client=client)
    pub.put("before")
    assert future.result(timeout=30) == 42
    key = future.key
    del future  # only the variable, the queue and the dataset hold it now

    cluster.restart_scheduler_process()
    wait_until(lambda: client.status == "running", timeout=30, what="client back")

    assert lock.locked()
    other = regrow.Lock("held", client=client)
    assert other.acquire(timeout=0.2) is False  # still ours
    lock.release()
    assert other.acquire(timeout=5)
    other.release()
    assert sem.get_value() == 1
    sem.release()
    assert regrow.Event("ready", client=client).is_set()
    value = var.get(timeout=5)
    assert value["text"] == "é" and value["n"] == [1, 2.5, None]
    assert value["future"].key == key
    assert value["future"].result(timeout=30) == 42  # kept computed across the kill
    assert [queue.get(timeout=5) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert queue.get(timeout=5).result(timeout=30) == 100
    assert queue.qsize() == 0
    assert client.list_datasets() == ["answer"]
    assert client.get_dataset("answer").result(timeout=30) == 42
    assert sub.get(timeout=5) == "before"
    pub.put("after")
    assert sub.get(timeout=5) == "after"


def test_a_waiting_acquire_is_granted_after_a_kill(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """A client blocked in ``Lock.acquire`` when the scheduler dies asks again once it
    is back, and gets the lock when its holder releases it; a blocked ``Queue.get`` gets
    the item put after the restart, once."""
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    holder = regrow.Lock("l", client=client)
    assert holder.acquire(timeout=5)
    got: list[object] = []

    def blocked() -> None:
        got.append(regrow.Lock("l", client=client).acquire(timeout=60))
        got.append(regrow.Queue("jobs", client=client).get(timeout=60))

    thread = threading.Thread(target=blocked)
    thread.start()
    wait_until(
        lambda: client.scheduler_info()["coordination_waiting"] == 1,
        timeout=10,
        what="the acquire waits on the scheduler",
    )
    cluster.restart_scheduler_process()
    wait_until(lambda: client.status == "running", timeout=30, what="client back")
    holder.release()
    regrow.Queue("jobs", client=client).put("job-1")
    thread.join(timeout=60)
    assert got == [True, "job-1"]
    assert regrow.Queue("jobs", client=client).qsize() == 0
