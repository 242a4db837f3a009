"""Functions the integration tests run on workers (imported there by reference),
and gates: files a task waits for, so a test decides when it may go on."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from regrow.testing import wait_until

GATE_TIMEOUT = 60.0


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def add(x: int, y: int) -> int:
    return x + y


def total(*args: Any, **kwargs: Any) -> int:
    """Sum of every number in arbitrarily nested lists, tuples and dicts."""

    def walk(obj: Any) -> int:
        if isinstance(obj, list | tuple | set):
            return sum(walk(x) for x in obj)
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        return int(obj)

    return walk(args) + walk(kwargs)


def touch(path: str, value: Any = None) -> Any:
    Path(path).touch()
    return value


def gated(value: Any, gate: str, started: str = "") -> Any:
    """Return ``value`` once the file ``gate`` exists; touch ``started`` first."""
    if started:
        Path(started).touch()
    wait_until(lambda: os.path.exists(gate), timeout=GATE_TIMEOUT, what=f"gate {gate}")
    return value


class MyError(Exception):
    """A user exception that pickles fine."""


def fail(message: str, *deps: Any) -> None:
    raise MyError(message)


class UnpicklableError(Exception):
    """Pickling it fails: it carries a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def fail_unpicklable(message: str) -> None:
    raise UnpicklableError(message)


class NeedsTwoArgsError(Exception):
    """Pickles, but cannot unpickle: its __init__ wants two arguments, args holds one."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # Said outright (BaseException's own reduction says the same): with tblib's
        # pickling support installed, as importing dask does in a worker, the default
        # one would be replaced by one that rebuilds the exception without __init__.
        return (type(self), (str(self),))


def fail_unloadable(a: str, b: str) -> None:
    raise NeedsTwoArgsError(a, b)


def worker_state() -> dict[str, int]:
    """What the worker running this holds (for client.run)."""
    from regrow import get_worker

    w = get_worker()
    return {"data": len(w.data), "tasks": len(w.tasks), "pid": os.getpid()}


class Gate:
    """A file that ``gated`` tasks wait for; ``started`` is touched when one begins."""

    def __init__(self, directory: Path, n: int) -> None:
        self.path = directory / f"gate-{n}"
        self.started_path = directory / f"started-{n}"

    @property
    def args(self) -> tuple[str, str]:
        return str(self.path), str(self.started_path)

    def open(self) -> None:
        self.path.touch()

    def wait_started(self, timeout: float = 30.0) -> None:
        wait_until(self.started_path.exists, timeout=timeout, what="a gated task to start")

    @property
    def started(self) -> bool:
        return self.started_path.exists()


class OnlyHere:
    """Unpickles only in the process that made it."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (_only_in, (os.getpid(),))


def _only_in(pid: int) -> OnlyHere:
    if os.getpid() != pid:
        raise RuntimeError(f"this object cannot leave process {pid}")
    return OnlyHere()


def make_only_here() -> OnlyHere:
    return OnlyHere()


def is_locked(lock: Any) -> bool:
    return bool(lock.locked())


class Box:
    """An arbitrary object holding a value (a Future, when submitted)."""

    def __init__(self, value: Any) -> None:
        self.value = value


def unbox_inc(box: Box) -> int:
    return int(box.value) + 1
