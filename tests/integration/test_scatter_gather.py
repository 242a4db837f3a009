"""scatter (numpy arrays used by tasks) and gather (nested structures, errors)."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest

from regrow import Client, Future
from regrow.protocol import lend, shm
from regrow.protocol.messages import GetDataMsg
from regrow.testing import MakeCluster, wait_until

from .tasks import MyError, add, fail, inc

Point = namedtuple("Point", ["x", "y"])


def array_sum(a: np.ndarray) -> float:
    return float(a.sum())


def scale(a: np.ndarray, k: float) -> np.ndarray:
    return a * k


def test_scatter_list_of_arrays(client: Client) -> None:
    arrays = [np.arange(n, dtype=np.float64) for n in (10, 100_000, 1_000_000)]
    futures = client.scatter(arrays)
    assert isinstance(futures, list) and len(futures) == 3
    assert all(isinstance(f, Future) and f.status == "finished" for f in futures)
    assert all(f.key.startswith("ndarray-") for f in futures)
    sums = client.gather([client.submit(array_sum, f) for f in futures], timeout=30)
    assert sums == [float(a.sum()) for a in arrays]
    back = client.gather(futures, timeout=30)
    for got, want in zip(back, arrays, strict=True):
        np.testing.assert_array_equal(got, want)
    # Spread over both workers.
    holders = client.who_has(futures)
    assert len({h for hs in holders.values() for h in hs}) == 2


def test_scatter_tuple_and_iterator(client: Client) -> None:
    assert client.gather(client.scatter((1, 2)), timeout=30) == [1, 2]
    assert client.gather(client.scatter(iter([3, 4])), timeout=30) == [3, 4]


def test_scatter_dict_uses_its_keys(client: Client) -> None:
    data = {"left": np.ones(1000), "right": np.full(1000, 2.0)}
    futures = client.scatter(data)
    assert set(futures) == {"left", "right"}
    assert futures["left"].key == "left" and futures["right"].key == "right"
    total = client.submit(
        add, client.submit(array_sum, futures["left"]), client.submit(array_sum, futures["right"])
    )
    assert total.result(timeout=30) == 3000.0


def test_scatter_single_value(client: Client) -> None:
    a = np.arange(12).reshape(3, 4)
    f = client.scatter(a)
    assert isinstance(f, Future)
    np.testing.assert_array_equal(client.submit(scale, f, 2).result(timeout=30), a * 2)
    assert client.scatter(5).result(timeout=30) == 5


def test_scatter_hash_gives_content_keys(client: Client) -> None:
    a = np.arange(100)
    assert client.scatter(a).key == client.scatter(a.copy()).key
    assert client.scatter(a).key != client.scatter(a + 1).key
    assert client.scatter(a, hash=False).key != client.scatter(a, hash=False).key


def test_scatter_broadcast(client: Client, workers: list[str]) -> None:
    big = np.random.default_rng(0).random(500_000)
    f = client.scatter(big, broadcast=True)
    assert sorted(client.who_has(f)[f.key]) == sorted(workers)
    results = client.gather(
        [client.submit(array_sum, f, workers=w, pure=False) for w in workers], timeout=30
    )
    assert results == [float(big.sum())] * 2


def test_scatter_to_chosen_workers(client: Client, workers: list[str]) -> None:
    info = client.scheduler_info()["workers"]
    for i, w in enumerate(workers):
        fs = client.scatter([np.full(10, i), np.ones(10)], workers=[w], hash=False)
        assert all(client.who_has(fs)[f.key] == [w] for f in fs)
        # By name as well as by address.
        g = client.scatter({f"by-name-{w}": np.ones(3)}, workers=info[w]["name"])
        assert client.who_has(list(g.values())) == {f"by-name-{w}": [w]}
        # A task on the other worker fetches the data it needs.
        other = next(x for x in workers if x != w)
        assert client.submit(array_sum, fs[1], workers=other).result(timeout=30) == 10.0
    with pytest.raises(ValueError, match="no such worker"):
        client.scatter([1], workers=["tcp://127.0.0.1:1"])


def test_gather_nested_structures(client: Client) -> None:
    a, b, c = client.submit(inc, 1), client.submit(inc, 2), client.submit(inc, 3)
    structure = {
        "list": [a, b, 10],
        "tuple": (c, (a,)),
        "dict": {"deep": [{"x": b}]},
        "set": {a},
        "point": Point(a, "y"),
        "ordered": OrderedDict(z=c),
        "plain": "text",
    }
    out = client.gather(structure, timeout=30)
    assert out == {
        "list": [2, 3, 10],
        "tuple": (4, (2,)),
        "dict": {"deep": [{"x": 3}]},
        "set": {2},
        "point": Point(2, "y"),
        "ordered": OrderedDict(z=4),
        "plain": "text",
    }
    assert type(out["point"]) is Point and type(out["ordered"]) is OrderedDict
    assert client.gather(a, timeout=30) == 2
    assert client.gather(iter([a, b]), timeout=30) == [2, 3]
    assert client.gather([], timeout=30) == []


def test_gather_errors_raise_and_skip(client: Client) -> None:
    good = client.map(inc, range(4))
    bad = client.submit(fail, "gathered error")
    with pytest.raises(MyError, match="gathered error"):
        client.gather([good, bad], timeout=30)
    assert client.gather([*good, bad], errors="skip", timeout=30) == [1, 2, 3, 4]
    nested = {"good": good[0], "bad": bad, "both": [good[1], bad], "t": (bad,)}
    assert client.gather(nested, errors="skip", timeout=30) == {
        "good": 1,
        "both": [2],
        "t": (),
    }


def test_gather_large_results(client: Client) -> None:
    fs = client.map(lambda n: np.full(n, n, dtype=np.int64), [1, 1_000, 2_000_000])
    out = client.gather(fs, timeout=60)
    assert [len(a) for a in out] == [1, 1_000, 2_000_000]
    assert int(out[2][-1]) == 2_000_000
    out[2][0] = 0  # results arrive writeable


def _forget_behind_the_schedulers_back(key: str) -> bool:
    from regrow import get_worker

    data = get_worker().data
    if key in data:
        del data[key]
        return True
    return False


def test_gather_tries_the_other_holder_and_reports_the_one_without_it(
    client: Client, workers: list[str]
) -> None:
    [f] = client.scatter([41], broadcast=True, hash=False)
    first, second = client.who_has(f)[f.key]
    assert {first, second} == set(workers)
    # The holder the client asks first (the first listed) lost the value silently.
    client.run(_forget_behind_the_schedulers_back, f.key, workers=[first])
    assert client.gather(f, timeout=30) == 41
    wait_until(lambda: client.who_has(f)[f.key] == [second], timeout=10)
    assert client.gather(f, timeout=30) == 41


def test_result_lost_behind_the_schedulers_back_is_recomputed(client: Client) -> None:
    f = client.submit(inc, 1, pure=False)
    assert f.result(timeout=30) == 2
    [holder] = client.who_has(f)[f.key]
    assert client.run(_forget_behind_the_schedulers_back, f.key, workers=[holder]) == {holder: True}
    # No holder has it: the scheduler hears so and recomputes it from its lineage.
    assert f.result(timeout=30) == 2
    assert client.who_has(f)[f.key]


def _ones(n: int) -> np.ndarray:
    return np.ones(n)


def _write_first_then_sum(a: np.ndarray) -> float:
    a[0] = -1.0
    return float(a.sum())


def _first(a: np.ndarray) -> float:
    return float(a[0])


def _host_id() -> str:
    from regrow import get_worker

    return get_worker().host_id


def _sealed_keys() -> list[str]:
    from regrow import get_worker

    return sorted(get_worker().data.sealed)


def test_large_result_is_shared_between_workers_and_writes_stay_private(
    make_cluster: MakeCluster,
) -> None:
    _, client = make_cluster(n_workers=2, seal_results=True)
    workers = sorted(client.scheduler_info()["workers"])
    n = 1_000_000  # 8 MB: sealed in shared memory when its task ends
    x = client.submit(_ones, n, workers=[workers[0]], pure=False)
    x.result(timeout=30)
    sealed = client.run(_sealed_keys)
    if not shm.MEMFD:
        pytest.skip("no memfd shared memory on this machine")
    assert sealed == {workers[0]: [x.key], workers[1]: []}
    # The consumer on the other worker writes into its input (its own copy-on-write
    # pages): the producer's value is untouched.
    assert (
        client.submit(_write_first_then_sum, x, workers=[workers[1]], pure=False).result(timeout=30)
        == float(n) - 2
    )
    assert client.submit(_first, x, workers=[workers[0]], pure=False).result(timeout=30) == 1.0
    x.release()
    # Released: the shared file is closed with it.
    wait_until(lambda: client.run(_sealed_keys) == {w: [] for w in workers}, timeout=10)


def test_without_shared_memory_large_values_go_by_socket(make_cluster: MakeCluster) -> None:
    # seal_results asked for too: without shared memory it must not happen.
    _, client = make_cluster(n_workers=2, shared_memory=False, seal_results=True)
    a, b = sorted(client.scheduler_info()["workers"])
    assert client.run(_host_id) == {a: "", b: ""}  # so no peer offers or asks for shm
    x = client.submit(_ones, 1_000_000, workers=[a], pure=False)
    assert client.submit(_write_first_then_sum, x, workers=[b], pure=False).result(
        timeout=30
    ) == float(1_000_000 - 2)
    assert client.run(_sealed_keys) == {a: [], b: []}
    got = client.gather(x, timeout=30)
    assert isinstance(got, np.ndarray) and float(got.sum()) == 1_000_000.0


def _lent_out() -> int:
    from regrow import get_worker

    return sum(len(loans) for loans in get_worker()._lent.values())


def test_large_result_is_copied_straight_from_the_holders_memory(
    client: Client, workers: list[str]
) -> None:
    if not lend.usable:
        pytest.skip("process_vm_readv is not allowed here")
    x = client.submit(_ones, 1_000_000, workers=[workers[0]], pure=False)
    assert client.submit(_write_first_then_sum, x, workers=[workers[1]], pure=False).result(
        timeout=30
    ) == float(1_000_000 - 2)
    # The borrower wrote into its own copy: the holder's value is as it was made.
    assert client.submit(_first, x, workers=[workers[0]], pure=False).result(timeout=30) == 1.0
    # The client borrows too (from either holder: B's copy, written, is a replica now).
    a = client.gather(x, timeout=30)
    assert a.shape == (1_000_000,) and float(a[1:].sum()) == 1_000_000.0 - 1
    # Every loan was given back.
    wait_until(lambda: client.run(_lent_out) == {w: 0 for w in workers}, timeout=10)


def _big_bytes(n: int) -> bytes:
    return b"x" * n  # read-only: it cannot be lent, so a same-host peer gets a /dev/shm file


def test_a_shared_memory_file_nobody_mapped_goes_with_its_worker(
    make_cluster: MakeCluster,
) -> None:
    import asyncio
    import os

    from regrow.config import Settings
    from regrow.protocol.comm import connect

    if not shm.HOST:
        pytest.skip("no writable /dev/shm here")
    cluster, client = make_cluster(n_workers=1)
    [worker] = client.scheduler_info()["workers"]
    x = client.submit(_big_bytes, 4 << 20, pure=False)
    x.result(timeout=30)
    key = x.key

    async def ask_and_walk_away() -> str:
        comm = await connect(worker, token=cluster.token, settings=Settings())
        try:
            reply, _ = await comm.request(GetDataMsg(keys=[key], host=shm.HOST, vm=False))
        finally:
            await comm.close()
        assert reply.shm is not None
        return reply.shm.path

    path = asyncio.run(ask_and_walk_away())
    assert os.path.exists(path)  # exported, never mapped: kept for up to 60 s
    del x
    client.close()
    cluster.close()  # the worker closes before that timer fires: the file goes with it
    assert not os.path.exists(path)
