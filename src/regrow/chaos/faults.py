"""The chaos soak's faults: their schedule, injecting each, and waiting for recovery.

Owns: the fault schedule (one fault at a time, each after a random pause, every kind
once per shuffled deck, until the time is up and each kind was injected at least once),
injecting each kind (SIGKILL a worker, a nanny or the scheduler; SIGSTOP a worker or a
nanny for 1-8 s; cut the link of the worker in the network namespace, then restore it
or replace that worker), waiting until the cluster has recovered from it and recording
how long that took, and the history of faults (to tell whether a graph's scattered data
could have been lost).

Must not: signal a process the soak did not start: every victim is a pid that
``regrow.chaos.cluster`` vouches for (a worker the scheduler lists that is a child of
one of our nannies, a nanny, the scheduler or the netns worker we started); nor leave a
process frozen (``resume_all`` runs before the cluster is closed); nor draw from any
RNG but the soak's fault RNG, so that the faults are the same for a given seed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from regrow.chaos.cluster import Abort, SoakCluster
from regrow.errors import explain, reason

if TYPE_CHECKING:
    import psutil

    from regrow.chaos.report import Report
    from regrow.chaos.settings import SoakConfig


class NoVictim(Exception):
    """No process of the kind a fault wants is there right now: the fault is skipped."""


class Faults:
    def __init__(
        self,
        config: SoakConfig,
        cluster: SoakCluster,
        report: Report,
        out: Callable[[str], None],
        rng: random.Random,
        t0: float,
        interrupted: threading.Event,
    ) -> None:
        self.cfg = config
        self.cluster = cluster
        self.report = report
        self.out = out
        self.rng = rng
        self.t0 = t0
        self.interrupted = interrupted
        self.frozen: dict[int, psutil.Process] = {}
        self.nanny_replacements = 0
        # Faults as they happened, (kind, start, end) in time.monotonic(), and the one
        # under way: to judge whether a graph's scattered data could have been lost.
        self.fault_times: list[tuple[str, float, float]] = []
        self.faults_in_progress: dict[str, float] = {}

    # ------------------------------------------------------------- schedule
    def run(self, end: float, kinds: list[str]) -> None:
        """Inject faults of ``kinds``, one at a time, until ``end`` (monotonic) and at
        least once each kind."""
        deck: list[str] = []
        done_kinds: set[str] = set()

        def over() -> bool:
            # Until the time is up, and at least once each fault kind.
            return time.monotonic() >= end and done_kinds >= set(kinds)

        while not over():
            self.pause(self.rng.uniform(0.3, 2.5))
            if over():
                break
            client = self.cluster.client
            if client is None or client.status not in ("running", "reconnecting"):
                status = client.status if client is not None else "none"
                raise Abort(f"the client is {status}: it lost its scheduler")
            if not deck:
                deck = list(kinds)
                self.rng.shuffle(deck)
            kind = deck.pop()
            self.inject(kind)
            done_kinds.add(kind)

    def pause(self, seconds: float) -> None:
        """A deliberate pause of the fault schedule (random, seeded): not a wait for
        some condition, so a plain timed wait is right here."""
        self.interrupted.wait(seconds)

    def worker_losses(self, started: float) -> list[str]:
        """Faults that took a worker away (killed, frozen, cut off) during the life of a
        graph ``started`` then (monotonic), or shortly before it (the scheduler may not
        have noticed yet)."""
        since = started - self.cfg.heartbeat_timeout - 2.0
        now = time.monotonic()
        losing = ("kill-worker", "kill-nanny", "stop-worker", "cut-network")
        ongoing = list(self.faults_in_progress.items())
        faults = [*self.fault_times, *((k, t, now) for k, t in ongoing)]
        return [
            f"{kind} at {start - self.t0:.1f} s"
            for kind, start, end in faults
            if kind in losing and end >= since and start <= now
        ]

    # ---------------------------------------------------- one fault, recovery
    def inject(self, kind: str) -> None:
        """Inject a fault of ``kind``, then wait for the cluster to recover from it."""
        handler: Callable[[], tuple[float, set[int], str]] = {
            "kill-worker": self._kill_worker,
            "kill-nanny": self._kill_nanny,
            "stop-worker": lambda: self._stop("worker"),
            "stop-nanny": lambda: self._stop("nanny"),
            "kill-scheduler": self._kill_scheduler,
            "cut-network": self._cut_network,
        }[kind]
        started = time.monotonic()
        at = started - self.t0
        self.faults_in_progress[kind] = started
        try:
            ended, gone, what = handler()
        except NoVictim as exc:
            self.out(f"fault {kind} skipped: {reason(exc)}")
            return
        except TimeoutError as exc:
            self._recovery_failed(kind, at, f"the fault itself did not complete: {reason(exc)}")
            return
        self.faults_in_progress.pop(kind, None)
        self.fault_times.append((kind, started, ended))
        self.report.faults[kind] += 1
        entry: dict[str, Any] = {"kind": kind, "at": round(at, 1), "what": what}
        try:
            sized = self.cluster.wait_full(ended + self.cfg.recovery_timeout, gone)
        except Exception as exc:
            entry["recovered"] = None
            self.report.fault_log.append(entry)
            self._recovery_failed(kind, at, f"{what}: {explain(exc)}")
            return
        took = time.monotonic() - ended
        entry["recovered"] = round(took, 3)
        entry["full_size_after"] = round(sized - ended, 3)
        if sized - ended > 2.0:
            # Slow: say which workers the scheduler listed meanwhile (name:pid).
            entry["membership"] = list(self.cluster.membership)
        self.report.fault_log.append(entry)
        self.report.recovery.setdefault(kind, []).append(took)
        self.out(
            f"fault {kind}: {what}; recovered in {took:.2f} s "
            f"(full size after {sized - ended:.2f} s)"
        )
        if "membership" in entry:
            self.out(f"  workers listed meanwhile (s: name:pid): {entry['membership']}")

    def _recovery_failed(self, kind: str, at: float, detail: str) -> None:
        try:
            workers = {a: (w["name"], w["pid"]) for a, w in self.cluster.workers().items()}
        except Exception as exc:
            workers = {"?": (f"scheduler_info failed: {reason(exc)}", 0)}
        entry = {"kind": kind, "at": round(at, 1), "detail": detail, "workers": workers}
        self.report.recovery_failures.append(entry)
        self.out(f"NOT RECOVERED after {kind}: {detail}; workers now {workers}")
        local = self.cluster.local
        assert local is not None
        if local.scheduler_proc is None or local.scheduler_proc.poll() is not None:
            raise Abort(f"the scheduler is gone after {kind}")

    # ------------------------------------------------------------ victims
    def _pick(self, choices: list[Any]) -> Any:
        if not choices:
            raise NoVictim("no process to pick a victim from")
        return choices[self.rng.randrange(len(choices))]

    def _pick_worker(self) -> tuple[int, str]:
        """A worker under one of our nannies: (pid, name)."""
        w = self._pick(self.cluster.ours())
        return int(w["pid"]), str(w["name"])

    def _pick_nanny(self) -> tuple[int, Any]:
        """One of our nannies: (pid, WorkerProcess)."""
        nannies = self.cluster.nannies()
        pid = self._pick(sorted(nannies))
        return pid, nannies[pid]

    # ------------------------------------------------------------- faults
    def _kill_worker(self) -> tuple[float, set[int], str]:
        pid, name = self._pick_worker()
        os.kill(pid, signal.SIGKILL)
        return time.monotonic(), {pid}, f"SIGKILL worker {name} (pid {pid})"

    def _kill_nanny(self) -> tuple[float, set[int], str]:
        import psutil

        pid, wp = self._pick_nanny()
        # Its children (worker, standby) must go too: they are ours to watch.
        children: set[int] = set()
        with contextlib.suppress(psutil.Error):
            for c in psutil.Process(pid).children(recursive=True):
                self.cluster.note_process(c.pid, "worker of a killed nanny")
                children.add(c.pid)
        os.kill(pid, signal.SIGKILL)
        self.nanny_replacements += 1
        return (
            time.monotonic(),
            {pid, *children},
            f"SIGKILL nanny {wp.name} (pid {pid}, with its worker {sorted(children)})",
        )

    def _stop(self, role: str) -> tuple[float, set[int], str]:
        import psutil

        if role == "worker":
            pid, name = self._pick_worker()
            name = f"worker {name}"
        else:
            pid, wp = self._pick_nanny()
            name = f"nanny {wp.name}"
        seconds = self.rng.uniform(1.0, 8.0)
        proc = psutil.Process(pid)
        self.frozen[pid] = proc
        os.kill(pid, signal.SIGSTOP)
        try:
            self.pause(seconds)
        finally:
            self._resume(pid)
        return time.monotonic(), set(), f"SIGSTOP {name} (pid {pid}) for {seconds:.1f} s"

    def _resume(self, pid: int) -> None:
        import psutil

        proc = self.frozen.pop(pid, None)
        if proc is None:
            return
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.is_running():  # the same process: psutil compares start times
                os.kill(pid, signal.SIGCONT)

    def resume_all(self) -> None:
        """SIGCONT every process still frozen."""
        for pid in list(self.frozen):
            self._resume(pid)

    def _kill_scheduler(self) -> tuple[float, set[int], str]:
        local = self.cluster.local
        assert local is not None and local.scheduler_proc is not None
        old = local.scheduler_proc.pid
        self.cluster.note_process(old, "scheduler")
        t = time.monotonic()
        try:
            new = local.restart_scheduler_process(signal.SIGKILL)
        except (TimeoutError, RuntimeError) as exc:
            raise Abort(f"the scheduler (pid {old}) did not come back: {reason(exc)}") from exc
        self.cluster.note_process(new, "scheduler")
        return t, set(), f"SIGKILL scheduler (pid {old}; back as pid {new})"

    def _cut_network(self) -> tuple[float, set[int], str]:
        from regrow.testing import stop, wait_until

        cluster = self.cluster
        assert cluster.link is not None and cluster.netns_proc is not None
        proc = cluster.netns_proc
        pid = proc.pid
        address = next(
            (a for a, w in cluster.workers().items() if w["pid"] == pid),
            None,
        )
        cluster.link.cut()
        cut_at = time.monotonic()
        try:
            if address is not None:
                try:
                    wait_until(
                        lambda: address not in cluster.workers(),
                        timeout=self.cfg.heartbeat_timeout + 15,
                        interval=0.05,
                        what=f"the cut-off worker {address} is removed",
                    )
                    noticed = f"removed after {time.monotonic() - cut_at:.1f} s"
                except TimeoutError:
                    self._recovery_failed(
                        "cut-network",
                        cut_at - self.t0,
                        f"the cut-off worker {address} was never removed "
                        f"(heartbeat timeout {self.cfg.heartbeat_timeout:g} s)",
                    )
                    noticed = "never removed"
            else:
                noticed = "it was not registered when cut"
            self.pause(self.rng.uniform(0.0, 3.0))
            replace = self.rng.random() < 0.5
            if replace:
                proc.kill()  # a host that never comes back: a new one takes its place
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        finally:
            cluster.link_up()
        held = time.monotonic() - cut_at
        if replace:
            stop([proc], timeout=5)
            cluster.start_netns_worker()
            assert cluster.netns_proc is not None
            how = f"replaced by pid {cluster.netns_proc.pid}"
            gone = {pid}
        else:
            how = "link restored"
            gone = set()
        return (
            time.monotonic(),
            gone,
            f"cut the link of netns worker pid {pid} for {held:.1f} s ({noticed}); {how}",
        )
