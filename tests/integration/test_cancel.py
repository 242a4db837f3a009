"""Cancelling futures: pending work, finished results, and dependents."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from regrow import CancelledError, Client
from regrow.testing import wait_until

from .tasks import Gate, gated, inc, touch


def test_cancel_pending_future(
    client: Client, gates: Callable[[], Gate], workers: list[str], tmp_path: Path
) -> None:
    # Block both single-threaded workers, so later tasks cannot start.
    gate0, gate1 = gates(), gates()
    busy = [
        client.submit(gated, 0, *gate0.args, workers=workers[0]),
        client.submit(gated, 1, *gate1.args, workers=workers[1]),
    ]
    gate0.wait_started()
    gate1.wait_started()
    ran = tmp_path / "ran"
    doomed = client.submit(touch, str(ran), "x", workers=workers[0])
    after = client.submit(inc, 1, workers=workers[0])
    doomed.cancel()
    assert doomed.cancelled() and doomed.done()
    with pytest.raises(CancelledError):
        doomed.result(timeout=5)
    gate0.open()
    gate1.open()
    # ``after`` runs behind ``doomed`` on the same thread: had it not been cancelled,
    # ``doomed`` would have run first.
    assert after.result(timeout=30) == 2
    assert client.gather(busy, timeout=30) == [0, 1]
    assert not ran.exists()
    assert doomed.cancelled()


def test_cancel_finished_future_frees_its_result(client: Client) -> None:
    f = client.submit(inc, 1)
    assert f.result(timeout=30) == 2
    assert client.who_has(f)[f.key]
    client.cancel([f])
    assert f.cancelled()
    with pytest.raises(CancelledError):
        f.result(timeout=5)
    assert client.who_has(f)[f.key] == []
    # The same pure task can be submitted again and computes afresh.
    assert client.submit(inc, 1).result(timeout=30) == 2


def test_cancel_then_resubmit_at_once(client: Client) -> None:
    for i in range(30):
        f = client.submit(inc, i)
        if i % 2:
            f.result(timeout=30)
        client.cancel(f)
        assert f.cancelled()
        g = client.submit(inc, i)
        assert g.result(timeout=30) == i + 1
        assert not f.cancelled()  # the same key: both futures see it computed anew


def test_cancel_cancels_dependents(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    root = client.submit(gated, 1, *gate.args, workers=workers[0])
    child = client.submit(inc, root)
    grandchild = client.submit(inc, child)
    # Elsewhere: ``root``'s thread stays busy (cancelled or not) until its gate opens.
    other = client.submit(inc, 100, workers=workers[1])
    gate.wait_started()
    client.cancel(root)
    wait_until(lambda: child.cancelled() and grandchild.cancelled(), timeout=10)
    for f in (root, child, grandchild):
        with pytest.raises(CancelledError):
            f.result(timeout=5)
    assert other.result(timeout=30) == 101


def test_cancel_one_of_several_and_gather_skips(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    blocked = client.submit(gated, "never", *gate.args)
    fine = client.map(inc, range(3))
    blocked.cancel()
    gate.open()  # a cancelled task that is running holds its thread until it returns
    assert client.gather([fine, blocked], errors="skip", timeout=30) == [[1, 2, 3]]
    with pytest.raises(CancelledError):
        client.gather([fine, blocked], timeout=30)


def test_cancel_nothing_and_cancel_twice(client: Client) -> None:
    client.cancel([])
    f = client.submit(inc, 5)
    f.cancel()
    f.cancel()
    assert f.cancelled()


def test_resubmit_while_the_cancelled_run_still_executes(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    f = client.submit(gated, "again", *gate.args, workers=workers[0])
    gate.wait_started()
    f.cancel()
    assert f.cancelled()
    # The same key, on the same worker, whose thread still runs the cancelled call.
    g = client.submit(gated, "again", *gate.args, workers=workers[0])
    assert g.key == f.key
    gate.open()
    assert g.result(timeout=30) == "again"
