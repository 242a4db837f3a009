"""Coordination primitives held by the scheduler (Lock, Semaphore, Event, Variable,
Queue, Pub/Sub, datasets), used from clients and from tasks on real clusters."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import regrow
from conftest import MakeCluster
from regrow.testing import wait_until


def test_lock_is_released_to_the_next_waiter_when_its_holder_is_killed(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """A task takes the lock and its worker is SIGKILLed while it holds it: the lease
    goes with that worker's process, and a waiting client gets the lock."""
    held = tmp_path / "held"

    def hold(path: str) -> None:
        lock = regrow.Lock("resource")
        assert lock.acquire()
        Path(path).write_text(str(os.getpid()))
        wait_until(lambda: False, timeout=600, what="killed")  # holds until it is killed

    # The lease goes when the nanny reports the worker's process dead (its tasks' client
    # died with it), not after client_grace, made far longer here than the wait below.
    _, client = make_cluster(n_workers=2, threads_per_worker=1, client_grace=120.0)
    holder = client.submit(hold, str(held), pure=False, retries=0)
    wait_until(held.exists, timeout=30, what="the task holding the lock")
    lock = regrow.Lock("resource", client=client)
    assert lock.acquire(timeout=0.2) is False
    assert lock.locked()
    waiter_got: list[bool] = []
    waiter = threading.Thread(target=lambda: waiter_got.append(lock.acquire(timeout=60)))
    waiter.start()
    os.kill(int(held.read_text()), signal.SIGKILL)
    waiter.join(timeout=60)
    assert waiter_got == [True]
    lock.release()
    del holder


