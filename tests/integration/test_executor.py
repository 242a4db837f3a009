"""Client.get_executor(): the cluster behind the concurrent.futures interface."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable

import pytest

from regrow import Client

from .tasks import Gate, MyError, fail, gated, inc


def test_submit_wait_and_as_completed(client: Client) -> None:
    ex = client.get_executor()
    fs = [ex.submit(inc, i) for i in range(20)]
    assert all(isinstance(f, cf.Future) for f in fs)
    done, not_done = cf.wait(fs, timeout=30)
    assert len(done) == 20 and not not_done
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=30)) == list(range(1, 21))


def test_map(client: Client) -> None:
    ex = client.get_executor()
    assert list(ex.map(inc, range(100), timeout=30)) == list(range(1, 101))
    assert list(ex.map(lambda x, y: x * y, [1, 2, 3], [4, 5, 6], timeout=30)) == [4, 10, 18]


def test_tasks_are_not_pure(client: Client) -> None:
    ex = client.get_executor()
    assert [ex.submit(inc, 1).result(timeout=30) for _ in range(3)] == [2, 2, 2]


def test_exceptions(client: Client) -> None:
    ex = client.get_executor()
    f = ex.submit(fail, "from the executor")
    done, _ = cf.wait([f, ex.submit(inc, 1)], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert f in done
    assert isinstance(f.exception(timeout=30), MyError)
    with pytest.raises(MyError, match="from the executor"):
        f.result()
    with pytest.raises(MyError):
        list(ex.map(fail, ["in map"], timeout=30))


def test_wait_first_completed_and_timeout(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    ex = client.get_executor()
    slow = ex.submit(gated, "slow", *gate.args, workers=workers[0])
    quick = ex.submit(inc, 1, workers=workers[1])
    done, not_done = cf.wait([slow, quick], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    with pytest.raises(cf.TimeoutError):
        slow.result(timeout=0.1)
    gate.open()
    assert slow.result(timeout=30) == "slow"


def test_context_manager_waits(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    with client.get_executor() as ex:
        f = ex.submit(gated, "done", *gate.args)
        gate.open()
    assert f.done() and f.result() == "done"
    with pytest.raises(RuntimeError):
        ex.submit(inc, 1)


def test_shutdown_cancel_futures(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    ex = client.get_executor()
    blocked = [ex.submit(gated, i, *gate.args) for i in range(4)]
    gate.wait_started()
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in blocked)
    for f in blocked:
        with pytest.raises(cf.CancelledError):
            f.result(timeout=0)
