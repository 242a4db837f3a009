"""wait, as_completed, done callbacks."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from regrow import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Client,
    Future,
    as_completed,
    wait,
)

from .tasks import Gate, MyError, fail, gated, inc


def test_wait_all_completed(client: Client) -> None:
    fs = client.map(inc, range(20))
    done, not_done = wait(fs, timeout=30, return_when=ALL_COMPLETED)
    assert done == set(fs) and not not_done
    assert all(f.status == "finished" for f in fs)
    assert wait(fs[0], timeout=30).done == {fs[0]}
    assert wait([], timeout=1) == (set(), set())


def test_wait_first_completed(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    slow = client.submit(gated, "slow", *gate.args, workers=workers[0])
    quick = client.submit(inc, 1, workers=workers[1])
    done, not_done = wait([slow, quick], timeout=30, return_when=FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    gate.open()
    done, not_done = wait([slow, quick], timeout=30)
    assert done == {slow, quick} and not not_done


def test_wait_first_exception(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    slow = client.submit(gated, "slow", *gate.args, workers=workers[0])
    bad = client.submit(fail, "first exception", workers=workers[1])
    done, not_done = wait([slow, bad], timeout=30, return_when=FIRST_EXCEPTION)
    assert bad in done and not_done == {slow}
    assert bad.status == "error"
    gate.open()
    ok = client.map(inc, range(3))
    done, not_done = wait(ok, timeout=30, return_when=FIRST_EXCEPTION)
    assert done == set(ok) and not not_done  # no exception: waits for all


def test_wait_timeout(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    f = client.submit(gated, 1, *gate.args)
    for when in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        with pytest.raises(TimeoutError):
            wait([f], timeout=0.1, return_when=when)
    gate.open()
    assert wait([f], timeout=30).done == {f}


def test_as_completed_yields_each_future_once(client: Client) -> None:
    fs = client.map(inc, range(50))
    seen = list(as_completed(fs, timeout=30))
    assert sorted(f.key for f in seen) == sorted(f.key for f in fs)
    assert all(f.done() for f in seen)


def test_as_completed_in_completion_order(
    client: Client, gates: Callable[[], Gate], workers: list[str]
) -> None:
    gate = gates()
    slow = client.submit(gated, "slow", *gate.args, workers=workers[0])
    quick = client.submit(inc, 1, workers=workers[1])
    it = as_completed([slow, quick], timeout=30)
    assert next(it) is quick
    gate.open()
    assert next(it) is slow
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_with_results(client: Client) -> None:
    fs = client.map(inc, range(10))
    pairs = list(as_completed(fs, with_results=True, timeout=30))
    assert sorted(r for _, r in pairs) == list(range(1, 11))
    assert all(f.result() == r for f, r in pairs)


def test_as_completed_with_results_and_errors(client: Client) -> None:
    good, bad = client.submit(inc, 1), client.submit(fail, "in as_completed")
    out = dict(as_completed([good, bad], with_results=True, raise_errors=False, timeout=30))
    assert out[good] == 2
    assert isinstance(out[bad], MyError)
    with pytest.raises(MyError, match="in as_completed"):
        list(as_completed([bad], with_results=True, timeout=30))


def test_as_completed_add_while_iterating(client: Client) -> None:
    ac = as_completed([client.submit(inc, 0)], timeout=30)
    results = []
    for f in ac:
        value = f.result()
        results.append(value)
        if value < 5:
            ac.add(client.submit(inc, value))
    assert results == [1, 2, 3, 4, 5]


def test_as_completed_timeout(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    ac = as_completed([client.submit(gated, 1, *gate.args)], timeout=0.1)
    with pytest.raises(TimeoutError):
        next(ac)


def test_add_done_callback(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    f = client.submit(gated, 5, *gate.args)
    called = threading.Event()
    got: list[tuple[Future, str]] = []

    def callback(fut: Future) -> None:
        got.append((fut, threading.current_thread().name))
        called.set()

    f.add_done_callback(callback)
    gate.wait_started()
    assert not called.is_set()
    gate.open()
    assert called.wait(30)
    assert got[0][0] is f and got[0][0].result() == 5
    assert got[0][1] != threading.current_thread().name  # not run in the caller's thread

    # Added after the future finished: called right away (still once).
    again = threading.Event()
    f.add_done_callback(lambda fut: again.set())
    assert again.wait(30)
    assert len(got) == 1


def test_done_callback_on_error_and_blocking_call_inside(client: Client) -> None:
    f = client.submit(fail, "callback error")
    out: list[object] = []
    called = threading.Event()

    def callback(fut: Future) -> None:
        out.append(fut.exception())  # a blocking call from the callback thread
        out.append(client.submit(inc, 1).result(timeout=30))
        called.set()

    f.add_done_callback(callback)
    assert called.wait(30)
    assert isinstance(out[0], MyError) and out[1] == 2


def test_raising_callback_does_not_break_others(client: Client) -> None:
    f = client.submit(inc, 1)
    called = threading.Event()

    def bad(fut: Future) -> None:
        raise RuntimeError("callback bug")

    f.add_done_callback(bad)
    f.add_done_callback(lambda fut: called.set())
    assert called.wait(30)
    assert f.result(timeout=30) == 2
