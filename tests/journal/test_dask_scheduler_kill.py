"""A journaled scheduler SIGKILLed in the middle of dask collections' computations: it
comes back on the same address and the answers are exact, equal to dask's synchronous
scheduler's."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest

from chaos.helpers import Frozen
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


def test_inputs_of_later_batches_stay_wanted_until_confirmed(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Found by the chaos soak: the client let go of a later batch's inputs as soon as it
    # had sent the batches, before the scheduler confirmed (journaled) them. A scheduler
    # that died in between came back with the first batch but not the last; the client,
    # reattaching, no longer wanted those inputs, so they were freed, and the last batch,
    # resent, named tasks the scheduler did not know (FutureLostError).
    cluster, client = make_cluster(journal=tmp_path / "j.db")
    scheduler = cluster.scheduler_proc
    assert scheduler is not None
    x = da.random.RandomState(3).random((1_500,), chunks=1)  # 2 batches and more
    lazy = (x[::-1] * 2 + x).sum()
    expect = dask.compute(lazy, scheduler="sync")[0]
    with Frozen(scheduler.pid):  # it confirms nothing meanwhile
        future = client.compute(lazy)
        # The sent batches wait for confirmation, and with them the release: once the
        # client's loop has done all it was handed (a round trip through it), the inputs
        # are still wanted. (The loop runs callbacks in order: this step comes after
        # every call the submission handed it.)
        wait_until(lambda: len(client._session.unacked) >= 2, timeout=30, what="batches sent")
        client._loop.run(asyncio.sleep(0), timeout=10)
        unheld = set(client._keys._unheld)
        assert unheld, "no input of a later batch is wanted"
        assert unheld <= set(client._keys.held_keys())
    np.testing.assert_allclose(client.gather(future, timeout=120), expect)
    # Confirmed and done: nothing is wanted without a Future any more.
    wait_until(lambda: not client._keys._unheld, timeout=30, what="the inputs let go")