def test_lock_serializes_tasks(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """20 tasks on 2 workers of 2 threads increment a counter in a file under one lock:
    no increment is lost."""
    counter = tmp_path / "counter"
    counter.write_text("0")

    def bump(i: int) -> int:
        with regrow.Lock("counter"):
            n = int(counter.read_text())
            counter.write_text(str(n + 1))
        return i

    _, client = make_cluster(n_workers=2, threads_per_worker=2)
    client.gather(client.map(bump, range(20)))
    assert counter.read_text() == "20"


def test_semaphore_bounds_concurrency(make_cluster: MakeCluster, tmp_path: Path) -> None:
    def guarded(i: int, sem: regrow.Semaphore) -> int:
        with sem:
            marker = tmp_path / f"in-{i}"
            marker.touch()
            inside = len(list(tmp_path.glob("in-*")))
            time.sleep(0.05)  # the guarded work: others try to get in meanwhile
            marker.unlink()
            return inside

    _, client = make_cluster(n_workers=2, threads_per_worker=2)
    sem = regrow.Semaphore(max_leases=2, name="two", client=client)
    seen = client.gather(client.map(guarded, range(30), sem=sem))
    assert max(seen) <= 2
    assert sem.get_value() == 0
    # Two leases taken: a third waits, and gets one when a holder lets go.
    a, b, c = (regrow.Semaphore(2, name="two", client=client) for _ in range(3))
    assert a.acquire() and b.acquire(timeout=1)
    assert c.acquire(timeout=0.2) is False
    assert sem.get_value() == 2
    a.release()
    assert c.acquire(timeout=10)
    b.release()
    c.release()
    with pytest.raises(ValueError, match="max_leases"):
        regrow.Semaphore(max_leases=0)
    other = regrow.Semaphore(max_leases=3, name="two", client=client)
    with pytest.raises(ValueError, match="exists with max_leases=2"):
        other.acquire()


def test_queue_shared_by_producer_and_consumer_tasks(make_cluster: MakeCluster) -> None:
    def produce(n: int) -> int:
        q = regrow.Queue("work")
        for i in range(n):
            q.put(i)
        q.put(None)
        return n

    def consume() -> int:
        q = regrow.Queue("work")
        total = 0
        while (item := q.get(timeout=60)) is not None:
            total += item
        return total

    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    consumer = client.submit(consume, pure=False)
    producer = client.submit(produce, 100, pure=False)
    assert producer.result(timeout=60) == 100
    assert consumer.result(timeout=60) == sum(range(100))
    q = regrow.Queue("work", client=client)
    assert q.qsize() == 0
    with pytest.raises(TimeoutError):
        q.get(timeout=0.1)
    q.put("a")
    q.put({"b": 1})
    assert q.get(batch=True) == ["a", {"b": 1}]


def test_queue_holds_futures_until_they_are_taken(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, threads_per_worker=1)
    q = regrow.Queue(client=client, maxsize=2)
    future = client.submit(lambda: 41 + 1)
    key = future.key
    q.put(future)
    del future
    # The client let its future go: the queue still holds the result.
    wait_until(lambda: not client.who_has().get(key), timeout=10, what="the client's future gone")
    taken = q.get(timeout=10)
    assert isinstance(taken, regrow.Future) and taken.key == key
    assert taken.result(timeout=10) == 42
    # maxsize: a third put waits for room.
    q.put(1)
    q.put(2)
    with pytest.raises(TimeoutError):
        q.put(3, timeout=0.2)


def test_variable_between_client_and_tasks(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, threads_per_worker=2)
    v = regrow.Variable("stop", client=client)
    with pytest.raises(TimeoutError):
        v.get(timeout=0.1)

    def waits_for_it() -> object:
        return regrow.Variable("stop").get(timeout=60)

    reader = client.submit(waits_for_it, pure=False)
    v.set({"stop": True, "n": [1, 2, 3]})
    assert reader.result(timeout=30) == {"stop": True, "n": [1, 2, 3]}
    f = client.submit(lambda: "held")
    v.set(f)
    assert v.get().result(timeout=10) == "held"
    v.delete()
    with pytest.raises(TimeoutError):
        v.get(timeout=0)


def test_event_wakes_waiting_tasks(make_cluster: MakeCluster) -> None:
    def wait_for_go() -> bool:
        return bool(regrow.Event("go").wait(timeout=60))

    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    waiting = client.map(lambda _: wait_for_go(), range(2), pure=False)
    ev = regrow.Event("go", client=client)
    assert not ev.is_set()
    assert ev.wait(timeout=0.1) is False
    ev.set()
    assert client.gather(waiting) == [True, True]
    assert ev.is_set()
    ev.clear()
    assert not ev.is_set()


def test_datasets(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    other = regrow.Client(client.scheduler_address, set_as_default=False, token=client.token)
    try:
        x = client.submit(lambda: list(range(5)))
        client.publish_dataset(x, name="x")
        client.publish_dataset(y={"plain": 1})
        assert client.list_datasets() == ["x", "y"]
        with pytest.raises(KeyError, match="exists already"):
            client.publish_dataset(z=1, y=2)  # z is published, y is refused
        del x
        got = other.get_dataset("x")
        assert got.result(timeout=10) == [0, 1, 2, 3, 4]
        assert other.datasets["y"] == {"plain": 1}
        assert other.get_dataset("nope", default=None) is None
        with pytest.raises(KeyError, match="no dataset named 'nope'"):
            other.get_dataset("nope")
        client.unpublish_dataset("x")
        assert "x" not in client.list_datasets()
        client.datasets["w"] = 3
        assert other.get_dataset("w") == 3
    finally:
        other.close()


def test_pub_sub_between_tasks_and_a_client(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, threads_per_worker=1)
    sub = regrow.Sub("news", client=client)

    def publish(n: int) -> int:
        pub = regrow.Pub("news")
        for i in range(n):
            pub.put({"i": i})
        return n

    client.submit(publish, 5, pure=False).result(timeout=30)
    assert [sub.get(timeout=10) for _ in range(5)] == [{"i": i} for i in range(5)]
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.1)
    sub.close()


def test_bad_arguments_say_what_is_wrong(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    with pytest.raises(TypeError, match="name"):
        regrow.Lock(name="", client=client)
    with pytest.raises(TypeError, match="timeout"):
        regrow.Lock(client=client).acquire(timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="released already"):
        regrow.Lock(client=client).release()
    with pytest.raises(TypeError, match="cannot be pickled"):
        regrow.Variable(client=client).set(threading.Lock())
    with pytest.raises(ValueError, match="maxsize"):
        regrow.Queue(maxsize=-1)
