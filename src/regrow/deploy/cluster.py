"""Cluster: what every deployment offers (LocalCluster, SSHCluster, SLURMCluster).

Owns the part that does not depend on how processes are started: ``scale(n)`` (start
units, or retire workers gracefully), ``adapt(...)``, ``wait_for_workers``, the
cluster's own client (for retiring and for adapt's questions), ``Client(cluster)``'s
attributes (``scheduler_address``, ``token``, ``security``, ``settings``),
``get_logs()``, ``dashboard_link``, the context manager.

A *unit* is one worker process (under its nanny) that the deployment started: a local
process, an SSH session, a batch job. Its name is the worker's ``--name``, which is how
a unit is matched with the worker that registered. Subclasses implement four hooks:

- ``_unit_names()``: the units started and not stopped (registered or still starting);
- ``_start_units(n)``: start ``n`` more (without waiting for them to register);
- ``_stop_unit(name)``: stop one, by whatever owns it (its PID, its SSH channel,
  ``scancel``), whether it is still starting or already retired;
- ``_threads_per_worker()``: the threads one unit's worker has;

and ``close()`` (calling ``_close_common`` first) and ``get_logs()``.

Must not: start a process manager of its own across hosts (deployments use SSH, Slurm,
Kubernetes); stop anything it did not start.
"""

from __future__ import annotations

import math
import os
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from regrow.config import Settings
from regrow.deploy.adaptive import Adaptive, AdaptivePolicy
from regrow.security import Security

if TYPE_CHECKING:
    from regrow.client.client import Client


