"""Task functions run by the benchmarks.

They live in an importable module (not ``__main__``) so both regrow and dask
pickle them by reference: every worker imports this module once, and each task
carries only the name of its function.
"""

from __future__ import annotations

import os
from typing import Any


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def make_array(nbytes: int) -> Any:
    """A float64 array of ``nbytes`` bytes (all ones: every page is written)."""
    import numpy as np

    return np.ones(nbytes // 8, dtype=np.float64)


def consume(arr: Any) -> tuple[int, int]:
    """(size of the array in bytes, pid of the process that ran this task).

    Touches only the array's metadata, so its own cost is negligible: the time
    of this task is the cost of getting the array to it.
    """
    return int(arr.nbytes), os.getpid()


def pid() -> int:
    return os.getpid()


def slow_inc(x: int, seconds: float) -> int:
    """``x + 1`` after sleeping ``seconds`` (a task with a fixed amount of work)."""
    import time

    time.sleep(seconds)
    return x + 1
