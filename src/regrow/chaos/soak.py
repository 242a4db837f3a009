"""The chaos soak's run: set up, keep graphs in flight and judge each, tear down.

Owns: ``run_soak`` and ``Soak``: starting the cluster (``regrow.chaos.cluster``), the
graph kinds and fault kinds this host can do, keeping ``in_flight`` graphs running
(``regrow.chaos.workloads``) while the fault schedule runs (``regrow.chaos.faults``),
judging the outcome of each graph, draining, and tearing everything down, leaks
checked, whatever happened (an error, Ctrl-C or SIGTERM).

What counts:
- *wrong*: a value that differs from the oracle's, or a result lost: FutureLostError,
  CancelledError or SchedulerLostError once the graph was submitted (the soak cancels
  nothing that has not hung, and its scheduler always comes back), LostDataError of
  anything but scattered data, or of scattered data that lost fewer workers to faults
  than it had replicas;
- *hang*: a graph not done by its deadline (``--graph-timeout``), or a fault the
  cluster did not recover from within a minute;
- *erred*: what regrow may raise under these faults: KilledWorker (a task whose
  workers died ``allowed_failures`` times), LostDataError of scattered data that lost
  every worker holding a copy;
- *unexpected*: any other exception; reported with where it was raised, for a person
  to judge, but it does not fail the soak.
The exit code is 0 when nothing was wrong and nothing hung, else 1 (2 if the soak could
not run to its end, 130 when interrupted).

Must not: hide a wrong result or a hang: finding those is its purpose; nor block for
good on the cluster (every wait has a deadline), nor record an outcome once the books
are closed.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from regrow.chaos.cluster import Abort, SoakCluster, call
from regrow.chaos.faults import Faults
from regrow.chaos.report import Report, format_report
from regrow.chaos.settings import DASK_KINDS, SoakConfig
from regrow.chaos.workloads import GraphRun, Workloads, difference, numpy_or_none
from regrow.errors import explain, reason


def _raised_at(exc: BaseException) -> str:
    """The innermost frame of regrow's own code the exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}regrow{os.sep}" in f.filename] or frames
    if not ours:
        return ""
    f = ours[-1]
    path = f.filename.split(f"{os.sep}regrow{os.sep}", 1)[-1]
    return f"regrow/{path}:{f.lineno} in {f.name}"


