"""Scattered data and the death of the workers holding it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from regrow import LostDataError
from regrow.testing import wait_until

from .helpers import MakeCluster, lost_events, sigkill, wait_for_workers, workers
from .tasks import first_len, gated

DATA = list(range(100_000))


def test_scatter_replicas(make_cluster: MakeCluster) -> None:
    _, client = make_cluster()
    [fut] = client.scatter([DATA], replicas=2)
    holders = client.who_has(fut)[fut.key]
    assert len(holders) == 2, holders
    info = workers(client)
    victim = holders[0]
    victim_pid = info[victim]["pid"]
    sigkill(victim_pid)
    wait_until(lambda: victim not in workers(client), timeout=10, what="the holder is removed")
    # The surviving copy serves reads and tasks. (The restarted worker may
    # already hold a fresh copy: the nanny can bring it back that fast.)
    now = client.who_has(fut)[fut.key]
    assert holders[1] in now and victim not in now, now
    assert fut.result(timeout=10) == DATA
    assert client.submit(first_len, fut).result(timeout=30) == len(DATA)
    # The fresh worker gets a new copy: two holders again.
    fresh = set(wait_for_workers(client, 2, not_pids={victim_pid})) - {holders[1]}
    wait_until(
        lambda: sorted(client.who_has(fut)[fut.key]) == sorted({holders[1], *fresh}),
        timeout=15,
        what="the key is copied to the fresh worker",
    )
    assert fut.status == "finished"
    assert fut.result(timeout=10) == DATA


def test_scatter_unreplicated_lost(make_cluster: MakeCluster, tmp_path: Path) -> None:
    _, client = make_cluster()
    info = workers(client)
    holder = sorted(info)[0]
    holder_pid, holder_nanny = info[holder]["pid"], info[holder]["nanny"]
    [fut] = client.scatter([DATA], workers=[holder])
    assert client.who_has(fut)[fut.key] == [holder]
    gate, started = tmp_path / "gate", tmp_path / "started"
    # A dependent running on the holder when it dies, held there by a gate.
    running = client.submit(gated, fut, str(gate), str(started), workers=[holder_nanny])
    try:
        wait_until(started.exists, timeout=30, what="the dependent starts")
        start = time.time()
        sigkill(holder_pid)
        with pytest.raises(LostDataError, match=fut.key):
            fut.result(timeout=15)
        with pytest.raises(LostDataError):
            running.result(timeout=15)
        # A dependent submitted afterwards errs at once too.
        later = client.submit(first_len, fut)
        with pytest.raises(LostDataError):
            later.result(timeout=15)
        assert fut.status == running.status == later.status == "error"
        assert lost_events(client, since=start)
    finally:
        gate.touch()
    # The cluster is whole again and computes.
    wait_for_workers(client, 2, not_pids={holder_pid})
    assert client.submit(first_len, [1, 2, 3]).result(timeout=30) == 3
