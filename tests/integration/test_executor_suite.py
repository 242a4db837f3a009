"""``Client.get_executor()`` against the contract of ``concurrent.futures`` executors.

Modelled on CPython's own executor tests (Lib/test/test_concurrent_futures: executor.py,
test_wait.py, test_as_completed.py, test_shutdown.py), with gates instead of sleeps:
a gated task runs until the test opens its gate, so "still running" is a fact, not a
bet on timing. Where a cluster must differ from a local pool the test says so (the
module docstring of ``regrow.client.executor`` lists the differences).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from regrow import Client, LocalCluster
from regrow.client.executor import ClientExecutor
from regrow.testing import wait_until

from .executor_tasks import capture, make_dummy_object, mul, pid, started_and_gated
from .tasks import Gate, MyError, fail, worker_state

Gates = Callable[[], Gate]


# ---------------------------------------------------------------------- helpers
def pending_future() -> cf.Future[Any]:
    return cf.Future()


def running_future() -> cf.Future[Any]:
    f: cf.Future[Any] = cf.Future()
    f.set_running_or_notify_cancel()
    return f


def cancelled_future() -> cf.Future[Any]:
    """Cancelled, but no executor has taken notice yet: ``wait`` counts it not done."""
    f: cf.Future[Any] = cf.Future()
    f.cancel()
    return f


def cancelled_and_notified_future() -> cf.Future[Any]:
    f = cancelled_future()
    f.set_running_or_notify_cancel()
    return f


def exception_future() -> cf.Future[Any]:
    f: cf.Future[Any] = cf.Future()
    f.set_exception(OSError())
    return f


def successful_future() -> cf.Future[Any]:
    f: cf.Future[Any] = cf.Future()
    f.set_result(42)
    return f


@pytest.fixture
def ex(client: Client, gates: Gates) -> Iterator[ClientExecutor]:
    """An executor on the session cluster; at teardown (before the gates open) it is
    shut down, cancelling whatever a test left."""
    executor = client.get_executor()
    assert isinstance(executor, ClientExecutor)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def serial(client: Client, gates: Gates, workers: list[str]) -> Iterator[ClientExecutor]:
    """An executor whose tasks all run on one worker thread, in submission order."""
    executor = client.get_executor(workers=workers[0])
    assert isinstance(executor, ClientExecutor)
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)


def gated_call(
    executor: cf.Executor, value: Any, gate: Gate, markers: Path, **kw: Any
) -> cf.Future[Any]:
    return executor.submit(started_and_gated, value, str(gate.path), str(markers), **kw)


def started(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.glob("started-*"))


def wait_started(markers: Path, value: Any) -> None:
    wait_until((markers / f"started-{value}").exists, timeout=30, what=f"{value!r} started")


def cluster_idle(client: Client) -> bool:
    """The scheduler holds no task and no worker holds a key."""
    info = client.scheduler_info()
    return not info["tasks"] and all(w["nkeys"] == 0 for w in info["workers"].values())


def workers_idle(client: Client) -> bool:
    """No worker runs or holds a task (not even one the scheduler has let go of)."""
    return all(s["tasks"] == 0 for s in client.run(worker_state).values())


def finished_count(client: Client) -> int:
    return int(client.scheduler_info()["counts"].get("finished", 0))


# ====================================================================== ExecutorTest
def test_submit(ex: ClientExecutor) -> None:
    future = ex.submit(pow, 2, 8)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 256


def test_submit_keyword(ex: ClientExecutor) -> None:
    assert ex.submit(mul, 2, y=8).result(timeout=30) == 16
    # Keywords named like the parameters of submit() itself, or of Client.submit, reach fn.
    future = ex.submit(capture, 1, self=2, fn=3, func=4)
    assert future.result(timeout=30) == ((1,), {"self": 2, "fn": 3, "func": 4})
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ex.submit(arg=1)  # type: ignore[call-arg]


def test_submit_task_options(ex: ClientExecutor, client: Client, workers: list[str]) -> None:
    """As in dask's executor, Client.submit's options given to submit() set up the task
    (and are not passed to fn)."""
    pids = client.run(os.getpid)
    assert ex.submit(pid, workers=workers[1]).result(timeout=30) == pids[workers[1]]
    assert ex.submit(pid, workers=workers[0], priority=5).result(timeout=30) == pids[workers[0]]


def test_executor_options_and_pool_keywords(client: Client, workers: list[str]) -> None:
    pids = client.run(os.getpid)
    with client.get_executor(workers=[workers[1]], retries=1, priority=1, pure=False) as e:
        assert {e.submit(pid, i).result(timeout=30) for i in range(4)} == {pids[workers[1]]}
    for keyword in ("max_workers", "thread_name_prefix", "initializer", "mp_context"):
        with pytest.raises(TypeError, match=rf"takes no {keyword}.*cluster"):
            client.get_executor(**{keyword: 4})
    with pytest.raises(TypeError, match=r"unexpected keyword.*nope"):
        client.get_executor(nope=1)


def test_an_asynchronous_client_is_refused(cluster: LocalCluster) -> None:
    async def main() -> None:
        async with Client(cluster, asynchronous=True, set_as_default=False) as c:
            with pytest.raises(RuntimeError, match="needs a synchronous Client"):
                c.get_executor()

    asyncio.run(main())


def test_map(ex: ClientExecutor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10))) == expected
    assert list(ex.map(pow, range(10), range(10), chunksize=3)) == expected
    # Iterables of different lengths: as zip, the shortest decides.
    assert list(ex.map(mul, [1, 2, 3], [4, 5])) == [4, 10]
    assert list(ex.map(mul, [], [])) == []


def test_map_chunksize_sends_chunks(ex: ClientExecutor, client: Client) -> None:
    before = finished_count(client)
    assert list(ex.map(mul, range(10), itertools.repeat(3), chunksize=4)) == [
        3 * i for i in range(10)
    ]
    assert finished_count(client) - before == 3  # 4 + 4 + 2 calls
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(mul, [1], [2], chunksize=0)


def test_map_exception(ex: ClientExecutor) -> None:
    results = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1)
    assert next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_exception_in_a_chunk(ex: ClientExecutor) -> None:
    # As ProcessPoolExecutor: a chunk that raises raises when the chunk is reached.
    results = ex.map(divmod, [1] * 6, [1, 1, 0, 1, 1, 1], chunksize=3)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(ex: ClientExecutor, client: Client, gates: Gates, tmp_path: Path) -> None:
    opened, shut = gates(), gates()
    opened.open()
    values = ["a", "b", "c"]
    gate_paths = [str(opened.path), str(opened.path), str(shut.path)]
    results = []
    with pytest.raises(cf.TimeoutError):
        for value in ex.map(
            started_and_gated, values, gate_paths, itertools.repeat(str(tmp_path)), timeout=3
        ):
            results.append(value)
    assert results == ["a", "b"]
    # The call that timed out was cancelled on the cluster (even if it runs there).
    wait_until(lambda: cluster_idle(client), timeout=10, what="the timed-out call dropped")


def test_map_timeout_cancels_the_calls_not_finished(
    serial: ClientExecutor, client: Client, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    results = serial.map(
        started_and_gated,
        range(5),
        itertools.repeat(str(gate.path)),
        itertools.repeat(str(tmp_path)),
        timeout=0.5,
    )
    with pytest.raises(cf.TimeoutError):
        next(results)
    wait_until(lambda: cluster_idle(client), timeout=10, what="every call dropped")
    gate.open()
    wait_until(lambda: workers_idle(client), timeout=30, what="the worker thread free")
    assert started(tmp_path) == ["started-0"]  # the others never ran


def test_map_closed_early_cancels_the_rest(
    serial: ClientExecutor, client: Client, gates: Gates, tmp_path: Path
) -> None:
    opened, shut = gates(), gates()
    opened.open()
    gate_paths = [str(opened.path)] + [str(shut.path)] * 5
    results = serial.map(started_and_gated, range(6), gate_paths, itertools.repeat(str(tmp_path)))
    assert next(results) == 0
    results.close()  # type: ignore[attr-defined]  # a generator, as CPython's
    wait_until(lambda: cluster_idle(client), timeout=10, what="the rest dropped")
    shut.open()
    wait_until(lambda: workers_idle(client), timeout=30, what="the worker thread free")
    assert set(started(tmp_path)) <= {"started-0", "started-1"}


def test_map_that_cannot_send_a_call_cancels_those_sent(
    serial: ClientExecutor, client: Client, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    values = ["a", "b", threading.Lock()]  # the last cannot be pickled
    with pytest.raises(TypeError, match="lock"):
        serial.map(
            started_and_gated,
            values,
            itertools.repeat(str(gate.path)),
            itertools.repeat(str(tmp_path)),
        )
    wait_until(lambda: cluster_idle(client), timeout=10, what="the calls sent dropped")


def test_map_reads_its_inputs_eagerly_or_with_buffersize_lazily(ex: ClientExecutor) -> None:
    pulled: list[int] = []

    def numbers(n: int) -> Iterator[int]:
        for i in range(n):
            pulled.append(i)
            yield i

    # Without buffersize every call is sent at once (CPython 3.11 to 3.13's map).
    results = ex.map(mul, numbers(10), itertools.repeat(2))
    assert pulled == list(range(10))
    assert list(results) == [2 * i for i in range(10)]

    # With buffersize (3.14's), at most that many calls are out; each result taken
    # sends the next call first.
    pulled.clear()
    results = ex.map(mul, numbers(10), itertools.repeat(2), buffersize=2)
    assert pulled == [0, 1]
    assert next(results) == 0
    assert pulled == [0, 1, 2]
    assert list(results) == [2 * i for i in range(1, 10)]
    assert pulled == list(range(10))

    # An endless input is fine then, when only a few results are taken.
    first = list(
        itertools.islice(ex.map(mul, itertools.count(), itertools.repeat(3), buffersize=3), 5)
    )
    assert first == [0, 3, 6, 9, 12]

    with pytest.raises(ValueError, match="buffersize"):
        ex.map(mul, [1], [2], buffersize=0)
    with pytest.raises(TypeError, match="buffersize"):
        ex.map(mul, [1], [2], buffersize="2")  # type: ignore[arg-type]


def test_shutdown_race_issue12456(ex: ClientExecutor) -> None:
    ex.map(str, [2] * 3)
    ex.shutdown()  # returns, with the map's calls settled or cancelled
    with pytest.raises(RuntimeError):
        ex.submit(str, 1)


def test_free_reference(ex: ClientExecutor) -> None:
    # The result iterator keeps no reference to results it yielded (the future delivering
    # one may hold it a moment longer, in the thread that set it: hence the deadline).
    for obj in ex.map(make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj

        def collected(ref: weakref.ref[Any] = ref) -> bool:
            gc.collect()
            return ref() is None

        wait_until(collected, timeout=10, what="the result collected")


# ========================================================================= WaitTests
def test_wait_20369(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    future = gated_call(ex, "x", gate, tmp_path)
    gate.open()
    done, not_done = cf.wait([future, future], timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == {future}
    assert not_done == set()


def test_wait_first_completed(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    cancelled = cancelled_future()
    future1 = ex.submit(mul, 21, 2)
    future2 = gated_call(ex, "slow", gate, tmp_path)
    done, not_done = cf.wait(
        [cancelled, future1, future2], timeout=30, return_when=cf.FIRST_COMPLETED
    )
    assert done == {future1}
    assert not_done == {cancelled, future2}


def test_wait_first_completed_some_already_completed(
    ex: ClientExecutor, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    notified, successful = cancelled_and_notified_future(), successful_future()
    future1 = gated_call(ex, "slow", gate, tmp_path)
    finished, pending = cf.wait(
        [notified, successful, future1], timeout=30, return_when=cf.FIRST_COMPLETED
    )
    assert finished == {notified, successful}
    assert pending == {future1}


def test_wait_first_exception(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    future1 = ex.submit(mul, 2, 21)
    assert future1.result(timeout=30) == 42  # done before future2 fails
    future3 = gated_call(ex, "slow", gate, tmp_path)
    future2 = ex.submit(fail, "the first exception")
    finished, pending = cf.wait(
        [future1, future2, future3], timeout=30, return_when=cf.FIRST_EXCEPTION
    )
    assert finished == {future1, future2}
    assert pending == {future3}
    assert isinstance(future2.exception(), MyError)


def test_wait_first_exception_some_already_complete(
    ex: ClientExecutor, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    successful, cancelled = successful_future(), cancelled_future()
    notified = cancelled_and_notified_future()
    future1 = ex.submit(divmod, 21, 0)
    future2 = gated_call(ex, "slow", gate, tmp_path)
    finished, pending = cf.wait(
        [successful, cancelled, notified, future1, future2],
        timeout=30,
        return_when=cf.FIRST_EXCEPTION,
    )
    assert finished == {successful, notified, future1}
    assert pending == {cancelled, future2}


def test_wait_first_exception_one_already_failed(
    ex: ClientExecutor, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    failed = exception_future()
    future1 = gated_call(ex, "slow", gate, tmp_path)
    finished, pending = cf.wait([failed, future1], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert finished == {failed}
    assert pending == {future1}


def test_wait_all_completed(ex: ClientExecutor) -> None:
    successful, notified, failed = (
        successful_future(),
        cancelled_and_notified_future(),
        exception_future(),
    )
    future1 = ex.submit(divmod, 2, 0)
    future2 = ex.submit(mul, 2, 21)
    finished, pending = cf.wait(
        [successful, notified, failed, future1, future2],
        timeout=30,
        return_when=cf.ALL_COMPLETED,
    )
    assert finished == {successful, notified, failed, future1, future2}
    assert pending == set()


def test_wait_timeout(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    notified, failed, successful = (
        cancelled_and_notified_future(),
        exception_future(),
        successful_future(),
    )
    future = gated_call(ex, "slow", gate, tmp_path)
    finished, pending = cf.wait(
        [notified, failed, successful, future], timeout=0.05, return_when=cf.ALL_COMPLETED
    )
    assert finished == {notified, failed, successful}
    assert pending == {future}


def test_wait_pending_calls_race(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    fs = {gated_call(ex, i, gate, tmp_path) for i in range(50)}
    gate.open()
    done, not_done = cf.wait(fs, timeout=60, return_when=cf.ALL_COMPLETED)
    assert done == fs and not not_done


# =================================================================== AsCompletedTests
def test_as_completed_no_timeout(ex: ClientExecutor) -> None:
    others = {cancelled_and_notified_future(), exception_future(), successful_future()}
    future1 = ex.submit(mul, 2, 21)
    future2 = ex.submit(mul, 7, 6)
    completed = set(cf.as_completed([*others, future1, future2], timeout=30))
    assert completed == others | {future1, future2}


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_future_times_out(
    ex: ClientExecutor, gates: Gates, tmp_path: Path, timeout: float
) -> None:
    gate = gates()
    already_completed = {
        cancelled_and_notified_future(),
        exception_future(),
        successful_future(),
    }
    future = gated_call(ex, "slow", gate, tmp_path)
    completed = set()
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed(already_completed | {future}, timeout):
            completed.add(f)
    assert completed == already_completed


def test_as_completed_duplicate_futures(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    future1 = gated_call(ex, "x", gate, tmp_path)
    gate.open()
    completed = list(cf.as_completed(itertools.repeat(future1, 3), timeout=30))
    assert completed == [future1]


def test_as_completed_timeout_message(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    futures = [
        cancelled_and_notified_future(),
        gated_call(ex, "slow", gate, tmp_path),
        running_future(),
        successful_future(),
    ]
    with pytest.raises(cf.TimeoutError) as info:
        list(cf.as_completed(futures, timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"


# ====================================================================== ShutdownTests
def test_run_after_shutdown(ex: ClientExecutor) -> None:
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(pow, [2], [5])


def test_hang_issue12364(ex: ClientExecutor) -> None:
    fs = [ex.submit(mul, i, 2) for i in range(50)]
    ex.shutdown()
    assert [f.result(timeout=0) for f in fs] == [2 * i for i in range(50)]


def test_shutdown_waits_for_running_futures(
    ex: ClientExecutor, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    future = gated_call(ex, "running", gate, tmp_path)
    wait_started(tmp_path, "running")
    shutdown = threading.Thread(target=ex.shutdown, kwargs={"wait": True})
    shutdown.start()
    shutdown.join(timeout=0.5)
    assert shutdown.is_alive() and not future.done()  # it waits for the running call
    gate.open()
    shutdown.join(timeout=30)
    assert not shutdown.is_alive()
    assert future.done() and future.result(timeout=0) == "running"


def test_shutdown_no_wait(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    future = gated_call(ex, "later", gate, tmp_path)
    ex.shutdown(wait=False)  # returns at once, the gate still shut
    assert not future.done()
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1, 2)
    gate.open()
    assert future.result(timeout=30) == "later"  # pending work still completes


def test_context_manager_shutdown(client: Client) -> None:
    with client.get_executor() as e:
        assert list(e.map(abs, range(-5, 5))) == [abs(i) for i in range(-5, 5)]
    with pytest.raises(RuntimeError):
        e.submit(abs, -1)


def test_shutdown_cancel_futures(
    serial: ClientExecutor, client: Client, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    finished = [serial.submit(mul, i, 2) for i in range(3)]
    cf.wait(finished, timeout=30)
    running = gated_call(serial, "running", gate, tmp_path)
    queued = [gated_call(serial, i, gate, tmp_path) for i in range(10)]
    wait_started(tmp_path, "running")

    serial.shutdown(wait=True, cancel_futures=True)

    # Finished futures keep their results (CPython: "the other futures were able to finish").
    for i, f in enumerate(finished):
        assert f.done() and not f.cancelled() and f.exception() is None
        assert f.result(timeout=0) == 2 * i
    # Every future not finished is cancelled, as the standard pools cancel their pending
    # ones; the running call too, as its start cannot be told from here.
    for f in [running, *queued]:
        assert f.cancelled() and f.done() and not f.running()
        with pytest.raises(cf.CancelledError):
            f.result(timeout=0)
    # ...and wait() counts them done (notified), which the standard pools leave undone.
    _, not_done = cf.wait([running, *queued], timeout=0)
    assert not not_done
    with pytest.raises(RuntimeError):
        serial.submit(mul, 1, 2)
    wait_until(lambda: cluster_idle(client), timeout=10, what="the cancelled calls dropped")
    gate.open()
    wait_until(lambda: workers_idle(client), timeout=30, what="the worker thread free")
    assert started(tmp_path) == ["started-running"]  # no queued call ever ran


def test_shutdown_cancel_futures_no_wait(
    serial: ClientExecutor, client: Client, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    fs = [gated_call(serial, i, gate, tmp_path) for i in range(5)]
    serial.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in fs)
    done, _ = cf.wait(fs, timeout=30)  # notified once the cluster confirmed
    assert done == set(fs)
    wait_until(lambda: cluster_idle(client), timeout=10, what="the cancelled calls dropped")


# ==================================================================== futures' states
def test_states_of_a_future(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    future = gated_call(ex, "x", gate, tmp_path)
    wait_started(tmp_path, "x")
    # Running on a worker, but the client cannot tell: it is pending until its result is in.
    assert not future.done() and not future.running() and not future.cancelled()
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.05)
    gate.open()
    assert future.result(timeout=30) == "x"
    assert future.done() and not future.running() and not future.cancelled()
    assert future.exception(timeout=0) is None
    assert not future.cancel()  # finished: cannot be cancelled


def test_cancel_a_pending_future(
    serial: ClientExecutor, client: Client, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    blocker = gated_call(serial, "blocker", gate, tmp_path)
    waiting = gated_call(serial, "waiting", gate, tmp_path)
    wait_started(tmp_path, "blocker")
    assert not waiting.done() and not waiting.running()
    assert waiting.cancel()
    assert waiting.cancelled() and waiting.done()
    assert waiting.cancel()  # cancelling again: still True, as for any cancelled future
    with pytest.raises(cf.CancelledError):
        waiting.result(timeout=0)
    with pytest.raises(cf.CancelledError):
        waiting.exception(timeout=0)
    done, _ = cf.wait([waiting], timeout=30)
    assert done == {waiting}
    gate.open()
    assert blocker.result(timeout=30) == "blocker"
    assert not blocker.cancelled()
    wait_until(lambda: workers_idle(client), timeout=30, what="the worker thread free")
    assert started(tmp_path) == ["started-blocker"]  # the cancelled call never ran


def test_done_callbacks(ex: ClientExecutor, gates: Gates, tmp_path: Path) -> None:
    gate = gates()
    called: list[cf.Future[Any]] = []
    arrived = threading.Event()

    def callback(f: cf.Future[Any]) -> None:
        called.append(f)
        arrived.set()

    future = gated_call(ex, "x", gate, tmp_path)
    future.add_done_callback(callback)
    wait_started(tmp_path, "x")
    assert called == []
    gate.open()
    assert arrived.wait(30)
    assert called == [future] and future.result(timeout=0) == "x"

    # Added to a done future: called at once, in this thread.
    later: list[cf.Future[Any]] = []
    future.add_done_callback(later.append)
    assert later == [future]

    # An erring future calls its callbacks too.
    erring = ex.submit(fail, "in a callback test")
    got: list[cf.Future[Any]] = []
    erring.add_done_callback(got.append)
    cf.wait([erring], timeout=30)
    wait_until(lambda: got == [erring], timeout=10, what="the callback of an erring future")
    assert isinstance(erring.exception(timeout=0), MyError)


def test_done_callback_of_a_cancelled_future(
    serial: ClientExecutor, gates: Gates, tmp_path: Path
) -> None:
    gate = gates()
    gated_call(serial, "blocker", gate, tmp_path)
    waiting = gated_call(serial, "waiting", gate, tmp_path)
    got: list[cf.Future[Any]] = []
    waiting.add_done_callback(got.append)
    assert waiting.cancel()
    assert got == [waiting]  # called by cancel(), in this thread