class Soak:
    def __init__(self, config: SoakConfig, out: Callable[[str], None]) -> None:
        self.cfg = config
        self.out_fn = out
        self.report = Report(config.seed, config)
        master = random.Random(config.seed)
        fault_rng = random.Random(master.getrandbits(64))
        self.work_rng = random.Random(master.getrandbits(64))
        self.t0 = time.monotonic()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.stop_feeding = threading.Event()
        self.interrupted = threading.Event()
        self.in_flight: list[GraphRun] = []
        self.graph_index = 0
        self.np = numpy_or_none()
        self.dask_ok = False
        self.kinds: list[str] = []
        self.fault_kinds: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="regrow-chaos-"))
        self.cluster = SoakCluster(config, self.report, self.out, self.tmp)
        self.faults = Faults(
            config, self.cluster, self.report, self.out, fault_rng, self.t0, self.interrupted
        )
        self.workloads: Workloads | None = None
        self.books_closed = False

    # ------------------------------------------------------------------ output
    def out(self, message: str) -> None:
        with self.lock:
            self.out_fn(f"[{time.monotonic() - self.t0:7.1f}s] {message}")

    # ---------------------------------------------------------------- set up
    def run(self) -> Report:
        cfg = self.cfg
        self.out(
            f"regrow chaos: seed {cfg.seed}, {cfg.duration:g} s, {cfg.workers} workers, "
            f"graph timeout {cfg.graph_timeout:g} s, heartbeat timeout "
            f"{cfg.heartbeat_timeout:g} s, allowed failures {cfg.allowed_failures}"
        )
        start = time.monotonic()
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, self.tmp, True)
            try:
                self._set_up(stack)
                self._soak()
            except Abort as exc:
                self.report.aborted = str(exc)
                self.out(f"ABORTED: {reason(exc)}")
            except KeyboardInterrupt:
                self.report.aborted = "interrupted (Ctrl-C or SIGTERM)"
                self.interrupted.set()
                self.out("interrupted: stopping everything the soak started")
            except Exception as exc:
                self.report.aborted = f"error: {explain(exc)}"
                self.out(f"ABORTED by an error:\n{traceback.format_exc()}")
            finally:
                self.stop_feeding.set()
                self.report.duration = time.monotonic() - start
                if not self.interrupted.is_set() and self.cluster.client is not None:
                    with contextlib.suppress(Exception):
                        self.report.memory["end"] = self.cluster.memory()
                        self.report.cluster["workers_at_end"] = self.cluster.worker_count()
                with self.lock:
                    self.books_closed = True  # a graph thread left behind records nothing
                self.cluster.record_descendants()
                stack.close()  # in reverse: resume frozen, client, workers, cluster, link
                self.cluster.check_leaks()
        return self.report

    def _set_up(self, stack: contextlib.ExitStack) -> None:
        cfg = self.cfg
        self.kinds = ["map", "tree", "scatter", "pipeline"]
        if self.np is None:
            self.report.skipped["numpy"] = "numpy is not installed: no array values"
        if self.np is not None and importlib.util.find_spec("dask") is not None:
            try:
                importlib.import_module("dask.bag")
                importlib.import_module("dask.array")
                self.dask_ok = True
            except ImportError as exc:
                self.report.skipped["dask"] = f"dask collections skipped: {exc}"
        else:
            self.report.skipped["dask"] = (
                "dask collections skipped: dask (and numpy) not installed "
                "(pip install 'regrow[dask]')"
            )
        if self.dask_ok:
            self.kinds += list(DASK_KINDS)
        else:
            self.out(self.report.skipped["dask"])

        self.fault_kinds = ["kill-worker", "kill-nanny", "stop-worker", "stop-nanny"]
        if cfg.scheduler_kill:
            self.fault_kinds.append("kill-scheduler")
        else:
            self.report.skipped["kill-scheduler"] = "--no-scheduler-kill"
        cluster = self.cluster
        cluster.open_link(stack)
        if cluster.link is not None:
            self.fault_kinds.append("cut-network")

        t = time.monotonic()
        client = cluster.start(stack)
        stack.callback(self.faults.resume_all)
        self.workloads = Workloads(client, self.np)
        cluster.wait_full(time.monotonic() + 60, set())
        assert cluster.local is not None
        self.report.cluster.update(
            scheduler=cluster.local.scheduler_address,
            journal=str(self.tmp / "journal.db"),
            workers=cfg.workers,
            netns_worker=cluster.link is not None,
            netns=cluster.link.ns if cluster.link is not None else None,
        )
        self.out(
            f"cluster up in {time.monotonic() - t:.1f} s at {cluster.local.scheduler_address}: "
            f"{cluster.worker_count()} workers; graphs: {', '.join(self.kinds)}; "
            f"faults: {', '.join(self.fault_kinds)}"
        )
        self.report.memory["start"] = cluster.memory()

    # --------------------------------------------------------------- the run
    def _soak(self) -> None:
        feeder = threading.Thread(target=self._feed, name="regrow-chaos-feed", daemon=True)
        feeder.start()
        end = time.monotonic() + self.cfg.duration
        try:
            self.faults.run(end, self.fault_kinds)
        finally:
            self.stop_feeding.set()
        self._drain()

    # --------------------------------------------------------------- graphs
    def _feed(self) -> None:
        """Keep ``in_flight`` graphs running until told to stop."""
        while not self.stop_feeding.is_set():
            with self.changed:
                self._reap_stuck()
                client = self.cluster.client
                running = client is not None and client.status == "running"
                if len(self.in_flight) >= self.cfg.in_flight or not running:
                    self.changed.wait(0.5)
                    continue
                kind = self.work_rng.choice(self.kinds)
                g = GraphRun(
                    kind=kind,
                    index=self.graph_index,
                    seed=self.work_rng.getrandbits(31),
                    started=time.monotonic(),
                    deadline=time.monotonic() + self.cfg.graph_timeout,
                )
                self.graph_index += 1
                self.in_flight.append(g)
                self.report.graphs_started[kind] += 1
            threading.Thread(
                target=self._graph, args=(g,), name=f"regrow-chaos-{g.name}", daemon=True
            ).start()

    def _reap_stuck(self) -> None:
        """(Under the lock.) A graph whose thread is past its deadline by a margin is
        stuck in a call that ignores its timeout: a hang, left behind."""
        now = time.monotonic()
        for g in list(self.in_flight):
            if now > g.deadline + 30 and not g.recorded:
                g.recorded = True
                self.in_flight.remove(g)
                entry = self._entry(g, "stuck past its deadline in a call without timeout")
                self.report.hangs.append(entry)
                self.out_fn(f"HANG {g.name} (stuck): {entry}")

    def _entry(self, g: GraphRun, detail: str) -> dict[str, Any]:
        return {
            "graph": g.name,
            "kind": g.kind,
            "seed": g.seed,
            "params": dict(g.params),
            "phase": g.phase,
            "at": round(g.started - self.t0, 1),
            "elapsed": round(time.monotonic() - g.started, 1),
            "detail": detail,
        }

    def _graph(self, g: GraphRun) -> None:
        from regrow.errors import (
            CancelledError,
            FutureLostError,
            KilledWorker,
            LostDataError,
            SchedulerLostError,
        )

        assert self.workloads is not None
        outcome: str
        detail = where = ""
        try:
            got, expected, compare = self.workloads.run(g)
            if compare(got, expected):
                outcome = "ok"
            else:
                outcome, detail = "wrong", difference(got, expected)
        except TimeoutError as exc:
            if g.remaining() > 1.0:
                outcome, detail = "unexpected", f"TimeoutError before the deadline: {reason(exc)}"
                where = _raised_at(exc)
            else:
                outcome, detail = "hang", self._hang_detail(g)
        except KilledWorker as exc:
            outcome, detail = "erred", f"KilledWorker: {exc}"
        except LostDataError as exc:
            # Scattered data has no lineage: it may be lost with every worker that held a
            # copy. As faults come one at a time, that takes as many faults that lose a
            # worker as it had replicas. Anything else can be recomputed.
            losses = self.faults.worker_losses(g.started)
            replicas = int(g.params.get("replicas", 0))
            allowed = g.kind == "scatter" and len(losses) >= replicas
            outcome = "erred" if allowed else "wrong"
            detail = f"LostDataError: {exc}"
            if not allowed:
                detail = f"lost: {detail} (worker-losing faults meanwhile: {losses or 'none'})"
        except (FutureLostError, CancelledError, SchedulerLostError) as exc:
            # Nobody cancelled it and the scheduler came back: once the graph was
            # submitted, a result regrow owed is lost. (A call that failed while it was
            # being submitted, such as a scatter, lost nothing it had promised.)
            lost = g.phase == "gather"
            outcome = "wrong" if lost else "unexpected"
            detail = f"{'lost: ' if lost else ''}{explain(exc)}"
            where = _raised_at(exc)
        except Exception as exc:
            outcome, detail = "unexpected", explain(exc)
            where = _raised_at(exc)
        if self.interrupted.is_set():
            return
        if where:
            detail += f" (raised at {where})"
        self._finish(g, outcome, detail)

    def _hang_detail(self, g: GraphRun) -> str:
        statuses = collections.Counter(str(getattr(f, "status", "?")) for f in g.futures)
        detail = f"not done within {self.cfg.graph_timeout:g} s; futures by status {dict(statuses)}"
        pending = [f.key for f in g.futures if not f.done()][:5]
        if pending:
            detail += f"; pending e.g. {pending}"
        with contextlib.suppress(Exception):
            info = self.cluster.info(timeout=5)
            detail += f"; scheduler tasks {info['tasks']}, workers {len(info['workers'])}"
        # Cancel it: the cluster must not keep working on a hung graph.
        client = self.cluster.client
        if g.futures and client is not None:
            futures = list(g.futures)
            try:
                call(lambda: client.cancel(futures), 15, "cancel")
                detail += "; cancelled"
            except Exception as exc:
                detail += f"; cancel failed: {explain(exc)}"
        elif g.kind == "pipeline":
            detail += "; a pipeline cannot be cancelled (regrow.pipeline has no cancel)"
        return detail

    def _finish(self, g: GraphRun, outcome: str, detail: str) -> None:
        with self.changed:
            if g.recorded or self.books_closed:
                return
            g.recorded = True
            with contextlib.suppress(ValueError):
                self.in_flight.remove(g)
            g.futures.clear()
            self.changed.notify_all()
            if outcome == "ok":
                self.report.completed[g.kind] += 1
                return
            entry = self._entry(g, detail)
            if outcome == "wrong":
                self.report.wrong.append(entry)
            elif outcome == "hang":
                self.report.hangs.append(entry)
            elif outcome == "erred":
                self.report.erred.append(entry)
                self.report.erred_by_kind[g.kind] += 1
            else:
                self.report.unexpected.append(entry)
            label = {"wrong": "WRONG", "hang": "HANG", "erred": "erred"}.get(outcome, "UNEXPECTED")
            self.out_fn(
                f"[{time.monotonic() - self.t0:7.1f}s] {label} {g.name} seed={g.seed} "
                f"params={g.params}: {detail}"
            )

    def _drain(self) -> None:
        """No new graphs; wait for those in flight (each until its own deadline)."""
        from regrow.testing import wait_until

        self.stop_feeding.set()
        with self.lock:
            last = max((g.deadline for g in self.in_flight), default=time.monotonic())
        self.out(f"draining {len(self.in_flight)} graph(s) in flight")

        def drained() -> bool:
            with self.changed:
                self._reap_stuck()
                return not self.in_flight

        with contextlib.suppress(TimeoutError):
            wait_until(drained, timeout=max(0.0, last - time.monotonic()) + 35, interval=0.05)


def run_soak(config: SoakConfig, out: Callable[[str], None] | None = None) -> int:
    """Run the soak; print its report (and write it as JSON); 0 if nothing was wrong."""
    echo = out or (lambda s: print(s, flush=True))
    soak = Soak(config, echo)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
        raise KeyboardInterrupt  # clean up as on Ctrl-C

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        report = soak.run()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
    if soak.cluster.local is not None:
        report.cluster["scheduler_restarts"] = soak.cluster.local.scheduler_restarts
    report.cluster["nanny_replacements"] = soak.faults.nanny_replacements
    report.cluster["netns_workers_started"] = soak.cluster.netns_starts
    report.cluster["netns_worker_start_failures"] = soak.cluster.netns_start_failures
    echo(format_report(report))
    if config.json_path:
        with open(config.json_path, "w") as f:
            json.dump(report.to_json(), f, indent=2, default=str)
    return report.exit_code()
