"""``regrow status``: what a running cluster is doing, as a table or as JSON.

Owns: turning ``Client.scheduler_info()`` into a terminal table (workers, with their
threads, running tasks, results held and their bytes, bytes spilled, the process's
memory as its last heartbeat said, and the memory limit; then tasks by state and what
the scheduler has counted: finished, erred, recomputed, workers lost) or into JSON.
Must not: change anything in the cluster (it only asks ``scheduler_info``), or keep a
connection open longer than the command runs.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text


def _bytes(n: object) -> str:
    if not isinstance(n, int | float) or n <= 0:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def as_json(info: dict[str, Any]) -> str:
    """One line of JSON: the snapshot as the scheduler gave it."""
    return json.dumps(info, sort_keys=True, default=str)


def render(info: dict[str, Any], address: str) -> Group:
    """The snapshot as tables: one row per worker, then the tasks and the counts."""
    workers = info.get("workers", {})
    table = Table(title=f"regrow cluster at {address}: {len(workers)} worker(s)", expand=False)
    for column, justify in (
        ("name", "left"),
        ("address", "left"),
        ("status", "left"),
        ("threads", "right"),
        ("running", "right"),
        ("results", "right"),
        ("held", "right"),
        ("spilled", "right"),
        ("process", "right"),
        ("limit", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for address_, w in sorted(workers.items(), key=lambda item: str(item[1].get("name"))):
        status = str(w.get("status", ""))
        if w.get("paused"):
            status += " (paused)"
        table.add_row(
            str(w.get("name", address_)),
            address_,
            status,
            str(w.get("nthreads", "")),
            str(w.get("processing", 0)),
            str(w.get("nkeys", 0)),
            _bytes(w.get("memory")),
            _bytes(w.get("spilled")),
            _bytes(w.get("rss")),
            _bytes(w.get("memory_limit")),
        )
    tasks = info.get("tasks", {})
    states = ", ".join(f"{state} {n:,}" for state, n in sorted(tasks.items())) or "none"
    counts = info.get("counts", {})
    counted = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(counts.items()) if v)
    lines = [
        Text(f"tasks      {states}"),
        Text(f"queued     {info.get('queued', 0):,}"),
        Text(f"clients    {info.get('clients', 0)}"),
        Text(f"counted    {counted or 'nothing yet'}"),
    ]
    if info.get("suspects"):
        lines.append(Text(f"suspects   {', '.join(info['suspects'])}"))
    if info.get("retiring"):
        lines.append(Text(f"retiring   {', '.join(info['retiring'])}"))
    return Group(table, *lines)
