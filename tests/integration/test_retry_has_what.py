"""Future.retry / Client.retry, Client.has_what and Client.ncores on a real cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from regrow import Client, LocalCluster, wait

from .tasks import MyError, inc


def flaky(flag: str, value: int) -> int:
    """Fails the first time (leaving ``flag`` behind), returns ``value`` after."""
    path = Path(flag)
    if not path.exists():
        path.touch()
        raise MyError(f"first try of {value}")
    return value


def test_future_retry_runs_an_erred_task_again(client: Client, tmp_path: Path) -> None:
    f = client.submit(flaky, str(tmp_path / "flag"), 42)
    assert isinstance(f.exception(timeout=30), MyError)
    f.retry()
    assert f.status in ("pending", "finished")  # no longer erred once retry returns
    assert f.result(timeout=30) == 42
    f.retry()  # a future that did not err is left alone
    assert f.status == "finished" and f.result(timeout=30) == 42


def test_retry_reruns_the_erred_inputs_and_tells_every_client(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    a = client.submit(flaky, str(tmp_path / "flag"), 1)
    b = client.submit(inc, a)
    with Client(cluster, set_as_default=False) as other:
        b2 = other.submit(inc, a)  # the same task, wanted by another client too
        assert b2.key == b.key
        wait([b, b2], timeout=30)
        assert b.status == b2.status == "error"
        client.retry([b, client.submit(inc, 5)])  # a finished future among them: ignored
        assert b.result(timeout=30) == 2
        assert b2.result(timeout=30) == 2  # the other client's future went pending too
        assert a.result(timeout=30) == 1


def test_retry_checks_its_arguments(cluster: LocalCluster, client: Client) -> None:
    with pytest.raises(TypeError, match=r"retry\(\) takes regrow Futures, got int"):
        client.retry(5)  # type: ignore[arg-type]
    with Client(cluster, set_as_default=False) as other:
        theirs = other.submit(inc, 1)
        with pytest.raises(ValueError, match="another client"):
            client.retry([theirs])
    f = client.submit(inc, 2)
    f.release()
    with pytest.raises(ValueError, match="released"):
        f.retry()


def test_has_what_and_ncores(client: Client, workers: list[str]) -> None:
    x = client.submit(inc, 1, workers=workers[0])
    y = client.submit(inc, 2, workers=workers[1])
    wait([x, y], timeout=30)
    held = client.has_what()
    assert set(held) == set(workers)
    assert x.key in held[workers[0]] and y.key in held[workers[1]]
    # The other way round of who_has.
    for worker, keys in held.items():
        for key, holders in client.who_has([k for k in (x, y) if k.key in keys]).items():
            assert worker in holders, key
    name = client.scheduler_info()["workers"][workers[1]]["name"]
    assert client.has_what(name) == {workers[1]: held[workers[1]]}
    assert client.has_what([workers[0], "tcp://nowhere:1"]) == {
        workers[0]: held[workers[0]],
        "tcp://nowhere:1": [],
    }
    assert client.ncores() == client.nthreads() == dict.fromkeys(workers, 1)
    assert client.nthreads(workers=[name, "nope"]) == {workers[1]: 1}
    with pytest.raises(TypeError, match=r"has_what\(\) takes a worker address or name"):
        client.has_what(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ncores\(\)|nthreads\(\)"):
        client.ncores([1])  # type: ignore[list-item]


def test_retry_and_has_what_on_an_asynchronous_client(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    async def main() -> None:
        async with Client(cluster, asynchronous=True, set_as_default=False) as c:
            f = c.submit(flaky, str(tmp_path / "flag"), 7)
            with pytest.raises(MyError):
                await f
            await f.retry()
            assert await f == 7
            held = await c.has_what()
            assert any(f.key in keys for keys in held.values())

    asyncio.run(main())
