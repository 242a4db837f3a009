"""Scattered data and a journaled scheduler killed at the worst moments (found by the
chaos soak, `regrow chaos`): a scatter the client heard back about is journaled, and a
restarted scheduler waits for every worker that was registered (any may hold a copy),
not for the one holder the journal happened to name, nor for a worker already gone."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from chaos.helpers import Frozen, sigkill, wait_for_workers, workers
from regrow.scheduler.journal import Journal
from regrow.testing import MakeCluster, wait_until

from .tasks import inc


def test_a_scatter_acknowledged_is_journaled(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(n_workers=2, journal=tmp_path / "j.db")
    for trial in range(5):
        data = [f"trial-{trial}-{i}-" * 50 for i in range(8)]  # 1 KB values
        futures = client.scatter(data, replicas=2)
        # At once: the scheduler had no time to write anything it had not written
        # before it answered.
        scheduler = cluster.scheduler_proc
        assert scheduler is not None
        os.kill(scheduler.pid, signal.SIGKILL)
        assert client.gather(client.map(len, futures), timeout=60) == [len(d) for d in data]
        wait_until(lambda n=trial: cluster.scheduler_restarts > n, timeout=30)


def test_the_journal_names_the_registered_workers(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    journal = tmp_path / "j.db"
    _, client = make_cluster(n_workers=2, journal=journal)
    assert client.gather(client.map(inc, range(10)), timeout=30) == list(range(1, 11))

    def journaled() -> set[str]:
        j = Journal(journal)
        try:
            return set(j.load().workers or ())
        finally:
            j.close()

    wait_until(lambda: journaled() == set(workers(client)), timeout=10, what="journaled")
    victim, pid = next((a, w["pid"]) for a, w in workers(client).items())
    sigkill(pid)  # its nanny starts another: a new address
    after = wait_for_workers(client, 2, not_pids=[pid])
    assert victim not in after
    # The dead one is not waited for by a scheduler restarted now; the new one is.
    wait_until(lambda: journaled() == set(after), timeout=10, what="the new workers journaled")


def test_replicas_survive_a_holder_frozen_then_a_scheduler_kill(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Copies on A and B; A freezes past the heartbeat timeout and is removed, so the
    # scheduler makes a copy on C; A comes back and is told to drop what it held. The
    # journal's one location for the key still says A: a restarted scheduler that
    # waited for A only could finish its recovery before B and C were back, and take
    # the data for lost.
    cluster, client = make_cluster(
        n_workers=3, journal=tmp_path / "j.db", heartbeat_timeout=2.0, inline_result_bytes=0
    )
    futures = client.scatter([b"x" * 100_000 * (i + 1) for i in range(4)], replicas=2)
    holders = client.who_has(futures)
    a = holders[futures[0].key][0]
    with Frozen(workers(client)[a]["pid"]):
        wait_until(lambda: a not in workers(client), timeout=30, what="A removed")
        wait_until(
            lambda: all(len(h) == 2 for h in client.who_has(futures).values()),
            timeout=30,
            what="two copies again",
        )
    wait_until(lambda: len(workers(client)) == 3, timeout=30, what="A back")
    start = time.time()
    cluster.restart_scheduler_process()
    lengths = client.gather(client.map(len, futures), timeout=60)
    assert lengths == [100_000 * (i + 1) for i in range(4)]
    assert all(f.status == "finished" for f in futures)
    lost = [
        m["text"] for t, _, m in client.get_events("workers") if t >= start and "lost" in m["text"]
    ]
    assert not any("scattered" in m for m in lost), lost
