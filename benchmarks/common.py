"""Shared benchmark machinery: clusters, timing, repetitions, medians, tables.

Every workload runs on each system (regrow, dask.distributed and Ray) with the
same layout: a scheduler plus ``N_WORKERS`` worker processes of
``THREADS_PER_WORKER`` thread each, on this machine (Ray: a local instance with
``num_cpus`` = 2, so 2 worker processes running one task each; see
``benchmarks/ray_client.py``). Each system's cluster is started once per module
run (after an untimed warm-up on every worker) and shared by that module's
workloads; the systems' repetitions alternate. Every repetition checks its
result: a wrong one is reported as an error, never timed. Each row can carry a
target for regrow (``Target``), checked against the medians of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import faulthandler
import gc
import logging
import math
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks import tasks

N_WORKERS = 2
THREADS_PER_WORKER = 1
REPS = 3
LIMIT_REPS = 5
# A repetition that takes longer than this (or than its workload's ``timeout``)
# is reported as a hang (with the stacks of all threads on stderr) and the
# system's remaining workloads are skipped.
REP_TIMEOUT = 300.0
SYSTEMS = ("regrow", "dask", "ray")
PEERS = ("dask", "ray")  # what regrow is compared with
# Peers only some modules run (``--systems`` may name them): PySpark, for the word
# count. The table shows their columns only when a row has them.
OPTIONAL = ("spark",)
LABELS = {"regrow": "regrow", "dask": "dask", "ray": "Ray", "spark": "PySpark"}
# What each peer needs, to say why it was skipped.
REQUIRES = {"dask": "dask.distributed", "ray": "ray", "spark": "pyspark (with a Java runtime)"}


class WrongResult(Exception):
    """A workload returned a value other than the one it must return."""


class WorkloadTimeout(Exception):
    """A repetition did not finish within REP_TIMEOUT."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise WrongResult(message)


def dask_version() -> str | None:
    """The installed dask.distributed version, or None if it cannot be imported."""
    try:
        import distributed
    except ImportError:
        return None
    return str(distributed.__version__)


def ray_version() -> str | None:
    """The installed Ray version, or None if it cannot be imported."""
    try:
        import ray
    except ImportError:
        return None
    return str(ray.__version__)


def spark_version() -> str | None:
    """The installed PySpark version if it and a Java runtime to run it are there."""
    import shutil

    try:
        import pyspark
    except ImportError:
        return None
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        return None
    return str(pyspark.__version__)


VERSIONS: dict[str, Callable[[], str | None]] = {
    "dask": dask_version,
    "ray": ray_version,
    "spark": spark_version,
}


# --------------------------------------------------------------------- systems
@dataclass
class System:
    """A running cluster of one system and a client connected to it."""

    name: str
    client: Any
    wait: Callable[..., Any]
    workers: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def start_system(name: str) -> Iterator[System]:
    """Start ``name``'s LocalCluster and a Client; both are closed on exit."""
    if name == "regrow":
        import regrow

        with (
            regrow.LocalCluster(n_workers=N_WORKERS, threads_per_worker=THREADS_PER_WORKER) as rc,
            regrow.Client(rc) as client,
        ):
            yield _ready(System(name, client, regrow.wait))
    elif name == "dask":
        import distributed

        with (
            distributed.LocalCluster(
                n_workers=N_WORKERS,
                threads_per_worker=THREADS_PER_WORKER,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,  # else pages of heartbeat errors at close
            ) as dc,
            distributed.Client(dc) as client,
        ):
            yield _ready(System(name, client, distributed.wait))
    elif name == "ray":
        from benchmarks import ray_client

        with ray_client.local_ray(num_cpus=N_WORKERS * THREADS_PER_WORKER) as client:
            yield _ready(System(name, client, ray_client.wait))
    elif name == "spark":
        yield System(name, _spark_session(), lambda *args, **kwargs: None)
    else:
        raise ValueError(f"unknown system {name!r}; choose from {SYSTEMS}")


def _spark_session() -> Any:
    """PySpark's ``local[N]`` with N = the other systems' task slots; its session is
    stopped (and its JVM with it) when this process exits: a SparkContext cannot be
    restarted cheaply, and one run uses one."""
    import atexit

    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else it warns of the VM's name
    # Its Python workers run this interpreter, as the other systems' workers do (else
    # the first python3 on PATH, which may lack this environment's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    session = (
        SparkSession.builder.master(f"local[{N_WORKERS * THREADS_PER_WORKER}]")
        .appName("regrow-benchmarks")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", str(4 * N_WORKERS * THREADS_PER_WORKER))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    atexit.register(session.stop)
    return session


