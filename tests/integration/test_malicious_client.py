"""An authenticated client that sends graphs that cannot run: a clear error for that
client, while the scheduler and another client carry on (real processes).

What the public API lets through is sent through it: ``Client.get`` with a cyclic dask
graph (refused by the client itself), tasks naming keys by hand (``key=`` and
``Future(key, client)``) that depend on each other in a cycle or on keys nobody has, a
released Future as an argument, huge fan-ins, out-of-range options.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import pytest

from regrow import Client, Future, FutureLostError, LocalCluster
from regrow.errors import InvalidGraphError
from regrow.testing import wait_until

from .tasks import inc, total


@pytest.fixture
def good(cluster: LocalCluster, client: Client) -> Iterator[Client]:
    """A second, well-behaved client with work under way before the bad input comes
    (``client`` is the malicious one)."""
    with Client(cluster, set_as_default=False) as c:
        yield c


def busy(good: Client) -> list[Future]:
    """The good client's work: a chain and a fan-in, started before the bad input."""
    chain = [good.submit(inc, 0, pure=False)]
    for _ in range(20):
        chain.append(good.submit(inc, chain[-1]))
    return [*chain, good.submit(total, good.map(inc, range(200)))]


def correct(good: Client, futures: list[Future]) -> None:
    *chain, summed = futures
    assert good.gather(chain, timeout=60) == list(range(1, 22))
    assert summed.result(timeout=60) == sum(range(1, 201))
    assert good.submit(operator.mul, 6, 7, pure=False).result(timeout=30) == 42


def test_cyclic_dask_graph_is_refused_by_the_client(client: Client, good: Client) -> None:
    work = busy(good)
    dsk = {"a": (inc, "b"), "b": (inc, "a"), "ok": (inc, 1)}
    with pytest.raises(ValueError, match="cycle"):
        client.get(dsk, ["a"])
    with pytest.raises(ValueError, match="cycle"):
        client.get({"s": (inc, "s")}, "s")
    # The acyclic part of the same graph runs.
    assert client.get(dsk, "ok") == 2
    correct(good, work)


def test_cycle_sent_by_hand_errs_with_invalid_graph_error(client: Client, good: Client) -> None:
    work = busy(good)
    # One message (map sends its batch at once) whose tasks depend on each other in a
    # cycle, each naming the next by a Future made from a bare key.
    keys = ["cyc-a", "cyc-b", "cyc-c"]
    refs = [Future(keys[(i + 1) % 3], client) for i in range(3)]
    cycle = client.map(inc, refs, key=keys)
    selfish = client.map(inc, [Future("cyc-self", client)], key=["cyc-self"])
    for f in [*cycle, *selfish]:
        with pytest.raises(InvalidGraphError, match="dependency cycle") as info:
            f.result(timeout=30)
        assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidGraphError, match="'cyc-a' -> 'cyc-b' -> 'cyc-c' -> 'cyc-a'"):
        cycle[0].result(timeout=30)
    # What needs the cycle errs with the same error; the bad client can still work.
    with pytest.raises(InvalidGraphError):
        client.submit(inc, cycle[1]).result(timeout=30)
    assert client.submit(inc, 41).result(timeout=30) == 42
    correct(good, work)
    del cycle, selfish, refs


def test_unknown_and_released_dependencies_err_with_future_lost_error(
    client: Client, good: Client
) -> None:
    work = busy(good)
    ghost = client.submit(inc, Future("never-submitted", client))
    with pytest.raises(FutureLostError, match="'never-submitted'"):
        ghost.result(timeout=30)
    # A Future used as an argument after its release reached the scheduler (which then
    # holds the key nowhere, as who-has says, and has forgotten it).
    gone = client.submit(inc, 1, pure=False)
    assert gone.result(timeout=30) == 2
    assert client.who_has(gone) != {gone.key: []}
    gone.release()
    wait_until(lambda: client.who_has(gone) == {gone.key: []}, timeout=30, what="release")
    late = client.submit(inc, gone)
    with pytest.raises(FutureLostError, match=repr(gone.key)):
        late.result(timeout=30)
    assert client.submit(inc, 1, pure=False).result(timeout=30) == 2
    correct(good, work)


def test_huge_fan_ins_work(client: Client, good: Client) -> None:
    work = busy(good)
    one = client.submit(inc, 0)
    # A million references to one input: one dependency.
    assert client.submit(total, [one] * 1_000_000).result(timeout=120) == 1_000_000
    # Thousands of distinct inputs.
    parts = client.map(inc, range(5_000))
    assert client.submit(total, parts).result(timeout=120) == sum(range(1, 5_001))
    correct(good, work)


def test_out_of_range_options(client: Client, good: Client) -> None:
    work = busy(good)
    # The extremes of a 64-bit priority run (the scheduler negates it: both signs fit).
    for priority in (2**63 - 1, -(2**63 - 1)):
        assert client.submit(inc, 1, priority=priority, pure=False).result(timeout=30) == 2
    # Past them: refused in the caller's thread, or clamped by the scheduler. Never again
    # an order to a worker that cannot be packed (which lost that worker's whole batch).
    try:
        f = client.submit(inc, 1, priority=2**64 - 1, pure=False)
    except ValueError as exc:
        assert "priority" in str(exc)
    else:
        assert f.result(timeout=30) == 2
    with pytest.raises(ValueError, match="retries"):
        client.submit(inc, 1, retries=-1)
    correct(good, work)
