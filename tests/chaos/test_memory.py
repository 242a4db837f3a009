"""Memory: results beyond the limit spill to disk; a task that will not stop growing
gets its worker killed by the nanny."""

from __future__ import annotations

import time

import pytest

from regrow import Client, KilledWorker, wait
from regrow.testing import wait_until

from .helpers import MakeCluster, lost_events, pids, wait_for_workers, workers
from .tasks import checksum, hog, make_array, slow_inc

N_ARRAYS = 40
ARRAY_LEN = 5_000_000  # float64: 40 MB each, 1.6 GB in all, 4x the two workers' limits


def _spill_and_sum(client: Client, pin: bool) -> None:
    """40 arrays of 40 MB on two workers of 400 MB, then a checksum of each; with ``pin``
    each checksum runs where its array is (no array crosses the network)."""
    before = pids(client)
    start = time.time()
    arrays = client.map(make_array, range(N_ARRAYS), n=ARRAY_LEN)
    assert not wait(arrays, timeout=90).not_done
    assert all(f.status == "finished" for f in arrays)
    if pin:
        nanny_of = {a: w["nanny"] for a, w in workers(client).items()}
        who_has = client.who_has(arrays)
        sums = [client.submit(checksum, f, workers=[nanny_of[who_has[f.key][0]]]) for f in arrays]
    else:
        sums = client.map(checksum, arrays)
    assert client.gather(sums, timeout=90) == [float(i * ARRAY_LEN) for i in range(N_ARRAYS)]
    # Every array is still held, most of them on disk; no worker died or restarted.
    assert all(f.status == "finished" for f in arrays)
    info = workers(client)
    assert sum(w["nkeys"] for w in info.values()) >= N_ARRAYS
    # 800 MB per worker cannot fit in 400 MB: the workers report spilled bytes.
    wait_until(
        lambda: sum(w.get("spilled", 0) for w in workers(client).values()) > 0,
        timeout=5,
        what="spilled bytes reported",
    )
    assert not lost_events(client, since=start), lost_events(client, since=start)
    assert pids(client) == before
    # One array read back whole, from wherever it is.
    assert float(arrays[7].result(timeout=60)[123]) == 7.0


def test_memory_spill(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(memory_limit="400MB")
    _spill_and_sum(client, pin=True)


def test_memory_kill(make_cluster: MakeCluster) -> None:
    # death_report_wait: see test_poison.py.
    _, client = make_cluster(memory_limit="300MB", allowed_failures=1, death_report_wait=2.0)
    before = pids(client)
    hungry, other = sorted(workers(client))
    start = time.time()
    # 2 GB in 10 MB steps, 1 GB/s: the nanny (looking every 0.1 s) kills it long before.
    greedy = client.submit(hog, 2_000_000_000, 10_000_000, 0.01, workers=[hungry])
    # Work on the other worker goes on undisturbed. (Not next to the hog: with
    # allowed_failures=1 whatever was assigned to the dying worker is blamed as well,
    # see test_poison.py::test_killed_worker_spares_tasks_that_never_started.)
    others = client.map(slow_inc, range(20), seconds=0.05, workers=[other])
    with pytest.raises(KilledWorker) as info:
        greedy.result(timeout=60)
    assert "memory limit" in str(info.value)
    assert greedy.key in str(info.value)
    lost = lost_events(client, since=start)
    assert len(lost) == 1 and "memory limit" in lost[0], lost
    assert client.gather(others, timeout=60) == list(range(1, 21))
    after = wait_for_workers(client, 2, timeout=30)
    assert set(pids(client)) == set(before)  # same nannies
    assert len(set(before.values()) - {w["pid"] for w in after.values()}) == 1
    assert len(workers(client)) == 2
