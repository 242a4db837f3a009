"""A worker keeps freed memory warm for the next large value (protocol.heap), within
its budget, and gives it back before it spills."""

from __future__ import annotations

import pytest

from conftest import MakeCluster
from regrow import Client
from regrow.protocol import heap, lend
from regrow.testing import wait_until

pytestmark = [
    pytest.mark.skipif(not heap._MALLINFO2, reason="glibc 2.33+ malloc is not here"),
    pytest.mark.skipif(not lend.usable, reason="process_vm_readv is not available"),
]

MB = 1 << 20


def _heap() -> tuple[int, int]:
    return heap.budget, heap.free_bytes()


def _tidy() -> tuple[bool, int]:
    return heap.tidy(), heap.free_bytes()


def _nkeys(client: Client) -> int:
    return sum(w["nkeys"] for w in client.scheduler_info()["workers"].values())


def test_a_scattered_value_freed_stays_warm_on_its_worker(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, memory_limit="4GiB")
    [(budget, _)] = client.run(_heap).values()
    assert budget == 256 * MB  # receive_pool_bytes, under an eighth of the memory limit
    value = b"\x5a" * (100 * MB)
    future = client.scatter(value)
    assert client.submit(len, future).result() == len(value)
    del future
    wait_until(lambda: _nkeys(client) == 0, timeout=10, what="the worker lets the value go")
    # What the worker's heartbeats do (heap.tidy) keeps it: within the budget.
    [(gave_back, kept)] = client.run(_tidy).values()
    assert not gave_back and kept >= 100 * MB


def test_a_small_memory_limit_keeps_little(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, memory_limit="400MiB")
    [(budget, _)] = client.run(_heap).values()
    assert budget == 50 * MB  # an eighth of the limit


def _array(n: int) -> object:
    import numpy as np

    return np.ones(n, dtype=np.uint8)


def test_a_client_receives_into_its_pool_and_gives_it_back_when_idle(
    make_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from regrow.protocol import framing

    pool = framing.POOL
    # As in a process no worker ran in (a test before may have run one in this one).
    monkeypatch.setattr(pool, "limit", 0)
    monkeypatch.setattr(pool, "idle_release", None)
    _, client = make_cluster(n_workers=1)
    assert pool.limit > 0 and pool.idle_release is not None  # turned on by the client
    pool.idle_release = 0.5  # not 5 s: the test would wait for it
    future = client.submit(_array, 50 * MB, pure=False)
    before = pool.reused
    for _ in range(2):
        value = future.result()
        assert value.sum() == 50 * MB  # type: ignore[attr-defined]
        del value
        future = client.submit(_array, 50 * MB, pure=False)
    future.result()
    assert pool.reused > before  # the second value came into the first one's mapping
    del future
    wait_until(lambda: pool.bytes == 0, timeout=10, what="the idle pool given back")
