"""Two threads importing one package at once, made to meet every time.

``import_held`` imports a package in the calling thread and holds that import still at
one of its submodules (the package's import lock taken, the package half-initialised)
until another thread waits for an import lock the holder owns: then it lets the import
go on. Run as a task, the other thread is the worker's event loop unpickling data that
names the package; run in a child process, it is a thread calling ``loads``. Workers
import this module by reference: it must not import numpy itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HOLD_TIMEOUT = 10.0


class _Hold(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Stops ``thread``'s import of ``at`` until another thread waits for one of its
    import locks. It stops before ``at``'s code runs (the module in sys.modules, being
    initialised), not while finding it: finders run under Python's global import lock,
    which would stop every thread's imports."""

    def __init__(self, at: str, thread: int, started: str, timeout: float) -> None:
        self.at = at
        self.thread = thread
        self.started = started
        self.timeout = timeout
        self.loader: importlib.abc.Loader | None = None
        self.met = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.at or threading.get_ident() != self.thread or self.loader:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        self.loader, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        assert self.loader is not None
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        assert self.loader is not None and module.__spec__ is not None
        module.__loader__ = module.__spec__.loader = self.loader
        Path(self.started).touch()
        deadline = time.monotonic() + self.timeout
        while not self.met and time.monotonic() < deadline:
            self.met = _another_waits_for(self.thread)
            time.sleep(0.001)
        self.loader.exec_module(module)


def _another_waits_for(owner: int) -> bool:
    """Whether a thread other than ``owner`` waits for an import lock ``owner`` holds."""
    bootstrap = importlib._bootstrap  # type: ignore[attr-defined]
    blocking = bootstrap._blocking_on  # thread id -> its lock (3.11), or a list of them
    for tid, waited in list((blocking or {}).items()):
        locks = waited if isinstance(waited, list) else [waited]
        if tid != owner and any(getattr(lock, "owner", None) == owner for lock in locks):
            return True
    return False


def import_held(package: str, at: str, started: str, timeout: float = HOLD_TIMEOUT) -> bool:
    """Import ``package``, not yet imported in this process, holding its import at its
    submodule ``at`` (touching the file ``started`` then) until another thread waits for
    it, or ``timeout``. Whether another thread came to wait."""
    if package in sys.modules:
        raise RuntimeError(f"{package} is imported already: the race needs a fresh process")
    hold = _Hold(at, threading.get_ident(), started, timeout)
    sys.meta_path.insert(0, hold)
    try:
        importlib.import_module(package)
    finally:
        sys.meta_path.remove(hold)
    if hold.loader is None:
        raise RuntimeError(f"importing {package} never imported {at}")
    return hold.met


def array_sum(a: Any) -> float:
    return float(a.sum())


def numpy_works() -> tuple[int, float]:
    """This process's pid, and a sum numpy computes (fails if numpy's import broke)."""
    import numpy

    return os.getpid(), float(numpy.arange(10.0).sum())


def cannot_import_again() -> None:
    """Fails as a task does in a worker whose numpy import broke half-way."""
    raise ImportError("cannot load module more than once per process")
