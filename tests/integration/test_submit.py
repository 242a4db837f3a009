"""Submitting work and getting results back, on the shared 2-process cluster."""

from __future__ import annotations

import functools
import operator
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from regrow import Client, Future

from .tasks import Box, Gate, add, double, gated, inc, total, unbox_inc


def test_submit_result(client: Client) -> None:
    f = client.submit(inc, 1)
    assert isinstance(f, Future)
    assert f.result(timeout=30) == 2
    assert f.done() and f.status == "finished"
    assert f.exception() is None and f.traceback() is None
    assert client.submit(operator.add, 1, y := 2).result(timeout=30) == 1 + y
    assert client.submit(lambda x, *, k: x * k, 3, k=4).result(timeout=30) == 12
    assert client.submit(functools.partial(add, 10), 5).result(timeout=30) == 15


def test_futures_as_arguments_nested_in_containers(client: Client) -> None:
    a, b, c = client.submit(inc, 1), client.submit(inc, 2), client.submit(inc, 3)
    nested = client.submit(total, [a, (b, {"c": c, "n": [a, 10]})], extra={"k": (b,)})
    # 2 + (3 + (4 + (2 + 10))) + 3
    assert nested.result(timeout=30) == 24
    assert client.submit(total, (a,), {"x": [b]}).result(timeout=30) == 5


def test_future_inside_list_resolves_to_its_value(client: Client) -> None:
    f = client.submit(inc, 41)
    assert client.submit(lambda xs: [type(x).__name__ for x in xs], [f, 1]).result(30) == [
        "int",
        "int",
    ]
    assert client.submit(lambda d: d["f"] + 1, {"f": f}).result(timeout=30) == 43


def test_map_ten_thousand_tasks_with_gather(client: Client) -> None:
    futures = client.map(inc, range(10_000))
    assert len(futures) == 10_000
    assert len({f.key for f in futures}) == 10_000
    assert client.gather(futures, timeout=120) == list(range(1, 10_001))


def test_map_with_several_iterables_and_kwargs(client: Client) -> None:
    futures = client.map(lambda x, y, z=0: x * y + z, [1, 2, 3], [4, 5, 6, 7], z=1)
    assert client.gather(futures, timeout=30) == [5, 11, 19]
    named = client.map(inc, [1, 2], key="incr")
    assert all(f.key.startswith("incr-") for f in named)
    explicit = client.map(inc, [1, 2], key=["first", "second"])
    assert [f.key for f in explicit] == ["first", "second"]
    assert client.gather([named, explicit], timeout=30) == [[2, 3], [2, 3]]


def test_diamond(client: Client) -> None:
    a = client.submit(inc, 1)
    b = client.submit(inc, a)
    c = client.submit(double, a)
    d = client.submit(add, b, c)
    assert d.result(timeout=30) == (2 + 1) + 2 * 2


def test_chain_of_200(client: Client) -> None:
    x = client.submit(inc, 0)
    for _ in range(199):
        x = client.submit(inc, x)
    assert x.result(timeout=60) == 200


def test_tree_reduction(client: Client) -> None:
    layer = client.map(inc, range(100))
    while len(layer) > 1:
        nxt = [client.submit(add, layer[i], layer[i + 1]) for i in range(0, len(layer) - 1, 2)]
        if len(layer) % 2:
            nxt.append(layer[-1])
        layer = nxt
    assert layer[0].result(timeout=60) == sum(range(1, 101))


def test_pure_tasks_share_keys(client: Client) -> None:
    a, b = client.submit(inc, 1), client.submit(inc, 1)
    assert a.key == b.key and a == b
    assert client.submit(inc, 2).key != a.key
    assert client.submit(double, 1).key != a.key
    assert client.submit(add, 1, y=2).key == client.submit(add, 1, y=2).key
    assert client.submit(add, 1, y=2).key != client.submit(add, 1, y=3).key
    assert [f.key for f in client.map(inc, [1, 2])] == [a.key, client.submit(inc, 2).key]
    assert a.key.startswith("inc-")
    assert a.result(timeout=30) == b.result(timeout=30) == 2


def test_impure_tasks_get_distinct_keys(client: Client) -> None:
    fs = [client.submit(inc, 1, pure=False) for _ in range(5)]
    assert len({f.key for f in fs}) == 5
    mapped = client.map(inc, [1, 1, 1], pure=False)
    assert len({f.key for f in mapped}) == 3
    assert client.gather(fs + mapped, timeout=30) == [2] * 8


def test_explicit_key(client: Client) -> None:
    f = client.submit(inc, 1, key="my-key")
    assert f.key == "my-key"
    assert f.result(timeout=30) == 2


def test_result_timeout(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    f = client.submit(gated, "late", *gate.args)
    with pytest.raises(TimeoutError):
        f.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        f.exception(timeout=0.05)
    with pytest.raises(TimeoutError):
        client.gather([f], timeout=0.05)
    assert not f.done()
    gate.open()
    assert f.result(timeout=30) == "late"


def test_future_pickled_in_the_client_process_still_works(client: Client) -> None:
    f = client.submit(inc, 1)
    g = pickle.loads(pickle.dumps(f))
    assert isinstance(g, Future) and g is not f
    assert g.key == f.key and g.client is client
    del f
    assert g.result(timeout=30) == 2
    assert client.submit(inc, g).result(timeout=30) == 3


def test_future_pickled_before_it_finishes(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    f = client.submit(gated, 7, *gate.args)
    g = pickle.loads(pickle.dumps([f]))[0]
    assert not g.done()
    gate.open()
    assert g.result(timeout=30) == 7
    assert f.result(timeout=30) == 7


def test_futures_are_awaitable(client: Client) -> None:
    import asyncio

    async def main() -> int:
        return int(await client.submit(inc, 9))

    assert asyncio.run(main()) == 10


def test_same_key_again_right_after_its_last_future_is_dropped(client: Client) -> None:
    # Each temporary Future is dropped just before the next one for its key is made.
    for _ in range(100):
        assert client.submit(inc, 7).result(timeout=30) == 8
    for _ in range(100):
        assert client.scatter(5).result(timeout=30) == 5
    for _ in range(20):
        assert client.gather(client.map(inc, range(5)), timeout=30) == [1, 2, 3, 4, 5]


def test_future_inside_an_arbitrary_object(client: Client) -> None:
    f = client.submit(inc, 1)
    assert client.submit(unbox_inc, Box(f)).result(timeout=30) == 3
    assert client.submit(unbox_inc, box=Box(f)).result(timeout=30) == 3


def test_submit_and_gather_from_many_threads(client: Client) -> None:
    def work(i: int) -> int:
        f = client.submit(inc, i, pure=False)
        g = client.submit(double, f)
        return int(client.gather(g, timeout=30))

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(work, range(200))) == [2 * (i + 1) for i in range(200)]
