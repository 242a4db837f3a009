"""Functions the journal tests run on workers (imported there by reference).

Each one that takes a ``log`` path records every execution as one line appended
to that file (one ``write`` on an ``O_APPEND`` descriptor: lines from different
processes never interleave), so a test can count how often each task ran.
"""

from __future__ import annotations

import os
import time
from typing import Any


def record(log: str | None, tag: str) -> None:
    if log is None:
        return
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)


def runs(log: str) -> dict[str, int]:
    """``{tag: how many times it ran}`` from a log written by ``record``."""
    counts: dict[str, int] = {}
    if not os.path.exists(log):
        return counts
    with open(log) as f:
        for line in f:
            tag = line.strip()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def leaf(log: str | None, i: int, seconds: float = 0.002) -> int:
    record(log, f"leaf-{i}")
    time.sleep(seconds)
    return i * 3 + 1


def weighted(log: str | None, i: int, x: int, arr: Any) -> int:
    """A task on a scattered array: ``x`` plus the array's integer sum."""
    record(log, f"weighted-{i}")
    return x + int(arr.sum())


def add(log: str | None, tag: str, x: int, y: int) -> int:
    record(log, tag)
    return x + y


def slow_inc(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x + 1


def inc(x: int) -> int:
    return x + 1


def pid() -> int:
    return os.getpid()
