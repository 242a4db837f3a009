"""The asynchronous client: ``Client(..., asynchronous=True)`` inside a running event loop.

Each test runs its coroutine with ``asyncio.run`` (no pytest plugin). The async client
runs on that loop, with no thread of its own; the ``client`` fixture (a synchronous
client) is used only for its check that every test leaves the cluster clean.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from regrow import (
    CancelledError,
    Client,
    Future,
    LocalCluster,
    as_completed,
    wait,
)

from .tasks import Gate, MyError, add, fail, gated, inc, total, worker_state

TIMEOUT = 30.0


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a test's coroutine in a fresh event loop, bounded by a deadline."""

    async def bounded() -> Any:
        async with asyncio.timeout(120):
            return await main()

    return asyncio.run(bounded())


async def until(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    """Await a condition (polling without blocking the loop), failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)


def connect(cluster: LocalCluster) -> Client:
    return Client(cluster, asynchronous=True, set_as_default=False)


def test_submit_and_await(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            assert c.asynchronous is True and c.status == "running"
            f = c.submit(inc, 1)
            assert isinstance(f, Future)  # at once, no await
            assert await f == 2
            # result() of an asynchronous client's future is a coroutine, as in dask.
            pending = f.result(timeout=TIMEOUT)
            assert inspect.isawaitable(pending)
            assert await pending == 2
            assert await f.exception() is None
            assert await f.traceback() is None
            # Futures as arguments, as with a synchronous client.
            assert await c.submit(add, f, 10) == 12
        assert c.status == "closed"

    assert client.asynchronous is False
    run(main)


def test_gather_many_and_nested(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            futs = c.map(inc, range(1000))
            assert await c.gather(futs, timeout=TIMEOUT) == list(range(1, 1001))
            # Larger results are fetched from the workers, not sent with the news.
            big = c.map(lambda n: bytes(n), [100_000, 200_000], pure=False)
            assert [len(b) for b in await c.gather(big)] == [100_000, 200_000]
            a, b, d = c.submit(inc, 1), c.submit(inc, 2), c.submit(inc, 3)
            nested = {"x": [a, (b, d)], "y": {"z": a}, "plain": 7}
            assert await c.gather(nested) == {"x": [2, (3, 4)], "y": {"z": 2}, "plain": 7}
            assert await c.gather(iter([a, b])) == [2, 3]
            assert await c.gather([]) == []
            erred = c.submit(fail, "skipped")
            assert await c.gather([a, erred, b], errors="skip") == [2, 3]
            with pytest.raises(MyError, match="skipped"):
                await c.gather([a, erred])

    run(main)


def test_scatter(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            [d] = await c.scatter([list(range(10))])
            assert isinstance(d, Future)
            assert await c.submit(sum, d) == 45
            by_name = await c.scatter({"async-a": 1, "async-b": 2})
            assert set(by_name) == {"async-a", "async-b"}
            assert by_name["async-a"].key == "async-a"
            assert await c.submit(total, by_name) == 3
            one = await c.scatter(41)
            assert await c.submit(inc, one) == 42
            everywhere = await c.scatter([5], broadcast=True)
            holders = await c.who_has(everywhere)
            assert len(holders[everywhere[0].key]) == 2
            with pytest.raises(ValueError, match="no such worker"):
                await c.scatter([1], workers=["no-such-worker"])

    run(main)


def test_as_completed_async(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            futs = c.map(inc, range(20))
            seen = [f async for f in as_completed(futs)]
            assert set(seen) == set(futs) and len(seen) == 20

            pairs = [p async for p in as_completed(c.map(inc, range(50, 60)), with_results=True)]
            assert sorted(r for _, r in pairs) == list(range(51, 61))
            assert all(isinstance(f, Future) and f.status == "finished" for f, _ in pairs)

            # raise_errors=True (the default): the erred future's exception is raised.
            mixed = [c.submit(inc, 100), c.submit(fail, "in as_completed")]
            with pytest.raises(MyError, match="in as_completed"):
                async for _ in as_completed(mixed, with_results=True):
                    pass
            # raise_errors=False: (future, exception) instead.
            out = {
                f.key: r
                async for f, r in as_completed(mixed, with_results=True, raise_errors=False)
            }
            assert out[mixed[0].key] == 101
            assert isinstance(out[mixed[1].key], MyError)

            # Futures added while iterating are waited for too.
            ac = as_completed([c.submit(inc, 200)])
            got = []
            async for f in ac:
                got.append(await f)
                if len(got) == 1:
                    ac.add(c.submit(inc, 300))
            assert sorted(got) == [201, 301]

    run(main)


def test_as_completed_async_timeout(
    cluster: LocalCluster, client: Client, gates: Callable[[], Gate]
) -> None:
    gate = gates()

    async def main() -> None:
        async with connect(cluster) as c:
            slow = c.submit(gated, 1, *gate.args)
            with pytest.raises(TimeoutError):
                async for _ in as_completed([slow], timeout=0.2):
                    pass
            gate.open()
            assert [f async for f in as_completed([slow], timeout=TIMEOUT)] == [slow]

    run(main)


def test_erred_task_raises_with_remote_traceback(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            f = c.submit(fail, "boom")
            with pytest.raises(MyError, match="boom") as info:
                await f
            notes = "\n".join(getattr(info.value, "__notes__", []))
            assert "remote traceback" in notes and "fail" in notes
            with pytest.raises(MyError, match="boom"):
                await f.result()
            exc = await f.exception()
            assert isinstance(exc, MyError)
            tb = await f.traceback()
            assert tb is not None and "raise MyError" in tb
            assert f.status == "error"

    run(main)


def test_cancel_and_timeouts(
    cluster: LocalCluster, client: Client, gates: Callable[[], Gate]
) -> None:
    gate = gates()

    async def main() -> None:
        async with connect(cluster) as c:
            slow = c.submit(gated, 1, *gate.args)
            with pytest.raises(TimeoutError):
                await c.gather([slow], timeout=0.2)
            with pytest.raises(TimeoutError):
                await slow.result(timeout=0.1)
            await until(lambda: gate.started, "the gated task starts")
            await c.cancel([slow])
            assert slow.cancelled()
            with pytest.raises(CancelledError):
                await slow
            with pytest.raises(CancelledError):
                await c.gather([slow])
            # Future.cancel and an empty cancel are awaitable too.
            f = c.submit(inc, 5)
            assert await f == 6
            await f.cancel()
            assert f.cancelled()
            await c.cancel([])

    run(main)


def test_cluster_info_and_run(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            info = await c.scheduler_info()
            assert len(info["workers"]) == 2
            assert await c.nthreads() == {a: 1 for a in info["workers"]}
            await c.wait_for_workers(2, timeout=TIMEOUT)
            with pytest.raises(TimeoutError):
                await c.wait_for_workers(3, timeout=0.2)
            ran = await c.run(worker_state)
            assert set(ran) == set(info["workers"])
            assert all(isinstance(r["pid"], int) for r in ran.values())
            f = c.submit(inc, 1)
            await f
            assert (await c.who_has([f]))[f.key]
            assert set(await c.nannies()) == set(cluster.nanny_addresses)

    run(main)


def test_await_client_form(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        pending = connect(cluster)
        try:
            # The constructor does not connect: that happens when it is awaited.
            assert pending.status == "connecting"
            with pytest.raises(RuntimeError, match="started first"):
                pending.scheduler_info()
            # Awaited twice at once: it connects once.
            c, same = await asyncio.gather(pending, pending)
            assert c is pending and same is c and c.status == "running"
            assert c is await c  # awaiting again is harmless
            assert await c.submit(inc, 10) == 11
            await c.close()
            assert c.status == "closed"
            await c.close()  # closing twice is harmless
        finally:
            await pending.close()  # on a failed assertion too

        # Never awaited: closing needs nothing.
        unused = connect(cluster)
        await unused.close()
        assert unused.status == "closed"

        # Nothing listens there: awaiting it raises, and leaves it closed.
        nowhere = Client("tcp://127.0.0.1:1", asynchronous=True, timeout=1, set_as_default=False)
        with pytest.raises(OSError, match="could not reach"):
            await nowhere
        assert nowhere.status == "closed"

    run(main)


def test_loop_keeps_running_while_waiting(
    cluster: LocalCluster, client: Client, gates: Callable[[], Gate]
) -> None:
    gate = gates()

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        try:
            async with connect(cluster) as c:
                slow = c.submit(gated, "slow", *gate.args)
                waiting = asyncio.create_task(c.gather([slow, c.submit(inc, 1)]))
                await until(lambda: gate.started, "the gated task starts")
                # The loop is not blocked by the gather: the ticker goes on, many times.
                start = ticks
                await until(lambda: ticks >= start + 50, "the ticker ticks on")
                assert not waiting.done()
                gate.open()
                assert await asyncio.wait_for(waiting, TIMEOUT) == ["slow", 2]
        finally:
            ticking.cancel()

    run(main)


def test_sync_client_future_awaited_in_a_loop(client: Client, gates: Callable[[], Gate]) -> None:
    """A synchronous client's Future awaited in some event loop does not block it."""
    gate = gates()
    slow = client.submit(gated, 3, *gate.args)
    big = client.submit(lambda: bytes(100_000), pure=False)  # fetched, not inline

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        try:
            waiting = asyncio.ensure_future(slow)
            await until(lambda: gate.started, "the gated task starts")
            start = ticks
            await until(lambda: ticks >= start + 50, "the ticker ticks on")
            assert not waiting.done()
            gate.open()
            assert await asyncio.wait_for(waiting, TIMEOUT) == 3
            assert len(await big) == 100_000
        finally:
            ticking.cancel()

    run(main)


def test_no_thread_is_started(cluster: LocalCluster, client: Client) -> None:
    """The async client's session runs in the caller's loop: no new thread, ever."""
    before = set(threading.enumerate())

    async def main() -> set[threading.Thread]:
        async with connect(cluster) as c:
            assert c._loop.loop is asyncio.get_running_loop()
            f = c.submit(inc, 1)
            assert await f == 2
            assert await c.gather(c.map(inc, range(100))) == list(range(1, 101))
            [d] = await c.scatter([list(range(100))])
            assert await c.submit(sum, d) == 4950
            assert len(await c.gather(c.map(lambda n: bytes(n), [50_000], pure=False))) == 1
            assert [g async for g in as_completed([f])] == [f]
            await c.run(inc, 1)
            await c.scheduler_info()
            await wait([f])
            during = set(threading.enumerate())
        return during

    during = run(main)
    assert during - before == set()
    assert set(threading.enumerate()) - before == set()


def test_released_future_frees_its_key(cluster: LocalCluster, client: Client) -> None:
    async def held(c: Client) -> bool:
        info = await c.scheduler_info()
        return bool(info["tasks"]) or any(w["nkeys"] for w in info["workers"].values())

    async def until_released(c: Client) -> None:
        deadline = time.monotonic() + TIMEOUT
        while await held(c):
            assert time.monotonic() < deadline, "the released key is still held"
            await asyncio.sleep(0.01)

    async def main() -> None:
        async with connect(cluster) as c:
            f = c.submit(inc, 41)
            assert await f == 42
            assert await held(c)
            del f  # the release goes through the loop to the scheduler
            await until_released(c)
            # One released in another thread: its loop is told thread-safely.
            holder = [c.submit(inc, 100)]
            assert await holder[0] == 101
            await asyncio.to_thread(holder.clear)
            await until_released(c)

    run(main)


def test_wait(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        async with connect(cluster) as c:
            futs = c.map(inc, range(10))
            done, not_done = await wait(futs, timeout=TIMEOUT)
            assert done == set(futs) and not not_done

    run(main)


def test_own_local_cluster() -> None:
    """``Client(asynchronous=True)`` with no address starts (and stops) a cluster."""

    async def main() -> LocalCluster:
        async with Client(asynchronous=True, set_as_default=False) as c:
            assert isinstance(c.cluster, LocalCluster)
            assert await c.submit(inc, 1) == 2
            return c.cluster

    own = run(main)
    assert own.scheduler_proc is not None and own.scheduler_proc.poll() is not None
    assert all(wp.proc.poll() is not None for wp in own.workers)


def test_restart_and_shutdown(make_cluster: Callable[..., tuple[LocalCluster, Client]]) -> None:
    cluster, _ = make_cluster()

    async def main() -> None:
        async with connect(cluster) as c:
            f = c.submit(inc, 1)
            assert await f == 2
            await c.restart(timeout=TIMEOUT)
            assert f.cancelled()
            assert len((await c.scheduler_info())["workers"]) == 2
            assert await c.submit(inc, 2) == 3
            await c.shutdown()
            assert c.status == "closed"

    run(main)
    assert cluster.scheduler_proc is not None
    assert cluster.scheduler_proc.wait(TIMEOUT) is not None


def test_sync_only_api_refuses_async_client(cluster: LocalCluster, client: Client) -> None:
    async def main() -> None:
        c = connect(cluster)
        try:
            with pytest.raises(RuntimeError, match="async with"), c:
                pass
        finally:
            await c.close()

    run(main)
