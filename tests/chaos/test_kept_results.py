"""Small results travel to the scheduler with their task's news and stay there: a
worker SIGKILLed while holding them loses none of them, while its large results are
recomputed from lineage as before."""

from __future__ import annotations

from regrow.testing import wait_until

from .helpers import MakeCluster, sigkill, wait_for_workers, workers
from .tasks import add, inc_sleep, make_array

LARGE = 10_000  # float64s: 80 KB, above the 16 KiB inline limit


def test_small_results_outlive_their_worker(make_cluster: MakeCluster) -> None:
    _, client = make_cluster()
    small = client.map(inc_sleep, range(60), seconds=0.002)
    large = client.map(make_array, range(6), n=LARGE)
    assert client.gather(small, timeout=60) == list(range(1, 61))
    client.gather(large, timeout=60)
    who_has = client.who_has(small + large)
    only_on = {w: {k for k, hs in who_has.items() if hs == [w]} for w in workers(client)}
    # The victim: a worker holding results of both kinds (both do, as work alternates).
    victim = max(
        only_on,
        key=lambda w: min(sum(f.key in only_on[w] for f in fs) for fs in (small, large)),
    )
    victim_pid = workers(client)[victim]["pid"]
    held_small = [f for f in small if f.key in only_on[victim]]
    held_large = [f for f in large if f.key in only_on[victim]]
    assert held_small and held_large, only_on
    before = client.scheduler_info()["counts"]

    sigkill(victim_pid)
    wait_until(lambda: victim not in workers(client), timeout=30, what="the victim removed")
    counts = client.scheduler_info()["counts"]
    # Only the large ones it held are lost; the small ones are held by nobody now, and
    # are still there.
    assert counts["lost"] - before["lost"] == len(held_large), (before, counts)
    after = client.who_has(held_small)
    assert all(holders == [] for holders in after.values()), after
    assert client.gather(small, timeout=60) == list(range(1, 61))
    assert [float(a[0]) for a in client.gather(large, timeout=60)] == [float(i) for i in range(6)]
    # A new task on a kept result gets it with its order (there is no holder to fetch from).
    wait_for_workers(client, 2, not_pids=[victim_pid])
    dependent = client.submit(add, held_small[0], 100)
    assert dependent.result(timeout=30) == small.index(held_small[0]) + 1 + 100
    final = client.scheduler_info()["counts"]
    assert final["recomputed"] - before["recomputed"] == len(held_large), (before, final)


def test_results_stay_on_workers_when_turned_off(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(inline_result_bytes=0)
    futs = client.map(inc_sleep, range(20), seconds=0.002)
    assert client.gather(futs, timeout=60) == list(range(1, 21))
    victim = next(iter(workers(client)))
    held = [k for k, hs in client.who_has(futs).items() if hs == [victim]]
    assert held
    before = client.scheduler_info()["counts"]
    sigkill(workers(client)[victim]["pid"])
    wait_until(lambda: victim not in workers(client), timeout=30, what="the victim removed")
    assert client.scheduler_info()["counts"]["lost"] - before["lost"] == len(held)
    assert client.gather(futs, timeout=60) == list(range(1, 21))
