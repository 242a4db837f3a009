"""Reference counting: results are freed as soon as nobody needs them; lineage stays."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, chain, computes, freed, reported_keys, spec


def test_intermediate_freed_when_its_last_dependent_finishes() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c")])
    out = h.finish("a")
    assert set(computes(out)) == {"b", "c"}
    out = h.finish("b")
    assert freed(out) == set()  # c still needs a
    out = h.finish("c")
    assert freed(out) == {("w1", "a")}
    assert h.task_state("a") == "released"
    out = h.finish("d")
    assert freed(out) == {("w1", "b"), ("w1", "c")}
    assert reported_keys(out, cmd.ReportInMemory) == {"d"}
    # lineage kept: a, b, c are released but known, as d is in memory
    assert {k: h.task_state(k) for k in "abcd"} == {
        "a": "released",
        "b": "released",
        "c": "released",
        "d": "memory",
    }
    assert {ts.key for ts in h.state.workers["w1"].has_what} == {"d"}
    out = h.release("cl", "d")
    assert freed(out) == {("w1", "d")}
    assert h.state.tasks == {}


def test_wanted_intermediate_is_kept() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a")], wanted=["a", "b"])
    h.finish("a")
    out = h.finish("b")
    assert freed(out) == set()
    out = h.release("cl", "a")
    assert freed(out) == {("w1", "a")}
    assert h.task_state("a") == "released"  # lineage of b
    out = h.release("cl", "b")
    assert freed(out) == {("w1", "b")}
    assert h.state.tasks == {}


def test_intermediate_released_while_dependent_still_waits_is_kept() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a")], wanted=["a", "b"])
    h.finish("a")
    # the client drops a; b still runs on it
    out = h.release("cl", "a")
    assert freed(out) == set()
    assert h.task_state("a") == "memory"
    out = h.finish("b")
    assert freed(out) == {("w1", "a")}


def test_input_replicas_are_freed_everywhere() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a"), spec("b", "a", workers=("w2",))])
    h.finish("a", worker="w1")
    assert h.processing_on("b") == "w2"
    # w2 fetched a to run b
    h.handle(ev.ReplicasAdded(worker="w2", keys=("a",)))
    assert h.holders("a") == {"w1", "w2"}
    out = h.finish("b")
    assert freed(out) == {("w1", "a"), ("w2", "a")}
    assert h.state.workers["w1"].nbytes == 0
    assert h.state.workers["w2"].nbytes == 8


def test_released_chain_lineage_forgotten_with_the_tip() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", chain(50))
    h.run_to_completion()
    assert len(h.state.tasks) == 50
    assert sum(ts.state == "released" for ts in h.state.tasks.values()) == 49
    h.release("cl", "t49")
    assert h.state.tasks == {}


def test_lineage_shared_by_two_tips() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a"), spec("c", "a")], wanted=["b", "c"])
    h.run_to_completion()
    assert h.task_state("a") == "released"
    h.release("cl", "b")
    assert set(h.state.tasks) == {"a", "c"}
    h.release("cl", "c")
    assert h.state.tasks == {}


def test_release_of_a_dependent_frees_its_unneeded_inputs() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("a"), spec("b"), spec("c", "a", "b")])
    h.finish("a")
    out = h.release("cl", "c")
    # a is freed on the worker, b (still running) is cancelled there
    assert freed(out) == {("w1", "a"), ("w1", "b")}
    assert h.state.tasks == {}
    assert not h.state.workers["w1"].processing