def _ready(system: System) -> System:
    if system.name == "ray":
        return _ready_ray(system)
    system.client.wait_for_workers(N_WORKERS, timeout=60)
    system.workers = sorted(system.client.scheduler_info()["workers"])
    check(
        len(system.workers) == N_WORKERS,
        f"{system.name}: expected {N_WORKERS} workers, found {system.workers}",
    )
    system.pids = dict(system.client.run(tasks.pid))
    # Warm-up (untimed): import the task module and start a task on every worker.
    futures = [
        system.client.submit(tasks.inc, i, pure=False, workers=[w])
        for i, w in enumerate(system.workers * 4)
    ]
    check(
        system.client.gather(futures) == [i + 1 for i in range(len(futures))],
        f"{system.name}: warm-up tasks returned wrong results",
    )
    return system


def _ready_ray(system: System) -> System:
    """Ray: find the worker processes (a task each returning its pid), then warm up.

    Ray has no named workers nor ``client.run``: ``system.workers`` are the
    worker processes' pids as names (``"pid 1234"``, in pid order), found by
    ``N_WORKERS`` overlapping tasks that each return ``os.getpid()``. That is
    also every worker's first task (Ray starts its worker processes in
    ``ray.init``, but a worker's first task waits for it to be ready). Then
    (untimed) a few tasks more, without pinning: Ray cannot pin.
    """
    system.pids = system.client.worker_pids(N_WORKERS)
    system.workers = list(system.pids)
    futures = system.client.map(tasks.inc, range(4 * N_WORKERS), pure=False)
    check(
        system.client.gather(futures) == [i + 1 for i in range(len(futures))],
        f"{system.name}: warm-up tasks returned wrong results",
    )
    return system


# ------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Target:
    """A goal for regrow in one row, checked against the medians of the same run.

    ``text`` is shown in the table; ``met(medians, higher_is_better)`` decides
    it, ``medians`` holding a finite, positive median for each system in
    ``needs``. When one of them has none (skipped, not run, an error, capped),
    the row's ``met`` cell is ``-``.
    """

    text: str
    needs: tuple[str, ...]
    met: Callable[[Mapping[str, float], bool], bool]


def times_better(text: str | None = None, **at_least: float) -> Target:
    """regrow at least ``at_least[peer]`` times better than each peer (as in "vs <peer>")."""

    def met(medians: Mapping[str, float], higher_is_better: bool) -> bool:
        return all(
            ratio(medians["regrow"], medians[peer], higher_is_better) >= factor
            for peer, factor in at_least.items()
        )

    shown = ", ".join(f">= {factor:g}x {LABELS[peer]}" for peer, factor in at_least.items())
    return Target(text or shown, ("regrow", *at_least), met)


def no_worse_than_best_peer(peers: tuple[str, ...] = PEERS) -> Target:
    """regrow's median at least as good as the best of the peers' medians."""

    def met(medians: Mapping[str, float], higher_is_better: bool) -> bool:
        best = (max if higher_is_better else min)(medians[p] for p in peers)
        return medians["regrow"] >= best if higher_is_better else medians["regrow"] <= best

    names = ", ".join(LABELS[p] for p in peers)
    return Target(f"no worse than best of {names}", ("regrow", *peers), met)


def at_least(value: float, text: str | None = None) -> Target:
    """regrow's own median at least ``value`` (regrow-only rows)."""
    return Target(text or f">= {fmt(value)}", ("regrow",), lambda m, _h: m["regrow"] >= value)


def at_most(value: float, text: str | None = None) -> Target:
    """regrow's own median at most ``value`` (regrow-only rows)."""
    return Target(text or f"<= {fmt(value)}", ("regrow",), lambda m, _h: m["regrow"] <= value)


def ratio(regrow: float, peer: float, higher_is_better: bool) -> float:
    """How many times better regrow is than a peer: regrow/peer for rates, peer/regrow for times."""
    return regrow / peer if higher_is_better else peer / regrow


@dataclass(frozen=True)
class Series:
    """A further row filled by a workload's repetitions (see ``Workload.more``)."""

    name: str
    unit: str
    higher_is_better: bool
    target: Target | None = None


