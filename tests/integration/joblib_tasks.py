"""Functions the joblib tests run on workers (imported there by reference)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from joblib.parallel import get_active_backend

from regrow.testing import wait_until

from .tasks import GATE_TIMEOUT, MyError

# How many times this process pickled each CountedArray, by tag (in the client process:
# a worker only ever unpickles them).
PICKLED: dict[str, int] = {}


class CountedArray(np.ndarray):
    """A numpy array that counts, in the process pickling it, how often it is pickled."""

    tag = ""

    def __reduce_ex__(self, protocol: Any) -> Any:
        PICKLED[self.tag] = PICKLED.get(self.tag, 0) + 1
        return super().__reduce_ex__(protocol)

    def __array_finalize__(self, obj: Any) -> None:
        self.tag = getattr(obj, "tag", "")


def counted(tag: str, nbytes: int) -> CountedArray:
    arr = np.arange(nbytes // 8, dtype=np.float64).view(CountedArray)
    arr.tag = tag
    return arr


def pick(arr: np.ndarray, i: int) -> tuple[int, float, int]:
    """Its size, its i-th element, and this process's pid."""
    return int(arr.nbytes), float(arr[i]), os.getpid()


def square(x: int) -> int:
    return x * x


def where(x: int) -> tuple[int, int]:
    """``x`` and the process it ran in."""
    return x, os.getpid()


def raise_value_error(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def fail_when(signal: str, message: str) -> None:
    """Raise MyError once the file ``signal`` exists."""
    wait_until(lambda: os.path.exists(signal), timeout=GATE_TIMEOUT, what=f"signal {signal}")
    raise MyError(message)


def started_and_gated(value: Any, gate: str, started_dir: str) -> Any:
    """Record that this call started (a file per value), then wait for the gate."""
    Path(started_dir, f"started-{value}").touch()
    wait_until(lambda: os.path.exists(gate), timeout=GATE_TIMEOUT, what=f"gate {gate}")
    return value


def nested_parallel(i: int, n_inner: int) -> tuple[str, list[int], str, set[str]]:
    """Runs a Parallel call of its own: the backend it got, its results, the thread of
    this task and the threads that ran the inner calls."""
    backend, _ = get_active_backend()

    def one(j: int) -> tuple[int, str]:
        return i * 100 + j, threading.current_thread().name

    out = Parallel(n_jobs=2)(delayed(one)(j) for j in range(n_inner))
    here = threading.current_thread().name
    return type(backend).__name__, [v for v, _ in out], here, {t for _, t in out}


def doubly_nested(i: int) -> tuple[str, list[str]]:
    """Nested twice: the backend of this level, and those the next level's calls got."""
    level1 = type(get_active_backend()[0]).__name__
    return level1, Parallel(n_jobs=2)(delayed(_backend_name)(j) for j in range(2))


def _backend_name(j: int) -> str:
    return type(get_active_backend()[0]).__name__
