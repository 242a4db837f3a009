"""A nanny told to stop (SIGTERM: Slurm's scancel, preemption or time limit; a deleted
Kubernetes pod; an operator) hands its worker's results over before it goes."""

from __future__ import annotations

import signal
import time

from regrow.testing import MakeCluster, wait_until

from .tasks import block, double


def test_sigterm_retires_the_worker_gracefully(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=2)
    futures = client.map(block, range(20))
    values = client.gather(futures)
    info = client.scheduler_info()["workers"]
    victim = cluster.workers[0]
    (worker,) = [a for a, w in info.items() if w["nanny"] == victim.address]
    held = [k for k, holders in client.who_has(futures).items() if holders == [worker]]
    assert held, "the test needs results that only the victim holds"
    victim.proc.send_signal(signal.SIGTERM)
    assert victim.proc.wait(timeout=30) == 0
    wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=10)
    (survivor,) = client.scheduler_info()["workers"]
    assert all(h == [survivor] for h in client.who_has(futures).values())
    assert client.gather(futures) == values
    counts = client.scheduler_info()["counts"]
    assert counts.get("recomputed", 0) == 0 and counts.get("lost", 0) == 0, counts
    assert "is stopping: retiring" in cluster.get_logs()["scheduler"]


def test_sigterm_to_the_last_holder_stops_it_without_waiting(make_cluster: MakeCluster) -> None:
    """Nobody can take its results: the scheduler says so at once, and the nanny stops
    (its results are lost and would be recomputed), well before the 20 s it would wait."""
    cluster, client = make_cluster(n_workers=1)
    futures = client.map(double, range(5))
    client.gather(futures)
    (victim,) = cluster.workers
    started = time.monotonic()
    victim.proc.send_signal(signal.SIGTERM)
    assert victim.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
