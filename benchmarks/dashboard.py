"""The dashboard's cost: throughput with and without a dashboard page open. regrow only
(dask.distributed's Bokeh dashboard is another program; its column stays empty).

One regrow cluster of the usual layout (2 workers of 1 thread) serves its dashboard on
a loopback port for the whole module. Each repetition runs the throughput workloads
(``throughput.py``'s: 10,000 x ``client.submit(inc, i, pure=False)`` in a loop, and one
``client.map`` of 100,000) three times, the order reversed every other repetition:

* **closed**: no page open (the scheduler follows nothing for the dashboard);
* **feed**: a thread of the benchmark reads the page's live feed (``api/stream``) and
  decodes each message, as the page would: what one viewer costs the scheduler, with
  no browser drawing on the same two cores;
* **page open**: a real headless chromium (Debian's, through selenium:
  ``regrow.testing.headless_browser``) shows the dashboard's overview (``#status``:
  progress, task stream, charts and timeline, all updating live).

Rows: the rates, and the ratios feed / closed and page open / closed of each
repetition (medians of the per-repetition ratios: 1 = free). The browser runs on the
same 2 cores as the cluster, so the page-open ratio includes the CPU the browser takes
to draw; rows give the browser's CPU seconds per repetition (chromium's processes, from
psutil) and the feed reader's. The scheduler process's own CPU time per task in each
mode (psutil) is the steadiest measure of what a viewer costs the cluster: rates on two
shared cores move by 10-30% between runs.

Run alone: ``python -m benchmarks.dashboard`` (needs chromium, chromium-driver and
selenium, which ``.ci/run`` installs).
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psutil

from benchmarks.common import (
    N_WORKERS,
    REP_TIMEOUT,
    THREADS_PER_WORKER,
    Report,
    Row,
    System,
    _progress,
    _ready,
    at_least,
    check,
    main,
    time_limit,
)
from benchmarks.throughput import N_MAP, N_SUBMIT, map_tasks, submit_loop

ROWS = {
    "submit-closed": (f"dashboard: {N_SUBMIT:,} x submit() + gather, no page open", "tasks/s"),
    "submit-feed": (f"dashboard: {N_SUBMIT:,} x submit() + gather, live feed read", "tasks/s"),
    "submit-open": (f"dashboard: {N_SUBMIT:,} x submit() + gather, page open", "tasks/s"),
    "submit-feed-ratio": ("dashboard: submit loop, ratio feed read / closed", "ratio"),
    "submit-ratio": ("dashboard: submit loop, ratio page open / closed", "ratio"),
    "map-closed": (f"dashboard: map() of {N_MAP:,} + gather, no page open", "tasks/s"),
    "map-feed": (f"dashboard: map() of {N_MAP:,} + gather, live feed read", "tasks/s"),
    "map-open": (f"dashboard: map() of {N_MAP:,} + gather, page open", "tasks/s"),
    "map-feed-ratio": ("dashboard: map, ratio feed read / closed", "ratio"),
    "map-ratio": ("dashboard: map, ratio page open / closed", "ratio"),
    "submit-closed-cpu": ("dashboard: submit loop, scheduler CPU per task, closed", "us"),
    "submit-feed-cpu": ("dashboard: submit loop, scheduler CPU per task, feed read", "us"),
    "submit-open-cpu": ("dashboard: submit loop, scheduler CPU per task, page open", "us"),
    "map-closed-cpu": ("dashboard: map, scheduler CPU per task, closed", "us"),
    "map-feed-cpu": ("dashboard: map, scheduler CPU per task, feed read", "us"),
    "map-open-cpu": ("dashboard: map, scheduler CPU per task, page open", "us"),
    "browser-cpu": ("dashboard: the browser's CPU seconds per open repetition", "s"),
    "feed-cpu": ("dashboard: the feed reader's CPU seconds per repetition", "s"),
}
MODES = ("closed", "feed", "open")


class FeedReader:
    """The page's feed without the page: another process reading ``api/stream`` and
    decoding each message as the page would. What one viewer costs the scheduler, with
    no browser drawing on the same two cores (and not in the client's process, whose
    threads the benchmark's client needs)."""

    SCRIPT = (
        "import json, sys, time, urllib.request\n"
        "n = 0\n"
        "with urllib.request.urlopen(sys.argv[1], timeout=30) as r:\n"
        "    for line in r:\n"
        "        if line.startswith(b'data: '):\n"
        "            json.loads(line[6:]); n += 1\n"
        "            print(n, flush=True)\n"
    )

    def __init__(self, link: str) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, link + "api/stream"],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()  # the first message arrived: the feed is open

    def close(self) -> float:
        """Stop it; the CPU seconds it used."""
        cpu = psutil.Process(self.proc.pid).cpu_times()
        self.proc.terminate()
        self.proc.wait(timeout=10)
        return float(cpu.user + cpu.system)


