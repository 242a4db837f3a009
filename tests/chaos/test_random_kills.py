"""Random SIGKILLs of workers while a 5,000-task graph with dependencies runs."""

from __future__ import annotations

import itertools
import os
import random
import time

from regrow import Client, Future
from regrow.testing import wait_until

from .helpers import MakeCluster, lost_events, pids, sigkill, wait_for_workers, workers
from .tasks import add, inc_sleep, total

N_LEAVES = 2500
FAN_IN = 8


def build(client: Client) -> tuple[list[Future], list[Future], list[Future], Future]:
    """leaves inc(i) -> pairs add(leaf_i, leaf_i+1) -> a tree of sums of FAN_IN."""
    leaves = client.map(inc_sleep, range(N_LEAVES), seconds=0.001)
    pairs = client.map(add, leaves[:-1], leaves[1:])
    tree: list[Future] = []
    level = pairs
    while len(level) > 1:
        level = [client.submit(total, *level[i : i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        tree.extend(level)
    return leaves, pairs, tree, level[0]


def serial() -> tuple[list[int], list[int], list[int], int]:
    leaves = [i + 1 for i in range(N_LEAVES)]
    pairs = [a + b for a, b in itertools.pairwise(leaves)]
    tree: list[int] = []
    level = pairs
    while len(level) > 1:
        level = [sum(level[i : i + FAN_IN]) for i in range(0, len(level), FAN_IN)]
        tree.extend(level)
    return leaves, pairs, tree, level[0]


def test_random_kills(make_cluster: MakeCluster) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    print(f"seed {seed}")
    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    start = time.time()
    leaves, pairs, tree, root = build(client)
    everything = [*leaves, *pairs, *tree]
    assert len(everything) >= 5000
    n = len(everything)
    # Kill points: one random point in each of four windows spread over the run.
    windows = [(0.05, 0.2), (0.25, 0.4), (0.45, 0.6), (0.65, 0.8)]
    points = [int(n * rng.uniform(lo, hi)) for lo, hi in windows]
    killed: list[tuple[int, int]] = []  # (done count when killed, pid)
    for point in points:
        wait_until(
            lambda point=point: root.done() or sum(f.done() for f in everything) >= point,
            timeout=60,
            interval=0.005,
            what=f"{point} of {n} futures done",
        )
        if root.done():
            break
        done = sum(f.done() for f in everything)
        before = pids(client)
        victim = rng.choice(sorted(before.values()))
        sigkill(victim)
        killed.append((done, victim))
        # The nanny brings a fresh worker back before the next kill.
        wait_for_workers(client, 2, not_pids={victim}, timeout=30)
    print(f"killed at (done, pid): {killed}")
    assert len(killed) >= 3, f"the graph finished after only {len(killed)} kills: {killed}"

    expect_leaves, expect_pairs, expect_tree, expect_root = serial()
    assert root.result(timeout=60) == expect_root
    assert client.gather(leaves, timeout=60) == expect_leaves
    assert client.gather(pairs, timeout=60) == expect_pairs
    assert client.gather(tree, timeout=60) == expect_tree
    assert all(f.status == "finished" for f in everything)
    # Every kill was seen as a loss, and every dead pid is gone from the cluster.
    lost = lost_events(client, since=start)
    assert len(lost) >= len(killed), lost
    assert not {pid for _, pid in killed} & {w["pid"] for w in workers(client).values()}
