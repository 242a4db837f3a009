"""A journaled scheduler SIGKILLed in the middle of a 2,000-task graph comes back on
the same address; the client, untouched, gets every result, and no result a live
worker held at the kill is computed a second time."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from regrow import Client, Future
from regrow.testing import MakeCluster, wait_until

from .tasks import add, leaf, runs, weighted

N_LEAVES = 1_000
# Every WEIGHT_EVERY-th leaf goes through a task on a scattered array.
WEIGHT_EVERY = 10
ARRAYS = [np.arange(1_000, dtype=np.int64) * (k + 1) for k in range(3)]


@dataclass
class Graph:
    futures: dict[str, Future] = field(default_factory=dict)  # tag -> future
    leaves: list[Future] = field(default_factory=list)
    root: Future | None = None
    leaves_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    marks: dict[int, threading.Event] = field(default_factory=dict)

    def leaf_done(self, _: Future) -> None:
        with self.lock:
            self.leaves_done += 1
            for n, event in self.marks.items():
                if self.leaves_done >= n:
                    event.set()

    def mark(self, n: int) -> threading.Event:
        with self.lock:
            event = self.marks.setdefault(n, threading.Event())
            if self.leaves_done >= n:
                event.set()
            return event

    def finished_tags(self) -> set[str]:
        return {tag for tag, f in self.futures.items() if f.status == "finished"}


def expected_values() -> dict[str, int]:
    """Every task's value, computed serially here with the same functions."""
    out: dict[str, int] = {}
    level: list[int] = []
    for i in range(N_LEAVES):
        v = out[f"leaf-{i}"] = leaf(None, i, 0.0)
        if i % WEIGHT_EVERY == 0:
            v = out[f"weighted-{i}"] = weighted(None, i, v, ARRAYS[i % len(ARRAYS)])
        level.append(v)
    pairs = []
    for k in range(0, N_LEAVES, 2):
        pairs.append(add(None, f"pair-{k // 2}", level[k], level[k + 1]))
        out[f"pair-{k // 2}"] = pairs[-1]
    depth = 0
    while len(pairs) > 1:
        nxt = []
        for k in range(0, len(pairs) - 1, 2):
            tag = f"tree-{depth}-{k // 2}"
            nxt.append(out.setdefault(tag, add(None, tag, pairs[k], pairs[k + 1])))
        if len(pairs) % 2:
            nxt.append(pairs[-1])
        pairs = nxt
        depth += 1
    out["root"] = pairs[0]
    return out


def submit_graph(client: Client, log: str) -> Graph:
    """~2,100 tasks: 1,000 leaves, 100 tasks on 3 scattered arrays, 500 pairwise adds,
    then a tree reduction. Submitted as the leaves start to run (one submit each)."""
    g = Graph()
    arrays = client.scatter(ARRAYS)
    level: list[Future] = []
    for i in range(N_LEAVES):
        f = g.futures[f"leaf-{i}"] = client.submit(leaf, log, i)
        f.add_done_callback(g.leaf_done)
        g.leaves.append(f)
        if i % WEIGHT_EVERY == 0:
            f = g.futures[f"weighted-{i}"] = client.submit(
                weighted, log, i, f, arrays[i % len(arrays)]
            )
        level.append(f)
    pairs = []
    for k in range(0, N_LEAVES, 2):
        tag = f"pair-{k // 2}"
        pairs.append(client.submit(add, log, tag, level[k], level[k + 1]))
        g.futures[tag] = pairs[-1]
    depth = 0
    while len(pairs) > 1:
        nxt = []
        for k in range(0, len(pairs) - 1, 2):
            tag = f"tree-{depth}-{k // 2}"
            nxt.append(client.submit(add, log, tag, pairs[k], pairs[k + 1]))
            g.futures[tag] = nxt[-1]
        if len(pairs) % 2:
            nxt.append(pairs[-1])
        pairs = nxt
        depth += 1
    g.root = pairs[0]
    g.futures["root"] = g.root
    return g


def kill_at(cluster: Any, g: Graph, leaves: int, timeout: float = 60.0) -> tuple[set[str], int]:
    """Once ``leaves`` leaves are done: snapshot the finished futures, SIGKILL the
    scheduler and wait for the new one. Returns (finished tags, leaves done at the kill)."""
    assert g.mark(leaves).wait(timeout), f"{leaves} leaves not done within {timeout} s"
    done = g.finished_tags()
    at = g.leaves_done
    old = cluster.scheduler_proc.pid
    new = cluster.restart_scheduler_process()
    assert new != old
    return done, at


def check_outcome(client: Client, g: Graph, log: str, held: set[str], kills: int) -> None:
    expected = expected_values()
    tags = list(g.futures)
    values = client.gather([g.futures[t] for t in tags], timeout=90)
    assert dict(zip(tags, values, strict=True)) == {t: expected[t] for t in tags}
    assert g.root is not None and g.root.result(timeout=5) == expected["root"]
    counts = runs(log)
    # Every task ran at least once ("root" names the last tree-* task a second time).
    assert {t for t in tags if t != "root"} <= set(counts)
    twice = sorted(t for t in held if counts.get(t, 0) > 1)
    assert not twice, f"{len(twice)} results held at the kill ran again: {twice[:10]}"
    # Only a task running at a kill may run again: at most one per worker thread.
    again = sorted(t for t, n in counts.items() if n > 1)
    assert len(again) <= 2 * kills, f"{len(again)} tasks ran more than once: {again[:10]}"


def test_sigkill_mid_graph(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    log = str(tmp_path / "runs.log")
    g = submit_graph(client, log)
    held, at = kill_at(cluster, g, int(N_LEAVES * 0.35))
    assert at < N_LEAVES * 0.6, f"the kill came late: {at} leaves done"
    assert len(held) >= 300
    check_outcome(client, g, log, held, kills=1)
    assert cluster.scheduler_restarts == 1


def test_sigkill_twice(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    log = str(tmp_path / "runs.log")
    g = submit_graph(client, log)
    held, at = kill_at(cluster, g, int(N_LEAVES * 0.3))
    assert at < N_LEAVES * 0.6, f"the first kill came late: {at} leaves done"
    # The second kill: once the new scheduler has the client back and made some progress.
    wait_until(lambda: client.status == "running", timeout=30, what="client reconnected")
    again, _ = kill_at(cluster, g, at + 50)
    assert not g.root.done(), "the graph finished before the second kill"  # type: ignore[union-attr]
    held |= again
    check_outcome(client, g, log, held, kills=2)
    assert cluster.scheduler_restarts == 2
