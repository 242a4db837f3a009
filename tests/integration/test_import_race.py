"""Unpickling while another thread imports the package the pickle names.

A fresh worker's event loop unpickles what a client scatters to it and what it fetches
from peers while its task threads run user code, which may be importing that very
package (numpy) for the first time. Python takes a submodule's import lock before its
parent's, so an unpickler importing ``numpy._core.numeric`` and a thread initialising
``numpy`` crossed their locks: ``_DeadlockError`` in one of them, and numpy's C
extension, half-loaded, could never be imported again in that worker. ``import_held``
makes the two meet every time: a thread's import of numpy stops at one of its submodules
until the unpickling thread waits for one of its import locks.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import numpy as np
import numpy.linalg as la
import pytest

from regrow import Client
from regrow.testing import MakeCluster, wait_until
from regrow.worker.execution import broken_imports
from regrow.worker.shell import Worker

from .import_race import array_sum, cannot_import_again, import_held, numpy_works

_CHILD = """
import json, os, sys, threading, time
from integration.import_race import import_held
from regrow.protocol.serialize import loads

payload, started, at = sys.argv[1:4]
data = open(payload, "rb").read()
out = {}

def hold():
    try:
        out["met"] = import_held("numpy", at, started)
    except BaseException as exc:
        out["importer"] = f"{type(exc).__name__}: {exc}"

holder = threading.Thread(target=hold)
holder.start()
while not os.path.exists(started) and holder.is_alive():
    time.sleep(0.001)
try:
    loads([data])
except BaseException as exc:
    out["loads"] = f"{type(exc).__name__}: {exc}"
holder.join()
try:
    import numpy
    out["sum"] = float(numpy.arange(10.0).sum())
except BaseException as exc:
    out["after"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("payload", "at"),
    [
        # find_class("numpy._core.numeric", ...): it crosses numpy._core's import
        pytest.param(lambda: pickle.dumps(np.arange(5.0), protocol=5), "numpy._core", id="array"),
        # subimport("numpy.linalg") of a function pickled by value, holding that module:
        # it crosses numpy's import of numpy.lib, whose modules import numpy.linalg
        pytest.param(
            lambda: cloudpickle.dumps(lambda: la.norm, protocol=5), "numpy.lib", id="module"
        ),
    ],
)
def test_loads_waits_for_another_threads_import(
    payload: Callable[[], bytes], at: str, tmp_path: Path
) -> None:
    stream = tmp_path / "payload.pkl"
    stream.write_bytes(payload())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(stream), str(tmp_path / "started"), at],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout.strip().splitlines()[-1])
    # The unpickling thread waited for the importer (the race did happen), and neither
    # failed: numpy works in that process afterwards.
    assert out == {"met": True, "sum": 45.0}


def test_scatter_while_a_fresh_worker_imports_numpy(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """put-data: the worker's loop unpickles scattered arrays while its task imports numpy."""
    _, client = make_cluster(n_workers=1)
    pids = client.run(os.getpid)
    started = tmp_path / "holding"
    held = client.submit(import_held, "numpy", "numpy._core", str(started), pure=False)
    wait_until(started.exists, timeout=30, what="the task to be importing numpy")
    arrays = [np.arange(1000.0) * k for k in range(3)]
    futures = client.scatter(arrays, timeout=30)
    assert held.result(timeout=30) is True  # the loop came to wait for the task's import
    sums = client.gather([client.submit(array_sum, f) for f in futures], timeout=30)
    assert sums == [float(a.sum()) for a in arrays]
    pid, total = client.submit(numpy_works, pure=False).result(timeout=30)
    assert total == 45.0 and [pid] == list(pids.values())  # the same worker


def test_fetch_while_a_fresh_worker_imports_numpy(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """get-data: the worker's loop unpickles an array fetched from a peer while its task
    imports numpy."""
    _, client = make_cluster(n_workers=2, threads_per_worker=2)
    pids = client.run(os.getpid)
    holder, fetcher = sorted(pids)
    array = np.arange(1000.0)
    [on_holder] = client.scatter([array], workers=[holder], timeout=30)
    started = tmp_path / "holding"
    held = client.submit(
        import_held, "numpy", "numpy._core", str(started), pure=False, workers=[fetcher]
    )
    wait_until(started.exists, timeout=30, what="the task to be importing numpy")
    fetched = client.submit(array_sum, on_holder, workers=[fetcher])
    assert held.result(timeout=30) is True  # the loop came to wait for the task's import
    assert fetched.result(timeout=30) == float(array.sum())
    assert client.who_has([on_holder])[on_holder.key]  # still held
    pid, total = client.submit(numpy_works, pure=False, workers=[fetcher]).result(timeout=30)
    assert total == 45.0 and pid == pids[fetcher]  # the same worker


# ------------------------------------------- a worker whose imports broke all the same
_AGAIN = "cannot load module more than once per process"


def test_what_shows_that_imports_broke() -> None:
    again = ImportError(_AGAIN)
    said = f"a package can no longer be imported here (ImportError: {_AGAIN})"
    assert broken_imports(again) == said
    wrapped = ImportError(f"IMPORTANT: PLEASE READ THIS...\n\nOriginal error was: {_AGAIN}")
    wrapped.__cause__ = again  # numpy's own, raised from the one it met
    assert broken_imports(wrapped) == said
    assert broken_imports(RuntimeError("in a task")) is None
    try:
        try:
            raise again
        except ImportError:
            raise RuntimeError("in a task") from None  # context kept, cause suppressed
    except RuntimeError as exc:
        assert broken_imports(exc) == said
    deadlock_error = importlib._bootstrap._DeadlockError  # type: ignore[attr-defined]
    deadlock = deadlock_error("deadlock detected by _ModuleLock('numpy._core.numeric')")
    assert broken_imports(deadlock) == f"two threads' imports deadlocked ({deadlock})"
    # A circular import of the user's own may fail every time: no reason to leave.
    partial = "cannot import name 'f' from partially initialized module 'm'"
    assert broken_imports(ImportError(partial)) is None
    assert broken_imports(ModuleNotFoundError("No module named 'm'")) is None


def _pids(client: Client) -> list[int]:
    try:
        return list(client.run(os.getpid).values())
    except Exception:
        return []  # the worker is between lives


def test_a_worker_whose_imports_broke_is_replaced(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    [before] = _pids(client)
    with pytest.raises(ImportError, match=_AGAIN):
        client.submit(cannot_import_again, pure=False).result(timeout=30)
    wait_until(lambda: _pids(client) not in ([], [before]), timeout=30, what="a fresh worker")
    assert client.submit(numpy_works, pure=False).result(timeout=30)[1] == 45.0


def test_a_worker_with_no_nanny_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker("tcp://127.0.0.1:1")
    with caplog.at_level(logging.ERROR, logger="regrow.worker"):
        worker.check_imports(ImportError(_AGAIN), "task 'a' failed")
        worker.check_imports(ImportError(_AGAIN), "task 'b' failed")
        worker.check_imports(ValueError("no"), "task 'c' failed")
    assert [r.getMessage() for r in caplog.records] == [
        f"task 'a' failed: a package can no longer be imported here (ImportError: {_AGAIN}); "
        "this worker has no nanny to replace it"
    ]
    assert not worker.tasks_bg
