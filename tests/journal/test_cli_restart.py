"""A scheduler started with ``regrow scheduler --journal``, SIGKILLed, and started
again by hand on the same port and journal: workers (kept by their nannies) and the
client find it again by themselves, and futures waiting in result() just return."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from regrow import Client
from regrow.scheduler.journal import Journal
from regrow.testing import wait_until

from .helpers import cli_cluster
from .tasks import add, pid, slow_inc

N = 40


def test_cli_scheduler_restarted_by_hand(tmp_path: Path) -> None:
    journal = tmp_path / "j.db"
    with (
        cli_cluster(tmp_path, journal) as cluster,
        Client(cluster.address, token=cluster.token, set_as_default=False) as client,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        before = client.scheduler_info()["workers"]
        assert len(before) == 2
        worker_pids = sorted(w["pid"] for w in before.values())
        futures = client.map(slow_inc, range(N), seconds=0.1, pure=False)
        total = client.submit(sum, futures)
        pair = client.submit(add, None, "pair", futures[0], futures[-1])
        # Threads blocked in result() across the kill and the restart.
        waiters = [pool.submit(f.result, timeout=90) for f in (total, pair, *futures[-2:])]
        wait_until(lambda: sum(f.done() for f in futures) >= 8, timeout=60, what="8 futures done")
        cluster.kill_scheduler()
        assert not total.done() and not any(w.done() for w in waiters)
        # The journal survives the kill and holds what the clients asked for.
        j = Journal(journal)
        try:
            assert len(j.load().tasks) >= N + 2
        finally:
            j.close()  # folds the WAL into the file: the same content, as the next run reads it
        assert cluster.start_scheduler() == cluster.address
        assert [w.result(timeout=90) for w in waiters] == [
            sum(range(1, N + 1)),
            1 + N,
            N - 1,
            N,
        ]
        assert client.gather(futures, timeout=60) == list(range(1, N + 1))
        assert client.status == "running"
        # The same worker processes: they outlived the scheduler and came back to it.
        after = client.scheduler_info()["workers"]
        assert sorted(w["pid"] for w in after.values()) == worker_pids
        assert sorted(client.run(pid).values()) == worker_pids
        # New work is accepted as usual.
        assert client.submit(slow_inc, 100, 0.0).result(timeout=30) == 101


def test_a_journaled_scheduler_stopped_by_sigterm_keeps_its_workers(tmp_path: Path) -> None:
    """A rollout or a moved pod stops the scheduler with SIGTERM: with a journal it is
    coming back, so its workers stay up (the same processes) with their results, and
    nothing is recomputed. Only a client's shutdown() stops the workers."""
    journal = tmp_path / "j.db"
    with (
        cli_cluster(tmp_path, journal) as cluster,
        Client(cluster.address, token=cluster.token, set_as_default=False) as client,
    ):
        before = {w["pid"] for w in client.scheduler_info()["workers"].values()}
        futures = [client.submit(pid, pure=False) for _ in range(6)]
        ran_on = client.gather(futures)
        assert cluster.scheduler is not None
        cluster.scheduler.terminate()  # SIGTERM, to the pid we started
        assert cluster.scheduler.wait(timeout=30) == 0
        assert all(w.poll() is None for w in cluster.workers), "a nanny exited"
        cluster.start_scheduler()
        wait_until(
            lambda: {w["pid"] for w in client.scheduler_info()["workers"].values()} == before,
            timeout=30,
            what="the same worker processes registered again",
        )
        assert client.gather(futures) == ran_on
        assert client.scheduler_info()["counts"].get("recomputed", 0) == 0
        client.shutdown()
        for w in cluster.workers:
            assert w.wait(timeout=30) == 0
