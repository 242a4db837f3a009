"""Client.retire_workers: workers leave gracefully, their results copied away first.

Each test that retires gets a cluster of its own (``make_cluster``); the shared one is
only asked about names it does not have and given bad arguments. The results used are
larger than the 16 KiB the scheduler keeps itself, so only workers hold them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from regrow import Client, LocalCluster
from regrow.testing import MakeCluster, wait_until

SIZE = 100_000  # bytes per value: well above the inline limit


def payload(seed: int) -> bytes:
    return bytes([seed % 251]) * SIZE


def recorded(log: str, data: bytes, seed: int) -> bytes:
    """A large value made from ``data`` (scattered), noting each run in ``log``."""
    with open(log, "a") as f:
        f.write(f"{seed} {os.getpid()}\n")
    assert data == payload(0)
    return payload(seed)


def runs(log: Path) -> list[int]:
    """The seeds ``recorded`` ran for, once per run."""
    return sorted(int(line.split()[0]) for line in log.read_text().splitlines())


def workers(client: Client) -> dict[str, dict[str, Any]]:
    info: dict[str, dict[str, Any]] = client.scheduler_info()["workers"]
    return info


def test_retired_worker_hands_its_results_over(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, client = make_cluster(n_workers=3)
    info = workers(client)
    victim = sorted(info, key=lambda a: info[a]["name"])[0]
    log = tmp_path / "runs.log"
    [data] = client.scatter([payload(0)], workers=[victim])
    futs = [client.submit(recorded, str(log), data, i, workers=[victim]) for i in range(1, 9)]
    client.gather(futs, timeout=60)
    held = client.who_has([data, *futs])
    assert all(holders == [victim] for holders in held.values()), held
    assert runs(log) == list(range(1, 9))
    before = client.scheduler_info()

    retired = client.retire_workers([victim], timeout=60)

    assert list(retired) == [victim]
    assert retired[victim]["name"] == info[victim]["name"]
    assert retired[victim]["nthreads"] == 1
    assert retired[victim]["nanny"] == info[victim]["nanny"]
    assert retired[victim]["pid"] == info[victim]["pid"]
    # Gone, and its nanny went with it rather than starting another worker.
    assert victim not in workers(client)
    nanny = info[victim]["nanny"]
    wait_until(
        lambda: (
            nanny not in cluster.nanny_addresses and nanny not in client.scheduler_info()["nannies"]
        ),
        timeout=30,
        what="the nanny exits, and the scheduler sees it go",
    )
    # Its results now live on the others; nothing was lost or computed again.
    moved = client.who_has([data, *futs])
    assert all(holders and victim not in holders for holders in moved.values()), moved
    assert client.gather(data, timeout=30) == payload(0)
    assert client.gather(futs, timeout=30) == [payload(i) for i in range(1, 9)]
    after = client.scheduler_info()
    assert after["counts"].get("lost", 0) == before["counts"].get("lost", 0)
    assert after["counts"].get("recomputed", 0) == before["counts"].get("recomputed", 0)
    assert runs(log) == list(range(1, 9))
    # The rest of the cluster works on, with its results, and still has two workers.
    more = client.submit(recorded, str(log), data, 100)
    assert more.result(timeout=30) == payload(100)
    assert len(workers(client)) == 2 and len(cluster.nanny_addresses) == 2


def test_worker_holding_the_only_copy_stays_when_no_other_worker(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    _, client = make_cluster(n_workers=1)
    [only] = workers(client)
    log = tmp_path / "runs.log"
    [data] = client.scatter([payload(0)])
    fut = client.submit(recorded, str(log), data, 1)
    assert fut.result(timeout=30) == payload(1)

    assert client.retire_workers([only], timeout=60) == {}

    assert list(workers(client)) == [only]
    assert workers(client)[only]["status"] == "running"
    wait_until(
        lambda: any("not retired" in m["text"] for _, _, m in client.get_events("workers")),
        timeout=10,
        what="the client told why the worker stayed",
    )
    assert client.gather([data, fut], timeout=30) == [payload(0), payload(1)]
    # It goes on taking work.
    assert client.submit(recorded, str(log), data, 2).result(timeout=30) == payload(2)
    assert runs(log) == [1, 2]

    # With nothing of its own left to hand over, even the last worker may go.
    del data, fut
    wait_until(lambda: workers(client)[only]["nkeys"] == 0, timeout=30, what="the results freed")
    retired = client.retire_workers([only], timeout=60)
    assert list(retired) == [only]
    assert workers(client) == {}


def test_bad_arguments(client: Client) -> None:
    some = next(iter(workers(client)))
    with pytest.raises(TypeError, match="needs the workers to retire"):
        client.retire_workers()
    with pytest.raises(TypeError, match=r"got the string .*; use \["):
        client.retire_workers(some)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty list"):
        client.retire_workers([])
    with pytest.raises(TypeError, match="addresses or names"):
        client.retire_workers([1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="got int"):
        client.retire_workers(5)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="close_workers=False"):
        client.retire_workers([some], close_workers=False)
    # Unknown names are left out of the answer, and nothing is retired.
    assert client.retire_workers(["no-such-worker", "tcp://127.0.0.1:1"], timeout=30) == {}
    assert len(workers(client)) == 2


def test_asynchronous_client(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster, sync_client = make_cluster(n_workers=2)
    info = workers(sync_client)
    victim = sorted(info, key=lambda a: info[a]["name"])[0]
    log = tmp_path / "runs.log"

    async def main(cluster: LocalCluster) -> None:
        async with Client(cluster, asynchronous=True, set_as_default=False) as c:
            [data] = await c.scatter([payload(0)], workers=[victim])
            futs = [c.submit(recorded, str(log), data, i, workers=[victim]) for i in (1, 2)]
            await c.gather(futs)
            with pytest.raises(ValueError, match="empty list"):
                c.retire_workers([])
            # By name, as dask allows.
            retired = await c.retire_workers([info[victim]["name"]], timeout=60)
            assert list(retired) == [victim]
            assert retired[victim]["name"] == info[victim]["name"]
            assert victim not in (await c.scheduler_info())["workers"]
            assert await futs[0] == payload(1)
            assert await c.gather([data, futs[1]]) == [payload(0), payload(2)]

    asyncio.run(asyncio.wait_for(main(cluster), 120))
    assert runs(log) == [1, 2]
    assert list(workers(sync_client)) == [a for a in info if a != victim]
