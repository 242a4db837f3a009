"""A worker SIGKILLed in the middle of a dask collection's computation: the answer is
still exact, equal to dask's synchronous scheduler's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from regrow.testing import wait_until

from .helpers import MakeCluster, pids, sigkill, wait_for_workers
from .tasks import noted_block

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")


def _kill_when(directory: Path, n: int, client: object, future: object) -> int:
    """SIGKILL one worker once ``n`` blocks have been made; returns its pid."""
    wait_until(
        lambda: future.done() or len(os.listdir(directory)) >= n,  # type: ignore[attr-defined]
        timeout=60,
        interval=0.005,
        what=f"{n} blocks computed",
    )
    assert not future.done(), "the computation ended before the kill"  # type: ignore[attr-defined]
    victim = sorted(pids(client).values())[0]  # type: ignore[arg-type]
    sigkill(victim)
    return victim


def test_array_reduction_survives_a_worker_kill(make_cluster: MakeCluster, tmp_path: Path) -> None:
    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    x = da.random.RandomState(7).random((1200, 1200), chunks=(60, 60))  # 400 blocks
    y = x.map_blocks(noted_block, str(tmp_path), dtype=x.dtype)
    expect = dask.compute((x + x.T).std(), x.sum(axis=0), scheduler="sync")
    future = client.compute([(y + y.T).std(), y.sum(axis=0)])
    victim = _kill_when(tmp_path, 150, client, future[0])
    got = client.gather(future, timeout=120)
    np.testing.assert_allclose(got[0], expect[0])
    np.testing.assert_allclose(got[1], expect[1])
    wait_for_workers(client, 2, not_pids={victim}, timeout=30)


def test_dataframe_groupby_survives_a_worker_kill(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    rng = np.random.default_rng(3)
    pdf = pd.DataFrame(
        {"key": rng.integers(0, 50, 40_000), "value": rng.random(40_000)},
    )
    df = dd.from_pandas(pdf, npartitions=80)
    slow = df.map_partitions(noted_block, str(tmp_path), 0.02, meta=df._meta)
    expect = pdf.groupby("key").value.agg(["sum", "count", "mean"])
    shuffled = slow.shuffle("key").groupby("key").value.agg(["sum", "count", "mean"])
    future = client.compute(shuffled)
    _kill_when(tmp_path, 30, client, future)
    got = future.result(timeout=120).sort_index()
    pd.testing.assert_frame_equal(got, expect, check_dtype=False)