class Cluster(ABC):
    """The interface shared by every deployment."""

    scheduler_address: str
    token: str | None
    security: Security
    settings: Settings
    timeout: float

    def _init_cluster(self) -> None:
        self._scale_lock = threading.RLock()
        self._adaptive: Adaptive | None = None
        self._own_client: Client | None = None
        self._client_lock = threading.Lock()
        self._dashboard_link: str | None = None

    # ------------------------------------------------------------ hooks
    @abstractmethod
    def _unit_names(self) -> list[str]: ...

    @abstractmethod
    def _start_units(self, n: int) -> None: ...

    @abstractmethod
    def _stop_unit(self, name: str) -> None: ...

    @abstractmethod
    def _threads_per_worker(self) -> int: ...

    @abstractmethod
    def close(self, timeout: float = 10.0) -> None: ...

    @abstractmethod
    def get_logs(self) -> dict[str, str]:
        """``{"scheduler": text, "<worker name>": text, ...}``: what each process logged."""

    # ---------------------------------------------------------- the API
    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard (None: it serves none), as ``Client.dashboard_link``;
        asked of the scheduler once, by the cluster's own client."""
        if self._dashboard_link is None:
            self._dashboard_link = self._client().dashboard_link or ""
        return self._dashboard_link or None

    def _repr_html_(self) -> str:
        """Jupyter's view: the kind of cluster, its scheduler, its workers (as units
        started) and the dashboard's link."""
        from html import escape

        try:
            link = self.dashboard_link
        except Exception:  # closed, or not reachable: shown without it
            link = None
        dashboard = (
            f'<a href="{escape(link)}" target="_blank">{escape(link)}</a>' if link else "none"
        )
        return (
            f"<div><strong>{escape(type(self).__name__)}</strong><br>"
            f"scheduler: {escape(str(self.scheduler_address))}<br>"
            f"workers: {len(self._unit_names())}<br>"
            f"dashboard: {dashboard}</div>"
        )

    def scale(self, n: int | None = None, *, jobs: int | None = None) -> None:
        """Have ``n`` workers (``jobs=``: the same, counted in batch jobs of one worker).

        More: units are started (without waiting: ``wait_for_workers`` does). Fewer:
        units still starting are stopped first, then idle workers, those holding the
        fewest bytes first, are retired gracefully: what only they hold is copied to
        other workers before they go, so nothing is recomputed. Calling ``scale`` stops
        ``adapt``, as in dask.distributed."""
        if n is None:
            n = jobs
        elif jobs is not None:
            raise TypeError("scale() takes n or jobs=, not both")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() takes a number of workers >= 0, got {n!r}")
        self._stop_adaptive()
        self._scale(n)

    def _scale(
        self,
        n: int,
        prefer: list[str] | None = None,
        workers: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """To ``n`` units; retiring, ``prefer`` these names first. ``workers``: the
        scheduler's worker info if the caller just asked for it (adapt did)."""
        with self._scale_lock:
            names = self._unit_names()
            if n > len(names):
                self._start_units(n - len(names))
            elif n < len(names):
                self._retire(len(names) - n, names, prefer or [], workers)

    def _retire(
        self,
        k: int,
        names: list[str],
        prefer: list[str],
        workers: dict[str, dict[str, Any]] | None,
    ) -> None:
        info = workers if workers is not None else self._client().scheduler_info()["workers"]
        by_name = {str(w.get("name", a)): (a, w) for a, w in info.items()}
        # Not registered yet: nothing to move, stop them first (newest first).
        starting = [name for name in reversed(names) if name not in by_name]
        for name in starting[:k]:
            self._stop_unit(name)
        k -= min(k, len(starting))
        if k == 0:
            return
        registered = [name for name in names if name in by_name]
        order = sorted(
            registered,
            key=lambda nm: (
                nm not in prefer,
                by_name[nm][1].get("processing", 0),
                by_name[nm][1].get("memory", 0),
            ),
        )
        chosen = order[:k]
        retired = self._client().retire_workers([by_name[nm][0] for nm in chosen])
        gone = {str(w.get("name", a)) for a, w in retired.items()}
        for name in chosen:
            if name in gone:
                self._stop_unit(name)

    def adapt(
        self,
        minimum: int = 0,
        maximum: float = math.inf,
        wait_count: int = 3,
        interval: float | str = 1.0,
        *,
        minimum_jobs: int | None = None,
        maximum_jobs: float | None = None,
    ) -> Adaptive:
        """Scale with the load, between ``minimum`` and ``maximum`` workers (``*_jobs``:
        the same in jobs, as dask-jobqueue). Up at once when tasks wait for threads; down
        after ``wait_count`` rounds of ``interval`` seconds that found idle workers,
        which are retired gracefully. A new ``adapt`` or ``scale`` replaces it."""
        if minimum_jobs is not None:
            minimum = minimum_jobs
        if maximum_jobs is not None:
            maximum = maximum_jobs
        policy = AdaptivePolicy(minimum=minimum, maximum=maximum, wait_count=wait_count)
        seconds = _seconds(interval)
        self._stop_adaptive()
        self._adaptive = Adaptive(self, policy, seconds)
        return self._adaptive

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Block until ``n_workers`` workers have registered with the scheduler."""
        self._client().wait_for_workers(n_workers, timeout=timeout)

    # --------------------------------------------------------- helpers
    def _client(self) -> Client:
        """The cluster's own client (not the default one): for retiring and adapt."""
        with self._client_lock:
            if self._own_client is None or self._own_client.status != "running":
                from regrow.client.client import Client

                self._own_client = Client(self, set_as_default=False, timeout=self.timeout)
            return self._own_client

    def _stop_adaptive(self) -> None:
        adaptive, self._adaptive = self._adaptive, None
        if adaptive is not None:
            adaptive.stop()

    def _close_common(self) -> None:
        """First thing ``close()`` does: stop adapting, close the cluster's own client."""
        self._stop_adaptive()
        client, self._own_client = self._own_client, None
        if client is not None:
            client.close(timeout=5)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _seconds(value: float | str) -> float:
    """``1``, ``0.5``, ``"2s"``, ``"500ms"``, ``"1m"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lower()
    for suffix, mult in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * mult
            except ValueError:
                break
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"cannot read {value!r} as a duration (try 1, '2s' or '500ms')") from None


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def wait_ready(proc: subprocess.Popen[bytes], ready_file: str, timeout: float, what: str) -> str:
    """The address a ``regrow`` process wrote to its ready file; an error at once if it
    exits first, TimeoutError after ``timeout`` seconds."""

    def ready() -> bool:
        code = proc.poll()
        if code is not None and not os.path.exists(ready_file):
            raise RuntimeError(f"{what} (pid {proc.pid}) exited with code {code} while starting")
        return os.path.exists(ready_file)

    try:
        wait_for(ready, timeout, f"{what} (pid {proc.pid}) ready")
    except TimeoutError:
        raise TimeoutError(f"{what} (pid {proc.pid}) not ready within {timeout:g} s") from None
    with open(ready_file) as f:
        return f.read().strip()