@dataclass(frozen=True)
class Workload:
    """One measurement: ``run(system)`` does one repetition and returns its value in ``unit``.

    With ``more``, one repetition measures several rows: ``run`` returns a tuple,
    its own value first, then one per ``Series`` in ``more``.

    With ``cap``, a repetition may return ``math.inf``: no result within ``cap``
    (in ``unit``); it is shown as ``> cap`` with ``cap_note``, and that system's
    remaining repetitions of the workload are skipped (waiting out the cap again
    would only repeat the same bound).

    ``target``: regrow's goal in this row (``Target``), if any. ``timeout``: a
    repetition with no result after that many seconds is a hang. ``warmups``: that
    many untimed repetitions per system first, their values printed and dropped.
    ``min_reps``: at least that many repetitions, whatever the run asks for (rows whose
    figures swing so much that 3 give a median that is mostly luck).
    """

    name: str
    unit: str
    higher_is_better: bool
    run: Callable[[System], float | tuple[float, ...]]
    more: tuple[Series, ...] = ()
    cap: float | None = None
    cap_note: str = ""
    target: Target | None = None
    timeout: float = REP_TIMEOUT
    warmups: int = 0
    min_reps: int = 0


@dataclass
class Row:
    workload: str
    unit: str
    higher_is_better: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    # A sample of math.inf means "no result within cap" (lower-is-better rows only).
    cap: float | None = None
    cap_note: str = ""
    target: Target | None = None

    def median(self, system: str) -> float | None:
        values = self.samples.get(system)
        if not values or system in self.errors:
            return None
        return statistics.median(values)

    def show(self, value: float | None, unit: str = "") -> str:
        """A value as printed, followed by ``unit`` if given: ``> cap (note)`` if capped."""
        unit = f" {unit}" if unit else ""
        if value is not None and math.isinf(value) and self.cap is not None:
            note = f" ({self.cap_note})" if self.cap_note else ""
            return f"> {fmt(self.cap)}{unit}{note}"
        return f"{fmt(value)}{unit}"

    def usable(self, system: str) -> float | None:
        """``system``'s median if it is a finite positive number (else None)."""
        m = self.median(system)
        return None if m is None or m <= 0 or math.isinf(m) else m

    def speedup(self, peer: str = "dask") -> float | None:
        """How many times better regrow is than ``peer`` (>1: regrow is better)."""
        r, p = self.usable("regrow"), self.usable(peer)
        if r is None or p is None:
            return None
        return ratio(r, p, self.higher_is_better)

    def speedup_text(self, peer: str = "dask") -> str:
        """``speedup(peer)`` as shown; a bound (``> 4.2x``) when one system's median is capped."""
        speedup = self.speedup(peer)
        if speedup is not None:
            return f"{speedup:.2f}x"
        r, p = self.median("regrow"), self.median(peer)
        if r is None or p is None or self.cap is None or self.higher_is_better:
            return "-"
        if math.isinf(p) and not math.isinf(r) and r > 0:
            return f"> {self.cap / r:.2f}x"
        if math.isinf(r) and not math.isinf(p) and p > 0:
            return f"< {p / self.cap:.2f}x"
        return "-"

    def met(self) -> bool | None:
        """Whether regrow met the row's target; None without a target or a figure it needs."""
        if self.target is None:
            return None
        medians = {s: self.usable(s) for s in self.target.needs}
        if any(m is None for m in medians.values()):
            return None
        return self.target.met(
            {s: m for s, m in medians.items() if m is not None}, self.higher_is_better
        )

    def met_text(self) -> str:
        met = self.met()
        return "-" if met is None else "yes" if met else "no"


@dataclass
class Limit:
    """A hardware/OS limit measured in this process (no cluster involved); higher is better."""

    name: str
    unit: str
    samples: list[float]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def extend(self, other: Report) -> None:
        self.rows.extend(other.rows)
        self.limits.extend(other.limits)
        self.skipped.extend(s for s in other.skipped if s not in self.skipped)


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise WorkloadTimeout in the main thread if the block runs longer than ``seconds``."""
    fired = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        fired.set()
        print(f"\n!!! {what}: no result after {seconds} s; stacks:", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        signal.pthread_kill(main, signal.SIGINT)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            raise WorkloadTimeout(f"no result within {seconds:.0f} s (hang)") from None
        raise
    finally:
        timer.cancel()


def _settle() -> None:
    """Between repetitions: collect garbage and let the cluster free the last one's keys."""
    gc.collect()
    time.sleep(0.25)


