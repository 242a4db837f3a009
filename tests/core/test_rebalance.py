"""``core.rebalance``: results move from a worker holding more than its share to one
holding less, as a copy and then a drop, and nothing is recomputed."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, spec


def held(h: Harness, worker: str) -> set[str]:
    return {ts.key for ts in h.state.workers[worker].has_what}


def test_moves_are_copies_then_drops() -> None:
    h = Harness()
    h.add_worker("a", nthreads=1)
    h.add_worker("b", nthreads=1)
    keys = [f"x{i}" for i in range(6)]
    h.submit("c", [spec(k, workers=("a",)) for k in keys], wanted=keys)
    for k in keys:
        h.finish(k, nbytes=100)
    assert held(h, "a") == set(keys) and not held(h, "b")
    out = h.handle(ev.RebalanceRequested())
    [order] = [c for c in out if isinstance(c, cmd.AcquireReplicas)]
    assert order.worker == "b" and all(v == ["a"] for v in order.who_has.values())
    moved = sorted(order.who_has)
    assert len(moved) == 3
    # Nothing dropped before the copies exist.
    assert held(h, "a") == set(keys)
    out = h.handle(ev.ReplicasAdded(worker="b", keys=tuple(moved)))
    frees = [c for c in out if isinstance(c, cmd.FreeKeys)]
    assert {k for c in frees for k in c.keys} == set(moved) and {c.worker for c in frees} == {"a"}
    assert held(h, "b") == set(moved) and held(h, "a") == set(keys) - set(moved)
    assert h.state.counts["recomputed"] == 0 and not h.state.rebalancing


def test_a_copy_that_never_comes_leaves_the_result_where_it_was() -> None:
    h = Harness()
    h.add_worker("a", nthreads=1)
    h.add_worker("b", nthreads=1)
    h.submit("c", [spec("x", workers=("a",)), spec("y", workers=("a",))], wanted=["x", "y"])
    h.finish("x", nbytes=100)
    h.finish("y", nbytes=100)
    h.handle(ev.RebalanceRequested())
    h.remove_worker("b")
    assert held(h, "a") == {"x", "y"}
    assert h.task_state("x") == "memory" and h.task_state("y") == "memory"
