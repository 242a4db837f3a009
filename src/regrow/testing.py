"""Public helpers for testing code that uses regrow (and regrow itself).

- ``wait_until(predicate, timeout)``: poll a condition with a deadline instead of sleeping.
- ``children_of(pid)``: the live processes a process started (to check nothing leaks).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> None:
    """Return once ``predicate()`` is truthy; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition {what or predicate!r} not met within {timeout} s")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.is_running()]
    except psutil.NoSuchProcess:
        return []
