"""A scatter whose target worker has just died, or is cut off, while the scatter runs
(found by the chaos soak): the target is skipped and its share goes to the live
workers; whatever reached a worker is registered with the scheduler, so nothing is
left behind on a worker once the futures are released."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import pytest

from regrow import Client
from regrow.protocol.comm import Connection

from .helpers import Frozen, MakeCluster, gone, sigkill, wait_until, workers

DATA = [f"value-{i}-" * 200 for i in range(12)]  # ~2 KB each, held by workers only


def _stored() -> list[str]:
    """The keys the worker running this holds (for client.run)."""
    from regrow import get_worker

    return sorted(get_worker().data)


def _explode(pid: int) -> None:
    if os.getpid() != pid:
        raise ValueError("this value cannot be unpickled here")


class Unloadable:
    """A value that unpickles only in the process that pickled it."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _explode, (os.getpid(),)


def _nothing_left(client: Client) -> bool:
    """No key held by any worker, none known to the scheduler."""
    info = client.scheduler_info()
    stored = client.run(_stored)
    return not info["tasks"] and not any(stored.values())


def _kill_on_first_use(client: Client, victim: str, pid: int) -> None:
    """SIGKILL ``victim`` the moment the client first reaches for a connection to it,
    and wait for it to be gone: the scatter has picked it as a target already, and
    neither the scheduler's news of the death nor anything else reaches the client
    before it tries."""
    pool = client._session.pool
    real_get: Callable[[str], Awaitable[Connection]] = pool.get
    proc = psutil.Process(pid)

    async def get(address: str) -> Connection:
        if address == victim and not gone(proc):
            sigkill(pid)
            wait_until(lambda: gone(proc), timeout=10, what="the target is dead")
        return await real_get(address)

    pool.get = get  # type: ignore[method-assign]


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("connected", [False, True], ids=["refused", "closed"])
def test_scatter_skips_a_target_that_just_died(
    make_cluster: MakeCluster, replicas: int, connected: bool
) -> None:
    _, client = make_cluster(n_workers=3)
    info = workers(client)
    victim = sorted(info)[0]
    pid = info[victim]["pid"]
    if connected:
        # The client holds a connection to every worker: the victim's closes under a
        # put (rather than refusing a new one).
        client.run(_stored)
    _kill_on_first_use(client, victim, pid)
    futures = client.scatter(DATA, replicas=replicas, hash=False, timeout=30)
    assert [f.status for f in futures] == ["finished"] * len(DATA)
    # Each value has its copies on the two live workers.
    holders = client.who_has(futures)
    assert all(victim not in hs and len(hs) == replicas for hs in holders.values()), holders
    assert client.gather(futures, timeout=30) == DATA
    assert client.gather(client.map(len, futures), timeout=30) == [len(d) for d in DATA]
    # What reached a worker was registered: released, it goes from every worker.
    futures.clear()
    wait_until(lambda: _nothing_left(client), timeout=10, what="nothing left on the workers")


def test_scatter_skips_a_target_cut_off(make_cluster: MakeCluster) -> None:
    # A frozen worker neither refuses nor answers: its put would wait forever. The
    # scheduler removes it after the heartbeat timeout; the scatter then goes on
    # without it, well within its own timeout.
    _, client = make_cluster(n_workers=3, heartbeat_timeout=1.0)
    info = workers(client)
    frozen = sorted(info)[0]
    with Frozen(info[frozen]["pid"]):
        start = time.monotonic()
        futures = client.scatter(DATA, replicas=1, hash=False, timeout=8)
        took = time.monotonic() - start
        assert [f.status for f in futures] == ["finished"] * len(DATA)
        holders: dict[str, Any] = client.who_has(futures)
        assert all(hs and frozen not in hs for hs in holders.values()), holders
        assert client.gather(futures, timeout=30) == DATA
    assert took < 6, took
    wait_until(lambda: len(workers(client)) == 3, timeout=10, what="the frozen worker back")
    futures.clear()
    wait_until(lambda: _nothing_left(client), timeout=10, what="nothing left on the workers")


def test_scatter_fails_clearly_when_no_worker_can_take_it(make_cluster: MakeCluster) -> None:
    # Its only allowed target is dead: after waiting (the call's timeout) for the
    # scheduler to name another, one clear error, not a bare connection error.
    _, client = make_cluster(n_workers=2)
    info = workers(client)
    victim = sorted(info)[0]
    _kill_on_first_use(client, victim, info[victim]["pid"])
    with pytest.raises(
        RuntimeError, match=r"scatter: no worker .*could take 12 of the 12 values"
    ) as caught:
        client.scatter(DATA, workers=[victim], hash=False, timeout=3)
    assert not isinstance(caught.value, OSError)
    assert victim in str(caught.value)
    # Nothing of it stays anywhere; the cluster works on.
    wait_until(lambda: _nothing_left(client), timeout=10, what="nothing left on the workers")
    assert client.submit(len, "abc").result(timeout=30) == 3


def test_a_failed_scatter_leaves_nothing_behind(make_cluster: MakeCluster) -> None:
    # The first value goes to one worker, which takes it; the second to the other,
    # which cannot unpickle it (that fails anywhere: raised as it is). What the first
    # took is registered all the same, and so freed with the futures never handed out.
    _, client = make_cluster(n_workers=2)
    with pytest.raises(ValueError, match="cannot be unpickled here"):
        client.scatter(["fine " * 100, Unloadable()], hash=False, timeout=30)
    wait_until(lambda: _nothing_left(client), timeout=10, what="nothing left on the workers")
    assert client.submit(len, "abc").result(timeout=30) == 3