@contextlib.contextmanager
def start_regrow() -> Iterator[System]:
    import regrow

    with (
        regrow.LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=THREADS_PER_WORKER,
            dashboard_address="127.0.0.1:0",
            log_level="ERROR",
        ) as cluster,
        regrow.Client(cluster) as client,
    ):
        system = _ready(System("regrow", client, regrow.wait))
        assert cluster.scheduler_proc is not None
        system.scheduler = psutil.Process(cluster.scheduler_proc.pid)  # type: ignore[attr-defined]
        yield system


def _cpu(driver: Any) -> float:
    """CPU seconds used so far by the browser: chromedriver's children (chromium's
    processes), alive ones only."""
    total = 0.0
    service = driver.service.process
    for proc in psutil.Process(service.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def _busy(system: System) -> float:
    """The scheduler process's CPU seconds so far."""
    t = system.scheduler.cpu_times()  # type: ignore[attr-defined]
    return float(t.user + t.system)


def _page_live(driver: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (driver.execute_script("return (window.regrowDashboard||{}).messages||0") or 0) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("the dashboard page did not receive its live feed")
        time.sleep(0.05)


def _settle() -> None:
    gc.collect()
    time.sleep(0.25)


def run(systems: Sequence[str], reps: int) -> Report:
    if "regrow" not in systems:
        return Report()
    from regrow.testing import browser_missing, headless_browser

    rows = {k: Row(name, unit, unit not in ("s", "us")) for k, (name, unit) in ROWS.items()}
    for key in ("submit-ratio", "map-ratio", "submit-feed-ratio", "map-feed-ratio"):
        rows[key].target = at_least(0.95, ">= 0.95 (costs <= 5%)")
    report = Report(rows=list(rows.values()))
    why = browser_missing()
    if why is not None:
        for row in rows.values():
            row.errors["regrow"] = f"SKIPPED: {why}"
        return report

    def sample(key: str, value: float) -> None:
        rows[key].samples.setdefault("regrow", []).append(value)

    with start_regrow() as system, headless_browser() as driver:
        link = system.client.dashboard_link
        check(link is not None, "the cluster serves no dashboard")
        for rep in range(reps):
            rates: dict[tuple[str, str], float] = {}
            for mode in MODES if rep % 2 == 0 else tuple(reversed(MODES)):
                driver.get(link + "#status" if mode == "open" else "about:blank")
                feed = FeedReader(link) if mode == "feed" else None
                if mode == "open":
                    _page_live(driver)
                cpu = _cpu(driver)
                for name, workload in (("submit", submit_loop), ("map", map_tasks)):
                    _settle()
                    before = _busy(system)
                    with time_limit(REP_TIMEOUT, f"{name}, {mode}"):
                        rates[(name, mode)] = workload(system)
                    n = N_SUBMIT if name == "submit" else N_MAP
                    sample(f"{name}-{mode}-cpu", (_busy(system) - before) / n * 1e6)
                if mode == "open":
                    sample("browser-cpu", _cpu(driver) - cpu)
                if feed is not None:
                    sample("feed-cpu", feed.close())
            for name in ("submit", "map"):
                closed = rates[(name, "closed")]
                fed, opened = rates[(name, "feed")], rates[(name, "open")]
                sample(f"{name}-closed", closed)
                sample(f"{name}-feed", fed)
                sample(f"{name}-open", opened)
                sample(f"{name}-feed-ratio", fed / closed)
                sample(f"{name}-ratio", opened / closed)
                print(
                    f"    rep {rep + 1} {name}: {closed:,.0f} tasks/s closed, {fed:,.0f} feed "
                    f"({fed / closed:.3f}), {opened:,.0f} page ({opened / closed:.3f})",
                    flush=True,
                )
    for row in rows.values():
        _progress("regrow", row)
    return report


if __name__ == "__main__":
    main("dashboard", run)
