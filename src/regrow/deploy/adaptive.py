"""Adaptive scaling: how many workers a cluster should have, and the loop that asks.

``AdaptivePolicy.recommend(load)`` is pure: a snapshot of the scheduler's load in, a
worker count (and which workers to retire) out; no clock, no IO. ``Adaptive`` is its
shell: a thread that every ``interval`` asks the scheduler (through the cluster's own
client) for ``scheduler_info()``, feeds the policy and calls ``cluster.scale``.

The rule, as dask.distributed's ``Adaptive`` in spirit (it uses task durations; we
count tasks, which needs no history):

- *up, at once*: the tasks that want a thread now (processing, queued, no-worker) need
  ``ceil(tasks / threads per worker)`` workers, clamped to ``[minimum, maximum]``;
- *down, after ``wait_count`` intervals in a row* that recommend fewer: the idle
  workers (running nothing) go first, those holding the fewest bytes first. They are
  retired gracefully (``Client.retire_workers``): their results are copied to other
  workers before they go, so nothing is recomputed.
- workers still starting (a batch job waiting in its queue) count as workers: no
  second job is submitted for the same demand;
- while any worker holds results, one worker stays (retiring the last holder of a
  result would lose it: the scheduler refuses, so asking every round is waste).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from regrow.deploy.cluster import Cluster

logger = logging.getLogger("regrow.deploy")

# The task states that want a thread now.
DEMAND_STATES = ("processing", "queued", "no-worker")


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    name: str
    nthreads: int
    processing: int
    memory: int
    nkeys: int = 0


@dataclass(frozen=True, slots=True)
class Load:
    """What the policy looks at: the registered workers, the units started that have not
    registered yet, and the tasks that want a thread."""

    workers: tuple[WorkerLoad, ...]
    starting: int
    demand: int
    threads_per_worker: int

    @classmethod
    def from_info(cls, info: Mapping[str, Any], names: list[str], threads: int) -> Load:
        """From ``scheduler_info()`` and the names of the units the cluster started."""
        mine = set(names)
        workers = tuple(
            WorkerLoad(
                name=str(w.get("name", a)),
                nthreads=int(w.get("nthreads", threads)),
                processing=int(w.get("processing", 0)),
                memory=int(w.get("memory", 0)),
                nkeys=int(w.get("nkeys", 0)),
            )
            for a, w in info.get("workers", {}).items()
            if str(w.get("name", a)) in mine and w.get("status", "running") == "running"
        )
        registered = {w.name for w in workers}
        tasks = info.get("tasks", {})
        demand = sum(int(tasks.get(s, 0)) for s in DEMAND_STATES)
        return cls(workers, len(mine - registered), demand, max(1, threads))


@dataclass(slots=True)
class AdaptivePolicy:
    """How many workers, between ``minimum`` and ``maximum``; fewer only after
    ``wait_count`` recommendations in a row."""

    minimum: int = 0
    maximum: float = math.inf
    wait_count: int = 3
    _down_votes: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.minimum, int) or self.minimum < 0:
            raise ValueError(f"adapt: minimum must be an integer >= 0, got {self.minimum!r}")
        if not isinstance(self.maximum, int | float) or self.maximum < self.minimum:
            raise ValueError(
                f"adapt: maximum must be a number >= minimum ({self.minimum}), got {self.maximum!r}"
            )
        if not isinstance(self.wait_count, int) or self.wait_count < 1:
            raise ValueError(f"adapt: wait_count must be an integer >= 1, got {self.wait_count!r}")

    def target(self, load: Load) -> int:
        threads = max(
            [w.nthreads for w in load.workers] or [load.threads_per_worker]
        )  # the size of one more worker
        busy = sum(1 for w in load.workers if w.processing)
        want = max(busy, math.ceil(load.demand / max(1, threads)))
        # Results held somewhere need a worker to hold them: the last one stays (the
        # scheduler would refuse to retire it anyway, and be asked again each round).
        if any(w.nkeys for w in load.workers):
            want = max(want, 1)
        return int(min(self.maximum, max(self.minimum, want)))

    def recommend(self, load: Load) -> tuple[int, list[str]]:
        """(worker count to scale to, names of the workers to retire first)."""
        current = len(load.workers) + load.starting
        target = self.target(load)
        if target >= current:
            self._down_votes = 0
            return target, []
        self._down_votes += 1
        if self._down_votes < self.wait_count:
            return current, []
        self._down_votes = 0
        idle = sorted((w for w in load.workers if not w.processing), key=lambda w: w.memory)
        # Starting units go first (nothing to move), then idle workers; busy ones stay.
        removable = load.starting + len(idle)
        target = max(target, current - removable)
        drop = current - target - load.starting
        return target, [w.name for w in idle[: max(0, drop)]]


class Adaptive:
    """The loop: every ``interval`` seconds, scale ``cluster`` to what the policy says.

    Runs in a daemon thread until ``stop()`` (``cluster.close()`` and a new ``adapt()``
    or ``scale()`` call it). A failed round (the scheduler restarting) is logged and
    the next round tries again."""

    def __init__(self, cluster: Cluster, policy: AdaptivePolicy, interval: float) -> None:
        if not isinstance(interval, int | float) or not 0 < interval <= 86400:
            raise ValueError(
                f"adapt: interval must be a positive number of seconds, got {interval!r}"
            )
        self.cluster = cluster
        self.policy = policy
        self.interval = float(interval)
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="regrow-adaptive", daemon=True)
        self._thread.start()

    @property
    def minimum(self) -> int:
        return self.policy.minimum

    @property
    def maximum(self) -> float:
        return self.policy.maximum

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.adapt_once()
                self.last_error = None
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.last_error = exc
                logger.warning("adapt: this round failed (%s); trying again", exc)

    def adapt_once(self) -> None:
        cluster = self.cluster
        info = cluster._client().scheduler_info()
        if self._stop.is_set():
            return
        load = Load.from_info(info, cluster._unit_names(), cluster._threads_per_worker())
        n, retire = self.policy.recommend(load)
        if n != len(load.workers) + load.starting:
            logger.info(
                "adapt: %d workers (%d starting), %d tasks waiting for a thread: scaling to %d",
                len(load.workers),
                load.starting,
                load.demand,
                n,
            )
            cluster._scale(n, prefer=retire, workers=info["workers"])

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def __repr__(self) -> str:
        return f"<Adaptive minimum={self.minimum} maximum={self.maximum} interval={self.interval}s>"
