"""as_completed beyond plain iteration, as dask.distributed's: batches, adding futures
while iterating (also from another thread), counting, clearing, results and errors,
and a timeout on each wait."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from regrow import CancelledError, Client, Future, as_completed, wait

from .tasks import Gate, MyError, fail, gated, inc


def test_batches_yield_what_completed_so_far(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    slow = client.submit(gated, "slow", *gate.args)
    quick = client.map(inc, range(5))
    wait(quick, timeout=30)
    ac = as_completed([*quick, slow])
    assert ac.count() == 6 and ac.has_ready()
    batches = ac.batches()
    assert set(next(batches)) == set(quick)  # all there at once: one batch
    assert ac.count() == 1 and not ac.has_ready() and not ac.is_empty()
    gate.open()
    assert next(batches) == [slow]
    assert ac.is_empty()
    with pytest.raises(StopIteration):
        next(batches)


def test_batches_with_results_and_futures_added_while_iterating(client: Client) -> None:
    ac = as_completed(client.map(inc, range(3)), with_results=True)
    seen: list[int] = []
    for batch in ac.batches():
        for future, result in batch:
            assert isinstance(future, Future) and future.result() == result
            seen.append(result)
            if result < 10:
                ac.add(client.submit(inc, result + 10))  # comes in a later batch
    assert sorted(seen) == [1, 2, 3, 12, 13, 14]


def test_update_and_add_while_iterating_one_by_one(client: Client) -> None:
    ac = as_completed([client.submit(inc, 0)])
    out = []
    for f in ac:
        out.append(f.result())
        if len(out) == 1:
            ac.update(client.map(inc, [100, 200]))
            assert ac.count() == 2
    assert sorted(out) == [1, 101, 201]


def test_a_future_added_from_another_thread_wakes_a_waiting_iterator(
    client: Client, gates: Callable[[], Gate]
) -> None:
    gate = gates()
    slow = client.submit(gated, "slow", *gate.args)
    ac = as_completed([slow], timeout=60)
    got: list[Future] = []
    reader = threading.Thread(target=lambda: got.extend(ac))
    reader.start()
    gate.wait_started()
    quick = client.submit(inc, 1)
    ac.add(quick)
    wait([quick], timeout=30)
    gate.open()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert got == [quick, slow]  # quick, added while the reader waited, came first


def test_the_same_future_twice_is_yielded_twice(client: Client) -> None:
    f = client.submit(inc, 41)
    ac = as_completed([f, f], with_results=True)
    assert ac.count() == 2
    assert list(ac) == [(f, 42), (f, 42)]


def test_clear_forgets_every_future(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    done = client.submit(inc, 1)
    wait([done], timeout=30)
    ac = as_completed([done, client.submit(gated, "slow", *gate.args)])
    ac.clear()
    assert ac.count() == 0 and ac.is_empty() and not ac.has_ready()
    assert list(ac) == [] and ac.next_batch() == []
    gate.open()  # its completion is not yielded any more
    ac.add(done)
    assert list(ac) == [done]


def test_errors_raise_with_results_and_lose_nothing(client: Client) -> None:
    good = client.map(inc, range(3))
    bad = client.submit(fail, "in a batch")
    late = client.map(inc, range(10, 12))
    wait([*good, bad, *late], timeout=30)
    # All completed already: they come in the order they were added.
    ac = as_completed([*good, bad, *late], with_results=True)
    batches = ac.batches()
    assert sorted(r for _, r in next(batches)) == [1, 2, 3]  # up to the erred one
    with pytest.raises(MyError, match="in a batch"):
        next(batches)
    # What followed the erred future is still to come.
    assert sorted(r for batch in ac.batches() for _, r in batch) == [11, 12]

    pairs = dict(as_completed([good[0], bad], with_results=True, raise_errors=False))
    assert pairs[good[0]] == 1 and isinstance(pairs[bad], MyError)
    # Without results an erred future is yielded like any other.
    assert set(as_completed([bad, good[0]])) == {bad, good[0]}


def test_a_cancelled_future_gives_its_cancelled_error(
    client: Client, gates: Callable[[], Gate]
) -> None:
    gate = gates()
    f = client.submit(gated, "never", *gate.args)
    client.cancel(f)
    ((future, result),) = list(as_completed([f], with_results=True))
    assert future is f and isinstance(result, CancelledError)


def test_timeout_bounds_each_wait(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    quick = client.submit(inc, 1)
    wait([quick], timeout=30)
    slow = client.submit(gated, "slow", *gate.args)
    ac = as_completed([quick, slow], with_results=True, timeout=0.2)
    with pytest.raises(TimeoutError, match="1 future"):
        for f, result in ac:
            assert f is quick and result == 2
    assert ac.count() == 1  # a timeout loses nothing: the iterator goes on
    ac.add(quick)
    assert next(ac) == (quick, 2)
    gate.open()
    ac.timeout = 30
    assert next(ac) == (slow, "slow")
    assert ac.is_empty()


def test_bad_arguments(client: Client) -> None:
    with pytest.raises(TypeError, match=r"as_completed\.update\(\) takes regrow Futures, got int"):
        as_completed(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got a str among them"):
        as_completed([client.submit(inc, 1), "x"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timeout= must be >= 0"):
        as_completed([], timeout=-1)
    with pytest.raises(TypeError, match="timeout= takes seconds"):
        as_completed([], timeout="soon")  # type: ignore[arg-type]
    ac = as_completed()
    with pytest.raises(TypeError, match=r"add\(\) takes a regrow Future, got str"):
        ac.add("x")  # type: ignore[arg-type]
    assert ac.is_empty() and list(ac) == [] and list(ac.batches()) == []
