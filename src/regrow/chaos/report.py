"""The chaos soak's report: what it found, as counts and entries, and its printout.

Owns: ``Report`` (graphs started and completed, wrong results, hangs, allowed and
unexpected errors, faults injected and recovery times, memory, leaked processes), its
JSON form, its exit code, recovery-time statistics and ``format_report``.

Must not: judge anything nor touch the cluster: the soak fills the report in
(``regrow.chaos.soak``); this module only adds up and prints what it was given.
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass, field
from typing import Any

from regrow.chaos.settings import FAULT_KINDS, GRAPH_KINDS, SoakConfig


@dataclass
class Report:
    seed: int
    config: SoakConfig
    duration: float = 0.0
    graphs_started: collections.Counter[str] = field(default_factory=collections.Counter)
    completed: collections.Counter[str] = field(default_factory=collections.Counter)
    erred_by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    erred: list[dict[str, Any]] = field(default_factory=list)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    recovery: dict[str, list[float]] = field(default_factory=dict)
    recovery_failures: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    leaked: list[str] = field(default_factory=list)
    aborted: str = ""

    def n_hangs(self) -> int:
        """Graphs that hung, and faults the cluster did not recover from in time."""
        return len(self.hangs) + len(self.recovery_failures)

    def ok(self) -> bool:
        """Nothing wrong and nothing hung (unexpected errors and leaks are reported,
        for a person to judge, but do not fail the soak)."""
        return not (self.wrong or self.n_hangs() or self.aborted)

    def exit_code(self) -> int:
        """0 when nothing was wrong and nothing hung; 1 otherwise; 2 when the soak could
        not run to its end; 130 when it was interrupted."""
        if self.aborted:
            return 130 if self.aborted.startswith("interrupted") else 2
        return 0 if self.ok() else 1

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "ok": self.ok(),
            "seed": self.seed,
            "duration": round(self.duration, 3),
            "settings": {
                "duration": c.duration,
                "workers": c.workers,
                "graph_timeout": c.graph_timeout,
                "netns": c.netns,
                "scheduler_kill": c.scheduler_kill,
                "in_flight": c.in_flight,
                "heartbeat_timeout": c.heartbeat_timeout,
                "allowed_failures": c.allowed_failures,
            },
            "wrong": len(self.wrong),
            "hangs": self.n_hangs(),
            "erred": len(self.erred),
            "unexpected": len(self.unexpected),
            "graphs": {
                "started": dict(self.graphs_started),
                "completed": dict(self.completed),
                "erred": dict(self.erred_by_kind),
            },
            "failures": {
                "wrong": self.wrong,
                "hangs": self.hangs,
                "erred": self.erred,
                "unexpected": self.unexpected,
                "recovery": self.recovery_failures,
                "leaked_processes": self.leaked,
                "aborted": self.aborted,
            },
            "faults": {
                "injected": dict(self.faults),
                "log": self.fault_log,
            },
            "recovery": {kind: stats(times) for kind, times in self.recovery_rows()},
            "skipped": self.skipped,
            "memory": self.memory,
            "cluster": self.cluster,
        }

    def all_recoveries(self) -> list[float]:
        return [t for times in self.recovery.values() for t in times]

    def recovery_rows(self) -> list[tuple[str, list[float]]]:
        """Recovery times by fault kind (sorted), then of every fault as "all"."""
        return [*sorted(self.recovery.items()), ("all", self.all_recoveries())]


def stats(times: list[float]) -> dict[str, float | int | None]:
    """n, median, p99 (nearest rank) and max of recovery times, in seconds."""
    if not times:
        return {"n": 0, "median": None, "p99": None, "max": None}
    s = sorted(times)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    p99 = s[max(0, math.ceil(0.99 * n) - 1)]
    return {"n": n, "median": round(median, 3), "p99": round(p99, 3), "max": round(s[-1], 3)}


def _signature(detail: str) -> str:
    """What an error says, less its numbers (addresses, keys, pids): to group alike ones."""
    return re.sub(r"'[^']*'|[0-9a-f]{6,}|\d+", "#", detail)[:120]


def format_report(r: Report) -> str:
    c = r.config
    lines = ["", "=" * 72, "regrow chaos report", "=" * 72]

    def add(label: str, text: str) -> None:
        lines.append(f"{label:<16}{text}")

    add("seed", str(r.seed))
    add("duration", f"{r.duration:.1f} s (asked {c.duration:g} s)")
    netns = r.cluster.get("netns")
    add(
        "cluster",
        f"{c.workers} workers under nannies"
        + (f" + 1 in network namespace {netns}" if netns else "")
        + f"; journaled scheduler; heartbeat timeout {c.heartbeat_timeout:g} s; "
        f"allowed failures {c.allowed_failures}",
    )
    started = sum(r.graphs_started.values())
    done = sum(r.completed.values())
    add("graphs", f"{started} started, {done} completed correctly")
    for kind in GRAPH_KINDS:
        if r.graphs_started[kind] or kind in r.completed:
            add(
                "",
                f"  {kind:<12}{r.completed[kind]:>5} completed of {r.graphs_started[kind]:>5}"
                + (f", {r.erred_by_kind[kind]} erred" if r.erred_by_kind[kind] else ""),
            )
    add(
        "outcomes",
        f"wrong {len(r.wrong)}, hangs {len(r.hangs)}, erred (allowed) {len(r.erred)}, "
        f"unexpected errors {len(r.unexpected)} (reported, not failing), "
        f"faults not recovered from {len(r.recovery_failures)}",
    )
    # Each wrong result and hang in full; errors grouped by what they say.
    for label, entries in (("WRONG", r.wrong), ("HANG", r.hangs)):
        for e in entries:
            add("", f"  {label} {e['graph']} seed={e['seed']} at {e['at']} s {e['params']}")
            add("", f"      {e['detail']}")
    for label, entries in (("erred", r.erred), ("UNEXPECTED", r.unexpected)):
        groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for e in entries:
            groups[_signature(e["detail"])].append(e)
        for es in groups.values():
            names = ", ".join(f"{e['graph']} (seed {e['seed']})" for e in es[:4])
            more = f" and {len(es) - 4} more" if len(es) > 4 else ""
            add("", f"  {label} x{len(es)}: {es[0]['detail'][:300]}")
            add("", f"      in {names}{more}")
    add("faults", f"{sum(r.faults.values())} injected")
    for kind in FAULT_KINDS:
        if kind in r.skipped:
            add("", f"  {kind:<16}skipped: {r.skipped[kind]}")
        else:
            add("", f"  {kind:<16}{r.faults[kind]:>4}")
    for e in r.recovery_failures:
        add("", f"  NOT RECOVERED {e['kind']} at {e['at']} s: {e['detail']}")
    for what in ("dask", "numpy"):
        if what in r.skipped:
            add("skipped", r.skipped[what])
    add("recovery (s)", "from the fault's end (the kill, SIGCONT, the link back) until the")
    add("", "cluster is at full size again and a fresh probe task has returned")
    add("", f"  {'':<14}{'n':>4}{'median':>9}{'p99':>9}{'max':>9}")
    for kind, times in r.recovery_rows():
        s = stats(times)
        if s["n"]:
            add(
                "",
                f"  {kind:<14}{s['n']:>4}{s['median']:>9.2f}{s['p99']:>9.2f}{s['max']:>9.2f}",
            )
    for when in ("start", "end"):
        mem = r.memory.get(when)
        if not mem:
            continue
        add(f"memory {when}", "RSS in MB")
        by_role: dict[str, float] = collections.defaultdict(float)
        for p in mem["processes"]:
            rss = p["rss"]
            text = f"{rss / 2**20:8.1f}" if rss is not None else "       ?"
            add("", f"  {p['role']:<10}{p['name']:<16}pid {p['pid']:<8}{text}")
            by_role[p["role"]] += (rss or 0) / 2**20
        add("", "  total     " + ", ".join(f"{k} {v:.1f}" for k, v in by_role.items()))
    restarts = r.cluster.get("scheduler_restarts")
    if restarts is not None:
        add(
            "restarts",
            f"scheduler {restarts}, nannies replaced {r.cluster.get('nanny_replacements', 0)}, "
            f"netns workers started {r.cluster.get('netns_workers_started', 0)} "
            f"({r.cluster.get('netns_worker_start_failures', 0)} exited at start: no route yet)",
        )
    if r.leaked:
        add("LEAKED", "; ".join(r.leaked))
    if r.aborted:
        add("ABORTED", r.aborted)
    add("result", "PASS" if r.ok() else "FAIL")
    lines.append("=" * 72)
    return "\n".join(lines)
