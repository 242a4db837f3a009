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


def big_value(i: int, kind: str, nbytes: int) -> Any:
    """A value of about ``nbytes`` of the given kind, made from ``i``."""
    if kind == "numpy":
        import numpy as np

        return np.full(nbytes // 8, float(i))
    if kind == "bytes":
        return bytes([i % 256]) * nbytes
    if kind == "str":
        return chr(ord("a") + i % 26) * nbytes
    raise ValueError(kind)


def first_item(value: Any) -> Any:
    """The first element of a big_value (its identity, without sending it back whole)."""
    return value[0] if not hasattr(value, "dtype") else float(value[0])


class Balloon:
    """A result that takes ``nbytes`` more memory on its worker once its task has
    returned (a thread fills it after ``delay``): its worker dies of its memory limit
    while holding it, with no task running."""

    def __init__(self, nbytes: int, delay: float) -> None:
        import threading

        self.total = nbytes  # not "nbytes": that would be taken for its size
        self.filling: list[bytes] = []
        threading.Thread(target=self._fill, args=(delay,), daemon=True).start()

    def _fill(self, delay: float) -> None:
        time.sleep(delay)
        for _ in range(self.total // (8 << 20)):
            self.filling.append(b"\x5a" * (8 << 20))
            time.sleep(0.01)

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (0,))  # it never has to travel


def balloon(nbytes: int, delay: float) -> Balloon:
    return Balloon(nbytes, delay)


class Claims:
    """A small object that says it is huge (its workers' measure of a result's size)."""

    def __init__(self, nbytes: int) -> None:
        self.claimed = nbytes

    def __sizeof__(self) -> int:
        return self.claimed


def claims(nbytes: int) -> Claims:
    return Claims(nbytes)