def run_workloads(
    workloads: Sequence[Workload],
    systems: Iterable[str],
    reps: int = REPS,
    start: Callable[[str], contextlib.AbstractContextManager[System]] = start_system,
) -> list[Row]:
    """Run every workload ``reps`` times on each system; one cluster per system, made by
    ``start(name)`` (``start_system``: on this host).

    Every system's cluster is up for the whole module and their repetitions
    alternate (regrow, dask, ray, then ray, dask, regrow, ...), so a change in
    the load of the machine during the run falls on all alike. A system that
    hangs (no result within the workload's ``timeout``) is shut down and skips
    its remaining workloads; an error skips only that workload.
    """
    systems = list(systems)
    groups = [
        [
            Row(
                w.name,
                w.unit,
                w.higher_is_better,
                cap=w.cap,
                cap_note=w.cap_note,
                target=w.target,
            ),
            *(Row(s.name, s.unit, s.higher_is_better, target=s.target) for s in w.more),
        ]
        for w in workloads
    ]
    with contextlib.ExitStack() as outer:
        live: dict[str, System] = {}
        stacks: dict[str, contextlib.ExitStack] = {}
        for name in systems:
            stack = outer.enter_context(contextlib.ExitStack())
            try:
                live[name] = stack.enter_context(start(name))
                stacks[name] = stack
            except Exception as exc:
                for row in (r for group in groups for r in group):
                    row.errors[name] = f"ERROR (cluster): {type(exc).__name__}: {exc}"
                print(f"  {name:<6}  cluster failed: {type(exc).__name__}: {exc}", flush=True)
        hung: dict[str, str] = {}
        for w, group in zip(workloads, groups, strict=True):
            row = group[0]
            for rep in range(-w.warmups, max(reps, w.min_reps)):
                order = list(live) if rep % 2 == 0 else list(reversed(live))
                for name in order:
                    if name in hung:
                        for r in group:
                            r.errors.setdefault(name, f"not run: {name} hung in {hung[name]!r}")
                    if name in row.errors or any(map(math.isinf, row.samples.get(name, []))):
                        continue
                    _settle()
                    try:
                        with time_limit(w.timeout, f"{name} / {w.name} rep {rep + 1}"):
                            value = w.run(live[name])
                        values = value if isinstance(value, tuple) else (value,)
                        check(
                            len(values) == len(group), f"{len(values)} values for {len(group)} rows"
                        )
                    except WorkloadTimeout as exc:
                        for r in group:
                            r.errors[name] = f"HANG: {exc}"
                        hung[name] = w.name
                        stacks[name].close()  # stop its processes: they may be spinning
                    except Exception as exc:
                        for r in group:
                            r.errors[name] = f"ERROR: {type(exc).__name__}: {exc}"
                    else:
                        if rep < 0:
                            print(f"  {name:<6}  {w.name}: warm-up {fmt(values[0])}", flush=True)
                            continue
                        for r, v in zip(group, values, strict=True):
                            r.samples.setdefault(name, []).append(v)
            for r in group:
                for name in systems:
                    _progress(name, r)
    return [r for group in groups for r in group]


def _progress(system: str, row: Row) -> None:
    if system in row.errors:
        shown = row.errors[system]
    else:
        samples = row.samples.get(system, [])
        values = ", ".join(f"> {fmt(row.cap)}" if math.isinf(v) else fmt(v) for v in samples)
        capped = "; capped, remaining repetitions skipped" if any(map(math.isinf, samples)) else ""
        shown = f"{row.show(row.median(system), row.unit)} (median of {values}{capped})"
    print(f"  {system:<6}  {row.workload}: {shown}", flush=True)


def measure(fn: Callable[[], float], reps: int = LIMIT_REPS) -> list[float]:
    return [fn() for _ in range(reps)]


# ------------------------------------------------------------------- printing
def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def machine_summary() -> str:
    import regrow

    try:
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = "not installed"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    ray = ray_version()
    ray_layout = f" (Ray: num_cpus={N_WORKERS * THREADS_PER_WORKER}, one node)" if ray else ""
    return (
        f"{now}; nproc={nproc} ({cpu}); Python {platform.python_version()} on "
        f"{platform.system()} {platform.release()}; regrow {regrow.__version__}"
        f"{_regrow_commit()}, distributed {dask_version() or 'not installed'}, "
        f"ray {ray or 'not installed'}, pyspark {spark_version() or 'not installed'}, "
        f"numpy {numpy_version}; "
        f"{N_WORKERS} workers x {THREADS_PER_WORKER} thread, processes, loopback TCP"
        f"{ray_layout}; load average 1/5/15 min at the end: {load}"
    )


