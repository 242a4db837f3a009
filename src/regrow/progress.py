"""``regrow.progress(...)``: a progress bar for futures, dask collections and pipelines.

Owns: finding the futures in what it is given (futures, lists, tuples, sets and dicts of
them, a dask collection persisted on a regrow client, a pipeline job), counting them
as they settle (through their done callbacks: no polling of the scheduler), and drawing
one bar per task group (the key's prefix, as dask groups them) and one for all, with
rich (which draws in a terminal and in Jupyter alike).
Must not: change the futures, hold them after it returns, or wait for anything but
them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from regrow.client.futures import Future
from regrow.core.queries import key_group as key_prefix


def futures_in(obj: Any) -> Iterator[Future]:
    """Every future in ``obj`` (nested lists, tuples, sets, dicts; a persisted dask
    collection's graph)."""
    if isinstance(obj, Future):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from futures_in(value)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from futures_in(item)
    elif hasattr(obj, "__dask_graph__"):
        graph = obj.__dask_graph__()
        if graph is not None:
            for value in dict(graph).values():
                if isinstance(value, Future):
                    yield value
                elif hasattr(value, "value") and isinstance(value.value, Future):
                    yield value.value  # a dask DataNode wrapping a future


class _Counts:
    """Futures settled so far, per group; fed by done callbacks from another thread."""

    def __init__(self, futures: Iterable[Future]) -> None:
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.total: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.erred: dict[str, int] = {}
        unique = {f.key: f for f in futures}
        self.left = len(unique)
        for key in unique:
            group = key_prefix(key)
            self.total[group] = self.total.get(group, 0) + 1
            self.done.setdefault(group, 0)
            self.erred.setdefault(group, 0)
        if not unique:
            self.all_done.set()
        for future in unique.values():
            future.add_done_callback(self._settled)

    def _settled(self, future: Future) -> None:
        group = key_prefix(future.key)
        failed = future.status in ("error", "cancelled", "lost")
        with self.lock:
            self.done[group] += 1
            if failed:
                self.erred[group] += 1
            self.left -= 1
            if self.left == 0:
                self.all_done.set()


def progress(
    *objs: Any,
    multi: bool = True,
    complete: bool = True,
    console: Any = None,
    refresh: float = 0.1,
) -> None:
    """Draw progress bars until every future in ``objs`` has settled (finished, erred or
    cancelled), then return. ``multi``: a bar per task group as well as the total.
    ``complete``: leave the bars drawn when done. A pipeline job draws its stages."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    jobs = [o for o in objs if hasattr(o, "show_progress") and hasattr(o, "history")]
    for job in jobs:
        job.show_progress(console=console, refresh=refresh)
    rest = [o for o in objs if not any(o is j for j in jobs)]
    futures = [f for o in rest for f in futures_in(o)]
    if rest and not futures:
        raise TypeError(
            "progress() takes futures (or lists and dicts of them), a dask collection "
            "persisted on a regrow client, or a pipeline job; found no future in "
            + ", ".join(type(o).__name__ for o in rest)
        )
    if not futures:
        return
    counts = _Counts(futures)
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[erred]}", style="red"),
        console=console or Console(),
        transient=not complete,
    )
    with bars:
        groups = sorted(counts.total) if multi and len(counts.total) > 1 else []
        ids = {g: bars.add_task(g, total=counts.total[g], erred="") for g in groups}
        total = bars.add_task("all", total=sum(counts.total.values()), erred="")

        def draw() -> None:
            with counts.lock:
                done, erred = dict(counts.done), dict(counts.erred)
            for group, task in ids.items():
                bars.update(task, completed=done[group], erred=_erred(erred[group]))
            bars.update(total, completed=sum(done.values()), erred=_erred(sum(erred.values())))

        while not counts.all_done.wait(refresh):
            draw()
        draw()


def _erred(n: int) -> str:
    return f"{n} erred" if n else ""
