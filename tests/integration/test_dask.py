"""dask collections on a regrow cluster, each checked against dask's synchronous
scheduler as the oracle."""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import pytest

from regrow import Client, Future, LocalCluster

from .dask_tasks import PartitionError, fail_on, flaky, worker_pid
from .tasks import add, inc

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")


def sync(x: object) -> object:
    return dask.compute(x, scheduler="sync")[0]


def test_client_is_dasks_default_scheduler_while_open(cluster: LocalCluster) -> None:
    import pickle

    from dask.base import get_scheduler

    before = dask.config.get("scheduler", None)
    with Client(cluster) as client:
        assert dask.config.get("scheduler") == "regrow"
        assert get_scheduler().client() is client  # type: ignore[attr-defined]
        assert dask.config.get("dataframe.shuffle.method") == "tasks"
        pickle.dumps(dask.config.config)  # as dask.distributed's nannies do
        with Client(cluster) as inner:
            assert get_scheduler().client() is inner  # type: ignore[attr-defined]
        assert get_scheduler().client() is client  # type: ignore[attr-defined]
        x = da.arange(100, chunks=10)
        assert x.sum().compute() == 4950
        [xp] = dask.persist(x)
        assert any(isinstance(v, Future) for v in dict(xp.__dask_graph__()).values())
        assert xp.sum().compute() == 4950
        with Client(cluster, set_as_default=False) as other:
            assert get_scheduler().client() is client  # type: ignore[attr-defined]
            assert other.compute(x.sum(), sync=True) == 4950
    assert dask.config.get("scheduler", None) == before


def test_legacy_graph_with_tuple_keys_and_nested_keys(client: Client) -> None:
    dsk = {
        "x": 1,
        "y": (inc, "x"),
        ("z", 0): (add, "y", 10),
        ("z", 1): (add, ("z", 0), "y"),
        "alias": ("z", 1),
        "l": [(inc, "x"), (inc, "y")],
    }
    assert client.get(dsk, "y") == 2
    assert client.get(dsk, [["y", ("z", 0)], "alias", "l"]) == [[2, 12], 14, [2, 3]]
    futures = client.get(dsk, [("z", 1)], sync=False)
    assert isinstance(futures[0], Future)
    assert futures[0].key == "('z', 1)"  # a tuple key reads as dask prints it
    assert futures[0].result(timeout=30) == 14


def test_task_spec_graph(client: Client) -> None:
    from dask._task_spec import Alias, DataNode, List, Task, TaskRef

    dsk = {
        "a": DataNode("a", 5),
        "b": Task("b", operator.mul, TaskRef("a"), 3),
        "c": Alias("c", "b"),
        "d": Task("d", sum, List(TaskRef("a"), TaskRef("c"))),
    }
    assert client.get(dsk, ["c", "d"]) == [15, 20]


def test_graph_errors_are_clear(client: Client) -> None:
    from dask._task_spec import Task, TaskRef

    with pytest.raises(ValueError, match="does not define"):
        client.get({"y": Task("y", inc, TaskRef("nowhere"))}, "y")
    with pytest.raises(ValueError, match="cycle"):
        client.get({"a": (inc, "b"), "b": (inc, "a")}, "a")
    with pytest.raises(TypeError, match="dask graph"):
        client.get([1, 2], "a")


def test_array_operations(client: Client) -> None:
    rs = da.random.RandomState(42)
    x = rs.random((300, 200), chunks=(70, 60))
    y = rs.random((200, 300), chunks=(50, 80))
    cases = {
        "elementwise": (x * 2 + 1) ** 2 - np.sin(x),
        "sum": x.sum(),
        "mean-axis": x.mean(axis=0),
        "std": x.std(),
        "transpose": x + y.T,
        "matmul": x @ y,
        "rechunk": x.rechunk((150, 25)),
        "slicing": x[10:250:3, ::-7],
        "fancy": x[[5, 1, 99], :][:, 3],
        "cumsum": x.cumsum(axis=1),
        "argmax": x.argmax(axis=1),
    }
    results = dask.compute(*cases.values())
    for name, got, lazy in zip(cases, results, cases.values(), strict=True):
        np.testing.assert_allclose(got, sync(lazy), err_msg=name)
    assert (x + x.T[:200, :300].T).mean().compute() == pytest.approx(sync((x + x).mean()))