def _regrow_commit() -> str:
    """' (commit abc1234)' when regrow runs from a git checkout (read-only git call)."""
    import subprocess

    import regrow

    src = os.path.dirname(os.path.abspath(regrow.__file__))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "-C", src, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return f" (commit {out.stdout.strip()})"
    return ""


def _cell(row: Row, system: str, skipped: list[str]) -> str:
    if system in skipped:
        return "skipped"
    if system in row.errors:
        return row.errors[system].split(":", 1)[0]  # ERROR / HANG / not run
    return row.show(row.median(system))


def format_report(report: Report, reps: int) -> str:
    shown = [
        s
        for s in OPTIONAL
        if any(s in r.samples or s in r.errors for r in report.rows) or s in report.skipped
    ]
    systems = (*SYSTEMS, *shown)
    peers = (*PEERS, *shown)
    header = [
        "workload",
        "unit",
        *systems,
        *(f"vs {LABELS[p]}" for p in peers),
        "target",
        "met",
    ]
    body = []
    for row in report.rows:
        body.append(
            [
                row.workload,
                f"{row.unit} ({'higher' if row.higher_is_better else 'lower'} is better)",
                *(_cell(row, s, report.skipped) for s in systems),
                *(row.speedup_text(p) for p in peers),
                row.target.text if row.target else "-",
                row.met_text(),
            ]
        )
    more = sorted({n for r in report.rows for n in map(len, r.samples.values()) if n > reps})
    counts = f"{reps} repetitions" + (
        f" ({', '.join(map(str, more))} in some rows)" if more else ""
    )
    lines = [f"Medians of {counts}. {machine_summary()}", ""]
    n = len(systems) + len(peers)
    lines += _markdown(header, body, right=tuple(range(2, 2 + n)))
    lines += [
        "",
        "vs dask, vs Ray = how many times better regrow is than that system (>1: regrow "
        "is better): regrow/peer for rates, peer/regrow for times; a capped median gives "
        "a bound. target = regrow's goal for the row, met = whether the medians of this "
        "run meet it (- : no target, or a figure it needs is missing).",
    ]
    if report.limits:
        lines += [
            "",
            f"Limits of this machine, measured in the same run with no cluster (best of "
            f"{LIMIT_REPS}: a limit is what the machine can do at its best):",
            "",
        ]
        lines += _markdown(
            ["limit", "unit", "best"],
            [[lim.name, lim.unit, fmt(max(lim.samples))] for lim in report.limits],
            right=(2,),
        )
    notes = [
        f"- {system} / {row.workload}: {row.errors[system]}"
        for row in report.rows
        for system in systems
        if system in row.errors and system not in report.skipped
    ]
    if notes:
        lines += ["", "Problems:", *notes]
    for system in report.skipped:
        what = REQUIRES.get(system, system)
        lines += ["", f"{system} was skipped: {what} is not importable "
                  "(install it with: pip install -e \".[bench]\")."]  # fmt: skip
    return "\n".join(lines)


def _markdown(header: list[str], body: list[list[str]], right: tuple[int, ...]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)]
    return [line(header), "|" + "|".join(rule) + "|", *[line(r) for r in body]]


# ------------------------------------------------------------------------ CLI
def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reps", type=int, default=REPS, help=f"repetitions (default {REPS})")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated systems to run (default: {','.join(SYSTEMS)})",
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in SYSTEMS + OPTIONAL]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {list(SYSTEMS + OPTIONAL)}")
    return args


def available(systems: Sequence[str]) -> tuple[list[str], list[str]]:
    """(systems to run, systems skipped because they cannot be imported)."""
    skipped = [s for s in systems if s in VERSIONS and VERSIONS[s]() is None]
    for system in skipped:
        print(f"{REQUIRES[system]} is not importable: {system} skipped.", flush=True)
    return [s for s in systems if s not in skipped], skipped


def main(
    title: str,
    run: Callable[[Sequence[str], int], Report],
    argv: Sequence[str] | None = None,
) -> Report:
    """Parse arguments, run ``run(systems, reps)``, print its table."""
    args = parse_args(title, argv)
    systems, skipped = available(args.systems)
    print(f"{title}: {', '.join(systems)}; {args.reps} repetitions", flush=True)
    report = run(systems, args.reps)
    report.skipped.extend(skipped)
    print()
    print(format_report(report, args.reps))
    return report
