"""Ray behind the dask-style client API that the workloads are written against.

A thin adapter: it offers only what the workloads call, and each call is one
real Ray call:

* ``client.submit(fn, *args)`` -> ``ray.remote(fn).remote(*args)``; the
  ``ray.remote`` wrapper is made once per function and cached (Ray exports the
  function on its first call). Returns a ``RayFuture`` wrapping the ObjectRef.
* an argument that is a ``RayFuture`` is passed as its ObjectRef, so Ray waits
  for it and hands the worker its value (for a large object: a zero-copy view
  of the shared-memory object store). Only top-level positional arguments are
  unwrapped, which is all the workloads pass (``chain``: the previous future;
  ``tree``: two futures).
* ``client.map(fn, *iterables)`` -> one ``.remote(*args)`` call per element,
  in a list (Ray has no batch submission).
* ``client.gather(futures)`` -> ``ray.get([refs])``.
* ``future.result(timeout)`` -> ``ray.get(ref, timeout=timeout)``;
  ``future.done()`` -> ``ray.wait([ref], timeout=0)``;
  ``future.add_done_callback(fn)`` -> ``ref.future().add_done_callback(...)``
  (``fn`` gets the ``RayFuture``).
* ``wait(futures, timeout)`` -> ``ray.wait(refs, num_returns=len(refs),
  timeout=timeout)``; ``TimeoutError`` if some are not ready.
* ``client.worker_pids(n)``, Ray's counterpart of dask's
  ``client.run(os.getpid)``: ``n`` tasks submitted at once that each sleep
  0.1 s and return ``os.getpid()``. With one task per worker process at a time
  they overlap, so they name ``n`` different processes: the ones Ray runs tasks
  in. Repeated until they do.
* ``client.remote(fn, **options)``: the cached ``ray.remote(**options)(fn)``
  itself, for a workload adapted to Ray (``transfer`` uses ``num_returns=2``).

``pure=`` is accepted and ignored: Ray has no content-addressed keys, every
call is a new task (the workloads never rely on a key being reused). There is
no ``workers=`` (Ray places a task on a node, not in a given worker process),
no ``who_has``, ``run`` nor ``scheduler_info``: the workloads that need those
have a Ray branch (``common._ready``, ``transfer``, ``recovery``).
Ray's default task retries are left as they are (``max_retries`` = 3 for a
worker that died).

``local_ray()`` starts a local Ray instance (GCS, raylet and its worker
processes are children of this process) and shuts it down on exit, checking
that none of the processes it started survives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import ray

from benchmarks import tasks

# The shared-memory object store (in /dev/shm): small, as the largest object is 100 MB.
OBJECT_STORE_BYTES = 1_000_000_000
SHUTDOWN_TIMEOUT = 10.0


class RayFuture:
    """A dask-style future over a Ray ObjectRef."""

    __slots__ = ("ref",)

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def result(self, timeout: float | None = None) -> Any:
        return ray.get(self.ref, timeout=timeout)

    def done(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0, fetch_local=False)
        return bool(ready)

    def add_done_callback(self, fn: Callable[[RayFuture], Any]) -> None:
        self.ref.future().add_done_callback(lambda _: fn(self))


def _arg(value: Any) -> Any:
    return value.ref if isinstance(value, RayFuture) else value


class RayClient:
    """``submit`` / ``map`` / ``gather`` on the Ray instance this process is connected to."""

    def __init__(self) -> None:
        self._remote: dict[tuple[Callable[..., Any], tuple[tuple[str, Any], ...]], Any] = {}

    def remote(self, fn: Callable[..., Any], **options: Any) -> Any:
        """``ray.remote(**options)(fn)``, made once per (function, options)."""
        key = (fn, tuple(sorted(options.items())))
        remote = self._remote.get(key)
        if remote is None:
            remote = ray.remote(**options)(fn) if options else ray.remote(fn)
            self._remote[key] = remote
        return remote

    def submit(self, fn: Callable[..., Any], *args: Any, pure: bool = True) -> RayFuture:
        return RayFuture(self.remote(fn).remote(*map(_arg, args)))

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], pure: bool = True
    ) -> list[RayFuture]:
        remote = self.remote(fn)
        return [RayFuture(remote.remote(*map(_arg, args))) for args in zip(*iterables, strict=True)]

    def gather(self, futures: Sequence[RayFuture], timeout: float | None = None) -> list[Any]:
        return list(ray.get([f.ref for f in futures], timeout=timeout))

    def worker_pids(self, n: int, timeout: float = 60.0) -> dict[str, int]:
        """``{name: pid}`` of the ``n`` worker processes Ray runs tasks in, by pid order."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.gather([self.submit(tasks.pid_after, 0.1) for _ in range(n)], timeout)
            if len(set(pids)) == n:
                return {f"pid {p}": p for p in sorted(pids)}
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} tasks at once ran in the processes {pids} only")


def wait(futures: Sequence[RayFuture], timeout: float | None = None) -> None:
    """Until every future is done; ``TimeoutError`` after ``timeout`` seconds."""
    refs = [f.ref for f in futures]
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(refs)} futures not done in {timeout} s")


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[RayClient]:
    """A local Ray of ``num_cpus`` CPUs (as many single-task worker processes); shut down on exit.

    Its session files go to a temporary directory, removed on exit. After
    ``ray.shutdown()`` every process Ray started (the children this process
    gained in ``ray.init``, and their descendants, the raylet's worker
    processes) must be gone within SHUTDOWN_TIMEOUT; one that is not is
    reported and SIGKILLed by its pid.
    """
    import psutil

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage stats, no prompt about them
    before = _children()
    tmp = tempfile.mkdtemp(prefix="regrow-bench-ray-")
    started: set[int] | None = None
    try:
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            _temp_dir=tmp,
        )
        started = _children() - before  # GCS, raylet, dashboard agent, workers, ...
        yield RayClient()
    finally:
        if started is None:  # ray.init failed: whatever it had started
            started = _children() - before
        for pid in list(started):  # and the worker processes the raylet started since
            with contextlib.suppress(psutil.Error):
                started |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        ours = [p for p in map(_process, started) if p is not None]
        ray.shutdown()
        _, alive = psutil.wait_procs(ours, timeout=SHUTDOWN_TIMEOUT)
        for proc in alive:
            print(f"ray: pid {proc.pid} still running after shutdown: SIGKILL", flush=True)
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _process(pid: int) -> Any:
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
