"""``regrow demo``: a word count over Python's standard library on a local cluster.

Midway it kills one worker hard (SIGKILL) and shows that the result is still
exactly the serial one: the lost worker's running tasks move to the survivor
and the results it held are recomputed from lineage.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import sysconfig
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_WORD = re.compile(r"[A-Za-z_]+")


def count_words(path: str) -> Counter[str]:
    """Words (identifiers) in one file."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return Counter(w.lower() for w in _WORD.findall(text))


def merge(a: Counter[str], b: Counter[str]) -> Counter[str]:
    out = Counter(a)
    out.update(b)
    return out


def stdlib_files(limit: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in root.rglob("*.py") if "site-packages" not in p.parts)
    return files[:limit]


def run_demo(n_workers: int = 2, max_files: int = 400, kill: bool = True) -> int:
    from regrow import Client, LocalCluster, as_completed, progress

    console = Console(stderr=False)
    files = stdlib_files(max_files)
    if not files:
        console.print("[red]no standard-library files found to count[/red]")
        return 1
    console.print(
        f"[bold]regrow demo[/bold]: counting words in {len(files)} files of Python's "
        f"standard library on {n_workers} workers"
    )
    start = time.perf_counter()
    with (
        LocalCluster(n_workers=n_workers, threads_per_worker=1, log_level="ERROR") as cluster,
        Client(cluster) as client,
    ):
        console.print(
            f"cluster up in {time.perf_counter() - start:.2f} s at {cluster.scheduler_address}"
        )
        if client.dashboard_link:
            console.print(f"dashboard: {client.dashboard_link} (the timeline shows the kill)")
        t0 = time.perf_counter()
        counts = client.map(count_words, files)
        # Pairwise tree reduction: each level's tasks depend on the level below.
        level = list(counts)
        tree = []
        while len(level) > 1:
            merged = [
                client.submit(merge, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)
            ]
            tree.extend(merged)
            level = merged + ([level[-1]] if len(level) % 2 else [])
        total = level[0]
        all_futures = counts + tree
        victim: dict[str, Any] | None = None

        def kill_one() -> None:
            # A third of the way through, SIGKILL the first worker (while the bars draw).
            nonlocal victim
            for i, _ in enumerate(as_completed(all_futures)):
                if i >= len(all_futures) * 0.3:
                    workers = client.scheduler_info()["workers"]
                    victim = next(iter(workers.values()))
                    os.kill(int(victim["pid"]), signal.SIGKILL)
                    console.print(
                        f"[yellow]killed worker {victim['name']} (pid {victim['pid']}) with "
                        f"SIGKILL after {i + 1} tasks[/yellow]"
                    )
                    return

        killer = threading.Thread(target=kill_one, name="demo-kill", daemon=True)
        if kill and n_workers > 1:
            killer.start()
        progress(all_futures, console=console)
        if killer.ident is not None:
            killer.join(timeout=60)
        result = total.result()
        elapsed = time.perf_counter() - t0
        restarted = ""
        if victim is not None:
            # The nanny notices the death and starts a fresh worker, which registers itself.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                now = client.scheduler_info()["workers"]
                fresh = [w for w in now.values() if w["nanny"] == victim["nanny"]]
                if fresh and fresh[0]["pid"] != victim["pid"]:
                    restarted = f"its nanny started a fresh worker (pid {fresh[0]['pid']})"
                    break
                time.sleep(0.05)
            else:
                restarted = "its nanny did not bring a fresh worker back within 30 s"
        info = client.scheduler_info()
        lost = client.get_events("workers")
        events = [m["text"] for _, _, m in lost if m["action"] == "worker-lost"]
    serial = Counter[str]()
    for f in files:
        serial.update(count_words(f))
    ok = result == serial
    table = Table(title="summary", show_header=False)
    table.add_row("files", str(len(files)))
    table.add_row("tasks", f"{len(all_futures)} ({len(counts)} counts, {len(tree)} merges)")
    table.add_row("words", f"{sum(result.values()):,} ({len(result):,} distinct)")
    table.add_row("top words", ", ".join(f"{w} {n}" for w, n in result.most_common(5)))
    table.add_row("time", f"{elapsed:.2f} s ({len(all_futures) / elapsed:,.0f} tasks/s)")
    c = collections.Counter(info["counts"])
    if victim is not None:
        table.add_row("worker lost", f"{victim['name']} (pid {victim['pid']}), killed with SIGKILL")
        table.add_row(
            "recovered",
            f"{c['rescheduled']} running task(s) rerouted to the surviving worker, "
            f"{c['lost']} result(s) held only by the lost worker, "
            f"{c['recomputed']} of them recomputed from lineage",
        )
        table.add_row("nanny", restarted)
        for message in events:
            table.add_row("scheduler said", message)
    table.add_row("workers now", str(len(info["workers"])))
    table.add_row("same as serial run", "[green]yes[/green]" if ok else "[red]NO[/red]")
    console.print(table)
    return 0 if ok else 1
