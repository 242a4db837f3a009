"""joblib's "regrow" backend: Parallel calls (and scikit-learn) on the session cluster."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_config

from regrow import Client, Future, LocalCluster
from regrow.client import client as client_module
from regrow.client.joblib_backend import RegrowBackend, register
from regrow.testing import wait_until

from .joblib_tasks import (
    PICKLED,
    counted,
    doubly_nested,
    fail_when,
    nested_parallel,
    pick,
    raise_value_error,
    square,
    started_and_gated,
    where,
)
from .tasks import Gate, MyError, fail, worker_state


def cluster_idle(client: Client) -> bool:
    """The scheduler holds no task and no worker holds a key."""
    info = client.scheduler_info()
    return not info["tasks"] and all(w["nkeys"] == 0 for w in info["workers"].values())


def workers_idle(client: Client) -> bool:
    """No worker runs or holds a task (not even one the scheduler has let go of)."""
    return all(s["tasks"] == 0 for s in client.run(worker_state).values())


def worker_pids(client: Client) -> set[int]:
    return set(client.run(os.getpid).values())


def spy_on_cancel(client: Client, monkeypatch: pytest.MonkeyPatch) -> list[Future]:
    """Record every Future the client is asked to cancel (and cancel it)."""
    cancelled: list[Future] = []
    real = client.cancel

    def cancel(futures: Future | Iterable[Future], force: bool = False) -> None:
        fs = [futures] if isinstance(futures, Future) else list(futures)
        cancelled.extend(fs)
        real(fs, force=force)

    monkeypatch.setattr(client, "cancel", cancel)
    return cancelled


def started(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("started-*"))


# ------------------------------------------------------------------ registration
def test_registered_on_import_and_register_is_idempotent() -> None:
    from joblib.parallel import BACKENDS

    assert BACKENDS["regrow"] is RegrowBackend
    register()
    register()
    assert BACKENDS["regrow"] is RegrowBackend


# ----------------------------------------------------------------- running calls
def test_calls_run_on_the_cluster_in_order(client: Client) -> None:
    with parallel_config(backend="regrow"):
        out = Parallel(n_jobs=-1)(delayed(where)(i) for i in range(100))
        plus_one = Parallel(n_jobs=-1)(delayed(lambda x: x + 1)(i) for i in range(10))
    # The backend named to Parallel itself, rather than by parallel_config.
    squares = Parallel(n_jobs=-1, backend="regrow")(delayed(where)(i * i) for i in range(5))
    assert [x for x, _ in out] == list(range(100))
    assert plus_one == list(range(1, 11))
    assert [x for x, _ in squares] == [0, 1, 4, 9, 16]
    pids = {pid for _, pid in out + squares}
    assert os.getpid() not in pids
    assert pids <= worker_pids(client)


def test_n_jobs_minus_one_is_the_clusters_threads(client: Client) -> None:
    total = sum(client.nthreads().values())
    assert total == 2
    with parallel_config(backend="regrow"):
        assert joblib.effective_n_jobs(-1) == total
        assert joblib.effective_n_jobs(None) == total  # the backend's default: all
        assert joblib.effective_n_jobs(-2) == total - 1
        assert joblib.effective_n_jobs(5) == 5
        with pytest.raises(ValueError, match="n_jobs == 0"):
            joblib.effective_n_jobs(0)
        # Parallel() without n_jobs takes the backend's default (-1), so the cluster.
        out = Parallel()(delayed(where)(i) for i in range(4))
    assert os.getpid() not in {pid for _, pid in out}


def test_generators_of_results(client: Client) -> None:
    with parallel_config(backend="regrow", n_jobs=-1):
        ordered = Parallel(return_as="generator")(delayed(square)(i) for i in range(30))
        assert list(ordered) == [i * i for i in range(30)]
        unordered = Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(30))
        assert sorted(unordered) == [i * i for i in range(30)]


def test_exceptions_keep_their_type(client: Client) -> None:
    with parallel_config(backend="regrow"):
        with pytest.raises(ValueError, match="bad item 7") as info:
            Parallel(n_jobs=-1)(delayed(raise_value_error)(i, 7) for i in range(20))
        assert any("remote traceback" in note for note in info.value.__notes__)
        with pytest.raises(MyError, match="user error"):
            Parallel(n_jobs=-1)(delayed(fail)("user error") for _ in range(3))


def test_a_call_that_cannot_be_sent_is_raised(client: Client) -> None:
    lock = threading.Lock()
    with (
        parallel_config(backend="regrow"),
        pytest.raises((TypeError, pickle.PicklingError), match="lock"),
    ):
        Parallel(n_jobs=-1)(delayed(square)(lock) for _ in range(3))


def test_managed_parallel_is_reusable_after_an_error(client: Client) -> None:
    with parallel_config(backend="regrow"), Parallel(n_jobs=-1) as parallel:
        with pytest.raises(ValueError, match="bad item 3"):
            parallel(delayed(raise_value_error)(i, 3) for i in range(10))
        assert parallel(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


# ----------------------------------------------------------------------- clients
def test_no_client_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_default", [])
    with (
        parallel_config(backend="regrow"),
        pytest.raises(RuntimeError, match="needs a running regrow Client"),
    ):
        Parallel(n_jobs=-1)(delayed(square)(i) for i in range(3))


def test_a_client_given_explicitly(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "_default", [])  # no default client to fall back on
    with Client(cluster, set_as_default=False) as other:
        with parallel_config(backend="regrow", client=other):
            out = Parallel(n_jobs=-1)(delayed(where)(i) for i in range(10))
        assert [x for x, _ in out] == list(range(10))
        assert {pid for _, pid in out} <= worker_pids(other)
        wait_until(lambda: cluster_idle(other), timeout=10, what="the call's keys released")
    with pytest.raises(TypeError, match="regrow Client"):
        RegrowBackend(client="tcp://127.0.0.1:1")  # type: ignore[arg-type]


def test_an_asynchronous_client_is_refused(cluster: LocalCluster) -> None:
    async def main() -> None:
        async with Client(cluster, asynchronous=True, set_as_default=False) as c:
            with (
                parallel_config(backend="regrow", client=c),
                pytest.raises(RuntimeError, match="needs a synchronous Client"),
            ):
                Parallel(n_jobs=-1)(delayed(square)(i) for i in range(3))

    asyncio.run(main())


# ------------------------------------------------------------ large arguments
def test_a_large_argument_is_scattered_once(client: Client) -> None:
    arr = counted("five-mb", 5_000_000)
    finished = client.scheduler_info()["counts"].get("finished", 0)
    with parallel_config(backend="regrow"):
        out = Parallel(n_jobs=-1)(delayed(pick)(arr, i) for i in range(50))
    # Pickled once (by scatter) although 50 calls took it: the tasks got its Future.
    assert PICKLED["five-mb"] == 1
    assert [(n, v) for n, v, _ in out] == [(arr.nbytes, float(i)) for i in range(50)]
    assert os.getpid() not in {pid for _, _, pid in out}
    assert client.scheduler_info()["counts"]["finished"] > finished
    # Released when the call ended, not when the client closes.
    wait_until(lambda: cluster_idle(client), timeout=10, what="the scattered array released")


def test_the_scatter_threshold(client: Client) -> None:
    arr = counted("small", 200_000)  # below the default threshold of 1 MB
    with parallel_config(backend="regrow"):
        Parallel(n_jobs=-1, batch_size=1)(delayed(pick)(arr, i) for i in range(10))
    assert PICKLED["small"] == 10  # once per task: the count is real
    arr = counted("lowered", 200_000)
    with parallel_config(backend="regrow", scatter_threshold=100_000):
        out = Parallel(n_jobs=-1, batch_size=1)(delayed(pick)(arr, i) for i in range(10))
    assert PICKLED["lowered"] == 1
    assert [v for _, v, _ in out] == [float(i) for i in range(10)]
    with pytest.raises(ValueError, match="scatter_threshold"):
        RegrowBackend(scatter_threshold=-1)


# ------------------------------------------------------------------ cancelling
def test_an_error_cancels_the_pending_batches(
    client: Client,
    gates: Callable[[], Gate],
    workers: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = gates()
    cancelled = spy_on_cancel(client, monkeypatch)
    signal = tmp_path / "all-sent"
    calls = [delayed(fail_when)(str(signal), "first")] + [
        delayed(started_and_gated)(i, str(gate.path), str(tmp_path)) for i in range(20)
    ]

    def signal_once_all_sent() -> None:
        # The failing call waits for this, so that all 21 batches are on the cluster.
        wait_until(lambda: sum(client.scheduler_info()["tasks"].values()) >= 21, timeout=30)
        signal.touch()

    helper = threading.Thread(target=signal_once_all_sent, daemon=True)
    helper.start()
    # All on one worker thread, in order: the failing call runs first, the rest wait.
    with (
        parallel_config(backend="regrow", workers=[workers[0]]),
        pytest.raises(MyError, match="first"),
    ):
        Parallel(n_jobs=-1, pre_dispatch="all", batch_size=1)(calls)
    helper.join(timeout=30)
    assert len(cancelled) == 20
    assert all(f.key.startswith("joblib-started_and_gated-") for f in cancelled)
    # Gone from the cluster while the gate is still shut: dropped, not just waiting.
    wait_until(lambda: cluster_idle(client), timeout=10, what="the cancelled batches dropped")
    gate.open()
    wait_until(lambda: workers_idle(client), timeout=30, what="the worker threads free")
    # The first gated call may have taken the thread the failing one left before the
    # cancel came (it ran to the gate; its result was dropped); no other ever started.
    assert set(started(tmp_path)) <= {"started-0"}


def test_a_timeout_cancels_running_and_queued_batches(
    client: Client,
    gates: Callable[[], Gate],
    workers: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = gates()
    cancelled = spy_on_cancel(client, monkeypatch)
    with (
        parallel_config(backend="regrow", workers=[workers[0]]),
        pytest.raises(multiprocessing.TimeoutError),  # what joblib raises
    ):
        Parallel(n_jobs=-1, pre_dispatch="all", batch_size=1, timeout=3.0)(
            delayed(started_and_gated)(i, str(gate.path), str(tmp_path)) for i in range(10)
        )
    assert len(cancelled) == 10
    # The running call too is dropped by the scheduler, although its thread still waits.
    wait_until(lambda: cluster_idle(client), timeout=10, what="the cancelled batches dropped")
    assert started(tmp_path) == ["started-0"]
    gate.open()  # the running call returns (its result is dropped); no other starts
    wait_until(lambda: workers_idle(client), timeout=30, what="the worker threads free")
    assert started(tmp_path) == ["started-0"]


# ------------------------------------------------------------------ nesting
def test_nested_parallel_calls_use_threads_of_the_worker(client: Client) -> None:
    # More outer tasks than cluster threads, each waiting for its own inner calls: on the
    # cluster they would deadlock; on threads of their worker they cannot.
    with parallel_config(backend="regrow"):
        out = Parallel(n_jobs=-1)(delayed(nested_parallel)(i, 5) for i in range(6))
        deeper = Parallel(n_jobs=-1)(delayed(doubly_nested)(i) for i in range(2))
    for i, (backend, values, here, threads) in enumerate(out):
        assert backend == "ThreadingBackend"
        assert values == [i * 100 + j for j in range(5)]
        assert here not in threads  # the inner calls ran on a pool's threads
    assert deeper == [("ThreadingBackend", ["SequentialBackend", "SequentialBackend"])] * 2


# ---------------------------------------------------------------- scikit-learn
def test_grid_search_matches_the_serial_run(client: Client) -> None:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    x, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": ["scale", 0.1, 1.0]}
    serial = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(x, y)
    finished = client.scheduler_info()["counts"].get("finished", 0)
    with parallel_config(backend="regrow"):
        remote = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(x, y)
    assert client.scheduler_info()["counts"]["finished"] > finished  # it ran there
    assert remote.best_params_ == serial.best_params_
    assert remote.best_score_ == serial.best_score_
    results: dict[str, Any] = remote.cv_results_
    assert len(results["params"]) == 12
    assert results["params"] == serial.cv_results_["params"]
    for name, values in serial.cv_results_.items():
        if "test_score" in name:
            np.testing.assert_array_equal(results[name], values, err_msg=name)
