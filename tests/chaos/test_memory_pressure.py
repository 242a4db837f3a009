"""Memory pressure without kill loops (issue 14): serving results costs a worker no copy
of all it sends, a spilled result is sent from its file, a death of memory that no
task caused stops after ``allowed_failures`` with a clear error, and a gather larger
than the client's machine fails in the client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from regrow import KilledWorker, wait
from regrow.testing import MakeCluster, wait_until
from regrow.worker import memory

from .helpers import lost_events, pids, workers
from .tasks import balloon, big_value, claims, first_item

MiB = 2**20


class Peak:
    """The most memory (as the memory limit counts it) ``pid`` used while sampled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, memory.used(self.pid))
            except Exception:
                return  # gone: the test sees that from its pids
            self.samples += 1
            self._stop.wait(0.005)

    @contextmanager
    def watching(self) -> Iterator[Peak]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


@pytest.mark.parametrize("kind", ["numpy", "bytes", "str"])
def test_gather_more_than_a_workers_limit(make_cluster: MakeCluster, kind: str) -> None:
    # The case: eight 60 MiB results gathered from one worker of 600 MB, which
    # holds them partly on disk. It used to die while sending, 16 times in 30 s.
    _, client = make_cluster(n_workers=1, memory_limit="600MB")
    before = pids(client)
    start = time.time()
    futures = client.map(big_value, range(8), kind=kind, nbytes=60 * MiB)
    assert not wait(futures, timeout=60).not_done
    (pid,) = before.values()
    with Peak(pid).watching() as peak:
        values = client.gather(futures, timeout=60)
    assert [first_item(v) for v in values] == [first_item(big_value(i, kind, 8)) for i in range(8)]
    assert all(len(v) == (60 * MiB if kind != "numpy" else 60 * MiB // 8) for v in values)
    assert pids(client) == before, "the worker was killed"
    assert not lost_events(client, since=start)
    assert peak.samples > 0 and peak.peak < 0.95 * 600e6, peak.peak / MiB


@pytest.mark.parametrize("shared_memory", [True, False], ids=["same-host", "sockets"])
def test_spilled_results_fetched_by_a_peer(make_cluster: MakeCluster, shared_memory: bool) -> None:
    # A holder under a tight limit, most of its results on disk, serves them all to a
    # peer: it sends them from their files, never reading them back into its memory.
    _, client = make_cluster(n_workers=2, memory_limit="400MB", shared_memory=shared_memory)
    before = pids(client)
    holder, peer = sorted(workers(client))
    start = time.time()
    # Arrays: the peer (as tightly limited) then holds each on the frame it came in. A
    # bytes value pickles in-band: receiving one costs the peer a copy besides.
    held = client.map(big_value, range(6), kind="numpy", nbytes=50 * MiB, workers=[holder])
    assert not wait(held, timeout=60).not_done
    wait_until(
        lambda: workers(client)[holder].get("spilled", 0) >= 100 * MiB,
        timeout=10,
        what="the holder spilled",
    )
    with Peak(workers(client)[holder]["pid"]).watching() as peak:
        firsts = client.map(first_item, held, workers=[peer])
        assert client.gather(firsts, timeout=60) == [float(i) for i in range(6)]
    assert pids(client) == before, "a worker was killed"
    assert not lost_events(client, since=start)
    assert peak.samples > 0 and peak.peak < 0.95 * 400e6, peak.peak / MiB


def test_a_memory_kill_loop_stops(make_cluster: MakeCluster) -> None:
    # A result whose worker dies of its memory limit while holding it, no task running:
    # recomputing it only kills the next worker. After allowed_failures such deaths it
    # errs, naming the cause and the limit, and the cluster goes on.
    # inline_result_bytes=0: else the scheduler keeps a copy of so small a result, and
    # losing its holder loses nothing.
    _, client = make_cluster(
        n_workers=1,
        memory_limit="300MB",
        allowed_failures=2,
        death_report_wait=5.0,
        inline_result_bytes=0,
    )
    start = time.time()
    doomed = client.submit(balloon, 600 * MiB, 0.3, pure=False)
    # Not fetched (it would come as a small stand-in): only held, as results are.
    wait_until(lambda: doomed.status == "error", timeout=60, what="the result erred")
    with pytest.raises(KilledWorker) as info:
        doomed.result(timeout=60)
    message = str(info.value)
    assert "memory limit" in message and "286 MiB" in message, message
    assert "no task ran there" in message, message
    lost = lost_events(client, since=start)
    assert len(lost) == 2, lost  # two deaths, no third
    wait_until(lambda: len(workers(client)) == 1, timeout=30, what="a worker back")
    assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6


def test_a_gather_larger_than_the_client_fails_in_the_client(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    before = pids(client)
    # Results that say they are a petabyte: gathering them could never fit here.
    huge = client.map(claims, [2**50, 2**50 + 1])
    assert not wait(huge, timeout=30).not_done
    with pytest.raises(MemoryError, match=r"gather: the 2 results to fetch take .* GiB"):
        client.gather(huge, timeout=30)
    # Nothing was fetched and nothing was lost: the results are still there.
    assert all(f.status == "finished" for f in huge)
    assert pids(client) == before
    assert client.submit(lambda c: c.claimed, huge[0]).result(timeout=30) == 2**50
