"""Tasks that submit tasks: ``get_client()`` inside a task, ``secede()``/``rejoin()``,
``worker_client()``, on real clusters (dask.distributed's API for it)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import regrow
from conftest import MakeCluster
from regrow.testing import wait_until


def fib(n: int) -> int:
    """Each call above 1 submits its two halves and waits on them without its thread."""
    if n < 2:
        return n
    client = regrow.get_client()
    a = client.submit(fib, n - 1)
    b = client.submit(fib, n - 2)
    regrow.secede()
    x, y = client.gather([a, b])
    regrow.rejoin()
    return x + y


def fib_no_secede(n: int) -> int:
    if n < 2:
        return n
    client = regrow.get_client()
    return int(sum(client.gather([client.submit(fib_no_secede, n - k) for k in (1, 2)])))


def test_recursive_fibonacci_saturates_every_thread_without_deadlock(
    make_cluster: MakeCluster,
) -> None:
    """fib(12) makes 13 distinct keys (fib(k) is one key for every caller, since tasks
    are pure by default), each of those above 1 waiting on two others: far more waiting
    tasks than the cluster's 2 threads and 8 slots. Without secede every thread would
    wait on a task that has no thread to run on."""
    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    assert client.submit(fib, 12).result(timeout=60) == 144
    # The seceded threads left as their tasks ended: one thread per worker again.
    wait_until(
        lambda: all(n == 1 for n in client.run(task_threads).values()),
        timeout=30,
        what="the threads back to one per worker",
    )


def task_threads() -> int:
    import threading

    return len([t for t in threading.enumerate() if t.name.startswith("regrow-task")])


def test_worker_client_submits_and_gathers(make_cluster: MakeCluster) -> None:
    def total(n: int) -> int:
        with regrow.worker_client() as c:
            return int(sum(c.gather(c.map(lambda x: x * x, range(n)))))

    _, client = make_cluster(n_workers=1, threads_per_worker=1)
    # One thread, and the outer task waits on 20 inner ones: only secede lets them run.
    assert client.submit(total, 20).result(timeout=60) == sum(x * x for x in range(20))


def test_secede_rejoin_and_get_worker_outside_a_task_say_why() -> None:
    with pytest.raises(ValueError, match="outside of a task"):
        regrow.secede()
    with pytest.raises(ValueError, match="outside of a task"):
        regrow.rejoin()
    with pytest.raises(ValueError, match="outside of a task"):
        regrow.get_worker()


def test_rejoin_waits_for_a_free_thread(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """A worker of 1 thread: a seceded task lets 200 short tasks run on the thread that
    took its place; once it rejoins, none of them runs while it holds the place (the
    thread that stood in left first), and they go on after it returns."""

    def short(i: int) -> int:
        (tmp_path / f"done-{i}").touch()
        return i

    def outer() -> tuple[int, int]:
        import time

        c = regrow.get_client()
        regrow.secede()
        futures = c.map(short, range(200), pure=False)
        wait_until(lambda: len(list(tmp_path.glob("done-*"))) >= 5, timeout=30, what="runs")
        regrow.rejoin()
        before = len(list(tmp_path.glob("done-*")))
        spin = time.monotonic()
        while time.monotonic() - spin < 0.5:
            pass  # the task's own work, holding the worker's one place
        after = len(list(tmp_path.glob("done-*")))
        c.cancel(futures)
        return before, after

    _, client = make_cluster(n_workers=1, threads_per_worker=1)
    before, after = client.submit(outer, pure=False).result(timeout=60)
    assert before == after, (before, after)
    assert before >= 5


def _kill_me_once(flag: str) -> None:
    if not os.path.exists(flag):
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def parent(flag: str, counter: str) -> int:
    """Submits children with fixed keys, then dies (once) while they run."""
    client = regrow.get_client()
    children = [client.submit(child, i, counter, key=f"child-{i}") for i in range(4)]
    regrow.secede()
    _kill_me_once(flag)
    return int(sum(client.gather(children)))


def child(i: int, counter: str) -> int:
    with open(counter, "a") as f:
        f.write(f"{i}\n")
    return i


def test_a_parent_recomputed_after_its_worker_died_resubmits_the_same_keys(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """The parent's worker is SIGKILLed after it submitted its children: the parent is
    recomputed elsewhere and submits the same keys again, which attach to the children
    that exist or run them once more; the result is right."""
    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    flag, counter = str(tmp_path / "killed"), str(tmp_path / "runs")
    assert client.submit(parent, flag, counter).result(timeout=60) == 0 + 1 + 2 + 3
    assert os.path.exists(flag)
    runs = Path(counter).read_text().split()
    # Each child ran at least once; a child ran again only if the dead worker's client
    # was its only holder (its futures went with that process).
    assert sorted(set(runs)) == ["0", "1", "2", "3"]


def test_many_seceded_tasks_at_once(make_cluster: MakeCluster) -> None:
    """20 tasks on 2 threads, each waiting on a task of its own: 20 threads seceded at
    once, then all of them done; the workers' thread counts come back down."""

    def waiter(i: int) -> int:
        c = regrow.get_client()
        f = c.submit(lambda x: x + 1, i, pure=False)
        regrow.secede()
        out = int(f.result())
        regrow.rejoin()
        return out

    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    assert client.gather(client.map(waiter, range(20), pure=False)) == list(range(1, 21))

    wait_until(
        lambda: all(n == 1 for n in client.run(task_threads).values()),
        timeout=30,
        what="the threads back to one per worker",
    )


def test_a_seceded_task_still_counts_as_processing(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    go = tmp_path / "go"

    def waits() -> int:
        regrow.secede()
        wait_until(go.exists, timeout=30, what="the go file")
        return 1

    _, client = make_cluster(n_workers=1, threads_per_worker=1)
    slow = client.submit(waits, pure=False)
    wait_until(
        lambda: sum(w["processing"] for w in client.scheduler_info()["workers"].values()) == 1,
        timeout=30,
        what="the task running",
    )
    # Seceded: the worker's one thread runs others meanwhile.
    assert client.submit(lambda: 5).result(timeout=30) == 5
    assert slow.status == "pending"
    go.touch()
    assert slow.result(timeout=30) == 1
