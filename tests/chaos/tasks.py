"""Functions the chaos tests run on workers (imported there by reference, so they must
live in a module the workers can import, not in a test module)."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from regrow.testing import wait_until


def inc_sleep(x: int, seconds: float = 0.001) -> int:
    time.sleep(seconds)
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def total(*xs: int) -> int:
    return sum(xs)


def slow_inc(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x + 1


def pid() -> int:
    return os.getpid()


def record_run(log: str, x: int, seconds: float) -> int:
    """``x + 1`` after ``seconds``; appends 'start PID' to ``log`` when it starts and
    'end PID' when it ends, so a run killed midway shows as a start without an end."""
    with open(log, "a") as f:
        f.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"end {os.getpid()}\n")
    return x + 1


def suicide(delay: float = 0.0) -> None:
    """Poison: SIGKILL the worker running it (after ``delay`` seconds)."""
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def spin(started: str, seconds: float) -> int:
    """A pure-Python busy loop (interruptible between bytecodes)."""
    Path(started).touch()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


def block(started: str, seconds: float) -> str:
    """Blocks in C (time.sleep): an async exception cannot reach it until it returns."""
    Path(started).touch()
    time.sleep(seconds)
    return "woke"


def gated(value: Any, gate: str, started: str = "") -> Any:
    """Return ``value`` once the file ``gate`` exists; touch ``started`` first."""
    if started:
        Path(started).touch()
    wait_until(lambda: os.path.exists(gate), timeout=60, what=f"gate {gate}")
    return value


def first_len(x: Any, *_: Any) -> int:
    return len(x)


def make_array(i: int, n: int) -> Any:
    import numpy as np

    return np.full(n, float(i))


def checksum(a: Any) -> float:
    return float(a.sum())


def hog(total_bytes: int, chunk: int, pause: float) -> int:
    """Grow one bytearray to ``total_bytes`` in ``chunk``-sized steps (pages really touched)."""
    buf = bytearray()
    block_ = b"\xa5" * chunk
    while len(buf) < total_bytes:
        buf += block_
        time.sleep(pause)
    return len(buf)


def pid_after(seconds: float) -> int:
    """This worker's pid, after ``seconds`` (a task that outlasts a grace period)."""
    time.sleep(seconds)
    return os.getpid()


def worker_state() -> dict[str, int]:
    """What the worker running this holds (for client.run)."""
    from regrow import get_worker

    w = get_worker()
    return {"data": len(w.data), "tasks": len(w.tasks), "pid": os.getpid()}


def noted_block(block: Any, directory: str, seconds: float = 0.005) -> Any:
    """A dask block passed through unchanged, after a short sleep; leaves a file per call
    in ``directory`` so a test can tell how far a computation has got."""
    time.sleep(seconds)
    fd, _ = tempfile.mkstemp(dir=directory)
    os.close(fd)
    return block
