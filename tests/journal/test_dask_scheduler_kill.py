"""A journaled scheduler SIGKILLed in the middle of dask collections' computations: it
comes back on the same address and the answers are exact, equal to dask's synchronous
scheduler's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from chaos.tasks import noted_block
from regrow.testing import MakeCluster, wait_until

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")


def test_scheduler_sigkilled_during_an_array_reduction(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    blocks = tmp_path / "blocks"
    blocks.mkdir()
    # 1,500 blocks: the graph goes in several messages, its first leaves read by its
    # last steps (the reversal), so the keys a later message reads must stay wanted.
    x = da.random.RandomState(3).random((1_500,), chunks=1)
    y = x.map_blocks(noted_block, str(blocks), 0.001, dtype=x.dtype)
    lazy = [(y[::-1] * 2 + y).sum(), y.std()]
    expect = dask.compute(*[(x[::-1] * 2 + x).sum(), x.std()], scheduler="sync")
    futures = client.compute(lazy)
    wait_until(
        lambda: len(os.listdir(blocks)) >= 300 or futures[0].done(),
        timeout=60,
        interval=0.005,
        what="300 blocks made",
    )
    assert not futures[0].done(), "the computation ended before the kill"
    cluster.restart_scheduler_process()
    got = client.gather(futures, timeout=120)
    np.testing.assert_allclose(got, expect)
    assert cluster.scheduler_restarts == 1
