"""``regrow.progress``: bars per task group for futures, dask collections and pipelines."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import dask.bag as db
import pytest
from rich.console import Console

from regrow import Client, progress
from regrow.progress import key_prefix

from .tasks import Gate, gated, inc


def drawn(*objs: object) -> str:
    out = io.StringIO()
    progress(*objs, console=Console(file=out, width=100))
    return out.getvalue()


def test_key_prefix_groups_as_dask_does() -> None:
    assert key_prefix("inc-3fa8b1c2d4e5f60718293a4b5c6d7e8f") == "inc"
    assert key_prefix("sum-aggregate-0a1b2c3d4e5f") == "sum-aggregate"
    assert key_prefix("('from_sequence-ab12cd34ef56ab12', 3)") == "from_sequence"
    assert key_prefix("gated_double-0123456789abcdef") == "gated_double"
    assert key_prefix("x") == "x"


def test_a_bar_per_group_until_every_future_settles(client: Client) -> None:
    incs = client.map(inc, range(10))
    bag = client.persist(db.from_sequence(range(6), npartitions=3).map(inc))
    broken = client.submit(inc, "not a number")
    text = drawn(incs, bag, {"broken": broken})
    assert all(f.done() for f in incs) and broken.done()
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "11/11" in lines["inc"] and "1 erred" in lines["inc"]  # 10, and the broken one
    (bag_group,) = set(lines) - {"inc", "all"}
    assert "3/3" in lines[bag_group] and "erred" not in lines[bag_group]
    assert "14/14" in lines["all"] and "1 erred" in lines["all"]


def test_it_waits_for_running_tasks(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    future = client.submit(gated, 1, *gate.args, pure=False)
    gate.wait_started()
    finished = threading.Event()

    def draw() -> None:
        drawn(future)
        finished.set()

    thread = threading.Thread(target=draw)
    thread.start()
    assert not finished.wait(0.3), "progress returned before its future settled"
    gate.open()
    thread.join(timeout=30)
    assert finished.is_set() and future.done()


def test_nothing_to_follow_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="found no future in int, str"):
        progress(1, "x")
    progress()  # nothing at all: returns at once