def test_dataframe_read_csv_groupby_and_shuffles(client: Client, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["alice", "bob", "carol", "dan", "erin"]
    for i in range(6):
        pd.DataFrame(
            {
                "id": rng.permutation(np.arange(i * 500, (i + 1) * 500)),
                "name": rng.choice(names, 500),
                "amount": rng.integers(0, 1000, 500),
            }
        ).to_csv(tmp_path / f"part-{i}.csv", index=False)
    df = dd.read_csv(str(tmp_path / "*.csv"))
    other = dd.from_pandas(
        pd.DataFrame({"name": names[::-1], "team": ["x", "y", "x", "y", "z"]}), npartitions=2
    )
    cases = {
        "groupby-mean": df.groupby("name").amount.mean(),
        "groupby-agg": df.groupby("name").agg({"amount": ["sum", "max", "count"]}),
        "set_index": df.set_index("id"),
        "merge": df.merge(other, on="name"),
        "groupby-apply": df.groupby("name").amount.apply(
            lambda s: s.nlargest(2).sum(), meta=("amount", "int64")
        ),
        "value_counts": df.name.value_counts(),
    }
    for name, lazy in cases.items():
        got = lazy.compute()
        want = sync(lazy)
        if name in ("merge", "set_index"):
            got = got.reset_index().sort_values(list(got.reset_index().columns))
            want = want.reset_index().sort_values(list(want.reset_index().columns))
            got, want = got.reset_index(drop=True), want.reset_index(drop=True)
        else:
            got, want = got.sort_index(), want.sort_index()
        if isinstance(got, pd.DataFrame):
            pd.testing.assert_frame_equal(got, want, check_dtype=False, obj=name)
        else:
            pd.testing.assert_series_equal(got, want, check_dtype=False, obj=name)
    assert df.set_index("id").index.compute().is_monotonic_increasing


def test_bag_word_frequencies(client: Client) -> None:
    text = ["the cat sat", "on the mat", "the end", "a cat", "mat mat"] * 20
    b = db.from_sequence(text, npartitions=7).str.split().flatten().frequencies()
    assert sorted(b.compute()) == sorted(sync(b))  # type: ignore[arg-type]


def test_delayed_with_future_argument(client: Client) -> None:
    f = client.submit(inc, 41)
    d = dask.delayed(add)(f, 100)
    assert d.compute() == 142
    nested = dask.delayed(sum)([f, dask.delayed(inc)(f), 1])
    assert nested.compute() == 42 + 43 + 1
    futures = client.compute([d, nested])
    assert all(isinstance(x, Future) for x in futures)
    assert client.gather(futures) == [142, 86]


def test_persist_then_compute(client: Client) -> None:
    x = da.random.RandomState(1).random((400, 400), chunks=(100, 100))
    xp = client.persist(x)
    assert type(xp) is type(x) and xp.chunks == x.chunks
    keys = [str(k) for k in dask.core.flatten(xp.__dask_keys__())]
    assert set(keys) <= set(client.who_has())  # backed by our Futures
    np.testing.assert_allclose(xp.sum().compute(), sync(x.sum()))
    f = client.compute(xp.std())
    assert isinstance(f, Future)
    np.testing.assert_allclose(f.result(timeout=60), sync(x.std()))
    np.testing.assert_allclose(dask.compute(xp.T @ xp, scheduler=client.get)[0], sync(x.T @ x))
    [a, b] = dask.persist(xp + 1, x.mean(axis=1))
    np.testing.assert_allclose(a.compute(), sync(x + 1))
    np.testing.assert_allclose(b.compute(), sync(x.mean(axis=1)))
    df = dd.from_pandas(pd.DataFrame({"a": range(100), "b": [i % 7 for i in range(100)]}), 4)
    dfp = client.persist(df)
    pd.testing.assert_series_equal(
        dfp.groupby("b").a.sum().compute(), df.groupby("b").a.sum().compute(scheduler="sync")
    )


def test_compute_returns_futures(client: Client) -> None:
    x = da.arange(1000, chunks=100)
    f = client.compute(x.sum())
    assert isinstance(f, Future)
    assert f.result(timeout=30) == 499500
    fs = client.compute([x.sum(), x.max(), (x + 1)[:3]])
    assert isinstance(fs, list) and all(isinstance(x, Future) for x in fs)
    got = client.gather(fs)
    assert got[:2] == [499500, 999] and list(got[2]) == [1, 2, 3]
    assert client.compute(x.min(), sync=True) == 0


def test_error_in_one_partition_raises_with_remote_traceback(client: Client) -> None:
    b = db.from_sequence(range(20), npartitions=5).map(fail_on, bad=13)
    with pytest.raises(PartitionError, match="bad partition 13") as info:
        b.sum().compute()
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "remote traceback" in notes and "fail_on" in notes
    # Everything else still works afterwards.
    assert db.from_sequence(range(20), npartitions=5).sum().compute() == 190


def test_annotations_retries_and_workers(client: Client, tmp_path: Path) -> None:
    marker = str(tmp_path / "failed-once")
    with dask.annotate(retries=1):
        d = dask.delayed(flaky)(7, marker)
    assert d.compute(optimize_graph=False) == 7
    marker2 = str(tmp_path / "failed-once-2")
    assert client.compute(dask.delayed(flaky)(8, marker2), retries=1, sync=True) == 8
    info = client.scheduler_info()["workers"]
    target = sorted(info)[0]
    with dask.annotate(workers=[target]):
        pids = db.from_sequence(range(8), npartitions=8).map(worker_pid)
    assert set(pids.compute(optimize_graph=False)) == {info[target]["pid"]}


def test_large_graph_goes_in_batches(client: Client) -> None:
    # Several messages of tasks, the leaves of the first read by tasks of the last (the
    # reversal pairs chunk i with chunk n-1-i): they must outlive the message that
    # carried them. The client fixture then checks that every key was let go.
    x = da.ones(2_500, chunks=1)
    assert (x[::-1] + 2 * x).sum().compute() == 7_500


def test_disk_shuffle_graph_is_refused(client: Client) -> None:
    # dask's disk shuffle (its default without a dask.distributed client) needs one
    # machine and duplicates rows when a task runs twice: regrow says so instead.
    df = dd.from_pandas(pd.DataFrame({"a": range(10)}), npartitions=2)
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        parts = df.shuffle("a").to_delayed()
    with pytest.raises(ValueError, match="disk shuffle"):
        client.compute(parts)
    # Chosen by nobody (dask would pick the disk shuffle with no dask.distributed
    # client), the method is decided when the graph is built: by tasks, on regrow.
    with dask.config.set({"dataframe.shuffle.method": None}):
        lazy = df.shuffle("a")
        assert len(client.compute(lazy, sync=True)) == 10


def test_asynchronous_client_computes_and_persists(cluster: LocalCluster) -> None:
    import asyncio

    async def main() -> None:
        async with Client(cluster, asynchronous=True, set_as_default=False) as c:
            x = da.arange(100, chunks=10)
            f = c.compute(x.sum())
            assert isinstance(f, Future)
            assert await f == 4950
            assert await c.compute(x.max(), sync=True) == 99
            xp = c.persist(x)
            assert await c.compute(xp[::2].sum()) == sum(range(0, 100, 2))
            with pytest.raises(RuntimeError, match="asynchronous"):
                c.get({"a": 1}, "a")

    asyncio.run(main())
