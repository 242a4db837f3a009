"""Exceptions raised by user code arrive as themselves (or as RemoteError)."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from regrow import Client, RemoteError, wait
from regrow.testing import wait_until

from .tasks import (
    MyError,
    NeedsTwoArgsError,
    OnlyHere,
    UnpicklableError,
    fail,
    fail_unloadable,
    fail_unpicklable,
    inc,
    is_locked,
    make_only_here,
)


def workers_alive(client: Client) -> dict[str, int]:
    return {a: w["pid"] for a, w in client.scheduler_info()["workers"].items()}


def test_user_exception_keeps_type_message_and_traceback(client: Client) -> None:
    before = workers_alive(client)
    f = client.submit(fail, "boom 42")
    with pytest.raises(MyError, match="boom 42") as info:
        f.result(timeout=30)
    assert type(info.value) is MyError
    assert f.status == "error"
    exc = f.exception(timeout=30)
    assert type(exc) is MyError and str(exc) == "boom 42"
    tb = f.traceback(timeout=30)
    assert tb is not None
    assert "in fail" in tb and "raise MyError(message)" in tb and "tasks.py" in tb
    assert "remote traceback" in "\n".join(getattr(exc, "__notes__", []))
    # The worker went on; it is the same process.
    assert client.submit(inc, 1).result(timeout=30) == 2
    assert workers_alive(client) == before


def test_dependents_raise_the_same_exception(client: Client) -> None:
    bad = client.submit(fail, "root cause")
    child = client.submit(inc, bad)
    grandchild = client.submit(lambda x, y: x + y, child, client.submit(inc, 1))
    for f in (bad, child, grandchild):
        with pytest.raises(MyError, match="root cause"):
            f.result(timeout=30)
    assert child.status == grandchild.status == "error"
    # Submitted after the failure: errs at once, with the same exception.
    late = client.submit(inc, bad)
    with pytest.raises(MyError, match="root cause"):
        late.result(timeout=30)


def test_builtin_exceptions(client: Client) -> None:
    with pytest.raises(ZeroDivisionError):
        client.submit(lambda: 1 / 0).result(timeout=30)
    with pytest.raises(KeyError, match="missing"):
        client.submit(lambda d: d["missing"], {}).result(timeout=30)
    with pytest.raises(TypeError):
        client.submit(inc, "text").result(timeout=30)


def test_unpicklable_exception_arrives_as_remote_error(client: Client) -> None:
    before = workers_alive(client)
    f = client.submit(fail_unpicklable, "cannot travel")
    with pytest.raises(RemoteError) as info:
        f.result(timeout=30)
    assert info.value.type_name == "UnpicklableError"
    assert info.value.message == "cannot travel"
    assert "UnpicklableError" in str(info.value) and "cannot travel" in str(info.value)
    assert not isinstance(info.value, UnpicklableError)
    assert "fail_unpicklable" in (f.traceback() or "")
    assert client.submit(inc, 1).result(timeout=30) == 2
    assert workers_alive(client) == before


def test_exception_that_cannot_be_unpickled_arrives_as_remote_error(client: Client) -> None:
    f = client.submit(fail_unloadable, "a", "b")
    with pytest.raises(RemoteError) as info:
        f.result(timeout=30)
    assert info.value.type_name == "NeedsTwoArgsError"
    assert info.value.message == "a/b"
    assert not isinstance(info.value, NeedsTwoArgsError)
    assert client.submit(inc, 1).result(timeout=30) == 2


def test_system_exit_in_a_task_does_not_stop_the_worker(client: Client) -> None:
    before = workers_alive(client)
    f = client.submit(sys.exit, 3)
    with pytest.raises(SystemExit):
        f.result(timeout=30)
    assert client.gather(client.map(inc, range(10)), timeout=30) == list(range(1, 11))
    assert workers_alive(client) == before


def test_many_failures_keep_the_workers_running(client: Client) -> None:
    before = workers_alive(client)
    fs = client.map(fail, [f"error {i}" for i in range(200)])
    for i, f in enumerate(fs):
        with pytest.raises(MyError, match=f"error {i}$"):
            f.result(timeout=30)
    assert client.gather(client.map(inc, range(100)), timeout=30) == list(range(1, 101))
    assert workers_alive(client) == before


def test_retries_do_not_hide_errors(client: Client) -> None:
    with pytest.raises(MyError, match="retried"):
        client.submit(fail, "retried", retries=2).result(timeout=30)


def test_erred_future_is_released_after_it_raised(client: Client) -> None:
    f = client.submit(fail, "raised, then dropped")
    for _ in range(3):
        with pytest.raises(MyError):
            f.result(timeout=30)
    assert client.scheduler_info()["tasks"] == {"erred": 1}
    del f
    gc.collect()
    # The raised exceptions (and their tracebacks) must not keep the future alive.
    wait_until(lambda: not client.scheduler_info()["tasks"], timeout=10, what="key released")


def test_result_that_cannot_be_pickled(client: Client, workers: list[str]) -> None:
    before = client.scheduler_info()["counts"]
    lock = client.submit(threading.Lock, workers=workers[0])
    wait([lock], timeout=30)
    assert lock.status == "finished"  # it is in memory; only moving it fails
    with pytest.raises(TypeError, match="pickle"):
        lock.result(timeout=30)
    # Where it is, it can be used.
    assert client.submit(is_locked, lock, workers=workers[0]).result(timeout=30) is False
    # A task elsewhere errs with the reason, and nothing is computed again and again.
    elsewhere = client.submit(is_locked, lock, workers=workers[1], pure=False)
    with pytest.raises(TypeError, match="pickle"):
        elsewhere.result(timeout=30)
    after = client.scheduler_info()["counts"]
    assert after.get("recomputed", 0) == before.get("recomputed", 0)
    assert after["finished"] - before["finished"] == 2
    assert client.submit(inc, 1).result(timeout=30) == 2


def test_result_that_cannot_be_unpickled_elsewhere(client: Client, workers: list[str]) -> None:
    before = client.scheduler_info()["counts"]
    obj = client.submit(make_only_here, workers=workers[0])
    wait([obj], timeout=30)
    with pytest.raises(RuntimeError, match="cannot leave process"):
        obj.result(timeout=30)
    same = client.submit(type, obj, workers=workers[0])
    assert same.result(timeout=30) is OnlyHere
    elsewhere = client.submit(type, obj, workers=workers[1], pure=False)
    with pytest.raises(RuntimeError, match="cannot leave process"):
        elsewhere.result(timeout=30)
    after = client.scheduler_info()["counts"]
    assert after.get("recomputed", 0) == before.get("recomputed", 0)
