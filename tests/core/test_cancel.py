"""KeysCancelled: a client gives up on keys (and everything depending on them)."""

from __future__ import annotations

import pytest

from regrow.core import commands as cmd

from .core_sim import Harness, chain, computes, freed, of_type, reported_keys, reports, spec


def test_cancel_processing_task() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    out = h.cancel("cl", "x")
    assert freed(out) == {("w1", "x")}
    assert reports(out, cmd.ReportCancelled) == [cmd.ReportCancelled(client="cl", key="x")]
    assert h.state.tasks == {}
    # the late result is thrown away on the worker
    out = h.finish("x", worker="w1")
    assert freed(out) == {("w1", "x")}


@pytest.mark.parametrize("rerun_on", ["w1", "w2"])
def test_late_report_of_a_cancelled_run_is_not_taken_for_the_resubmitted_one(
    rerun_on: str,
) -> None:
    # The worker finishes x just as the cancel frees it; the key is submitted again and
    # runs elsewhere. The first run's report, crossing the free on the wire, must not
    # make w1 a holder: w1 drops the value when the free arrives.
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    old_run = h.run_id("x")
    h.cancel("cl", "x")
    h.add_worker("w2")
    h.submit("cl", [spec("x", workers=(rerun_on,))])
    assert h.run_id("x") != old_run
    new_worker = h.processing_on("x")
    assert new_worker == rerun_on
    for late in ("finish", "err"):
        out = getattr(h, late)("x", worker="w1", run_id=old_run)
        assert h.task_state("x") == "processing"
        assert not reports(out, cmd.ReportInMemory) and not reports(out, cmd.ReportErred)
        if new_worker != "w1":
            assert freed(out) == {("w1", "x")}
        else:
            assert not freed(out)  # that would stop the run that counts
    out = h.finish("x")
    assert reported_keys(out, cmd.ReportInMemory, "cl") == {"x"}
    assert h.state.who_has(["x"]) == {"x": [new_worker]}


def test_cancel_cancels_dependents() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a"), spec("c", "b")], wanted=["a", "c"])
    out = h.cancel("cl", "a")
    assert freed(out) == {("w1", "a")}
    assert reported_keys(out, cmd.ReportCancelled, "cl") == {"a", "c"}
    assert h.state.tasks == {}


def test_cancel_dependents_wanted_by_another_client() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("a")])
    h.submit("c2", [spec("a"), spec("b", "a")])
    out = h.cancel("c1", "a", force=True)
    assert {(r.client, r.key) for r in reports(out, cmd.ReportCancelled)} == {
        ("c1", "a"),
        ("c2", "b"),
    }
    assert h.state.tasks == {}


def test_cancel_without_force_only_drops_this_clients_want() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("x")])
    h.submit("c2", [spec("x")])
    out = h.cancel("c1", "x")
    assert reports(out, cmd.ReportCancelled) == [cmd.ReportCancelled(client="c1", key="x")]
    assert not freed(out)
    assert h.task_state("x") == "processing"
    assert {c.id for c in h.state.tasks["x"].who_wants} == {"c2"}
    out = h.finish("x")
    assert {r.client for r in reports(out, cmd.ReportInMemory)} == {"c2"}


def test_cancel_with_force_takes_it_from_everyone() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("x")])
    h.submit("c2", [spec("x")])
    out = h.cancel("c1", "x", force=True)
    assert {(r.client, r.key) for r in reports(out, cmd.ReportCancelled)} == {
        ("c1", "x"),
        ("c2", "x"),
    }
    assert freed(out) == {("w1", "x")}
    assert h.state.tasks == {}


def test_cancel_memory_and_queued_and_erred() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    h.submit("cl", [spec("m"), spec("q"), spec("e")], wanted=["m", "q", "e"])
    h.finish("m")
    h.err(h.processing("w1")[0])
    states = {k: h.task_state(k) for k in "mqe"}
    assert sorted(states.values()) == ["erred", "memory", "processing"]
    out = h.cancel("cl", "m", "q", "e")
    assert reported_keys(out, cmd.ReportCancelled) == {"m", "q", "e"}
    assert h.state.tasks == {}
    assert not h.state.workers["w1"].processing
    assert not h.state.workers["w1"].has_what


def test_cancel_a_queued_task_lets_the_next_one_run() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b"), spec("c")], wanted=["a", "b", "c"])
    assert computes(h.history) == {"a": "w1"}
    out = h.cancel("cl", "b")
    assert not of_type(out, cmd.Compute)
    out = h.finish("a")
    assert computes(out) == {"c": "w1"}
    assert h.state.info()["queued"] == 0


def test_cancel_unknown_key_is_reported() -> None:
    h = Harness()
    out = h.cancel("cl", "nope")
    assert out == [cmd.ReportCancelled(client="cl", key="nope")]


def test_cancel_keeps_shared_inputs_for_other_work() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("a"), spec("b", "a"), spec("c", "a")], wanted=["b", "c"])
    h.finish("a")
    out = h.cancel("cl", "b")
    assert freed(out) == {("w1", "b")}
    assert h.task_state("a") == "memory"
    out = h.finish("c")
    assert freed(out) == {("w1", "a")}


def test_cancel_the_root_of_a_long_chain() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", chain(2000))
    out = h.cancel("cl", "t0")
    # the wanted tip, and the key the client named
    assert reported_keys(out, cmd.ReportCancelled) == {"t0", "t1999"}
    assert freed(out) == {("w1", "t0")}
    assert h.state.tasks == {}


def test_cancel_never_sends_out_a_dependent_whose_input_it_already_freed() -> None:
    # r is in memory with results m_i = f(r) in memory; q_i = g(m_i) wait in the queue
    # behind p = h(r), which occupies the only slot. Cancelling r dooms them all: when
    # p's slot frees, no q_i may be sent out after its m_i was freed.
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    n = 8
    h.submit("cl", [spec("r")])
    h.finish("r")
    ms = [spec(f"m{i}", "r") for i in range(n)]
    h.submit("cl", [spec("r"), *ms], wanted=[m.key for m in ms])
    for i in range(n):
        h.finish(f"m{i}")
    h.submit("cl", [spec("r"), spec("p", "r")], wanted=["p"])
    qs = [spec(f"q{i}", f"m{i}") for i in range(n)]
    h.submit("cl", qs, wanted=[q.key for q in qs])
    assert h.processing("w1") == ["p"]
    out = h.cancel("cl", "r", force=True)
    for c in of_type(out, cmd.Compute):
        assert all(c.who_has.values()), c
    assert h.state.tasks == {}
    assert not h.state.workers["w1"].processing
    assert not h.state.workers["w1"].has_what


def test_cancel_of_several_keys_releases_dependents_first() -> None:
    # c = f(a, b) waits in the queue behind p. Cancelling b, p and a (in that order)
    # must not free a, then hand p's slot to c, which would need a from nobody.
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b")], wanted=["a", "b"])
    h.finish("a")
    h.finish("b")
    h.submit("cl", [spec("p")])
    h.submit("cl", [spec("a"), spec("b"), spec("c", "a", "b")], wanted=["c"])
    assert h.task_state("c") == "queued"
    out = h.cancel("cl", "b", "p", "a")
    for c in of_type(out, cmd.Compute):
        assert all(c.who_has.values()), c
    assert not of_type(out, cmd.Compute)
    assert reported_keys(out, cmd.ReportCancelled) == {"a", "b", "c", "p"}
    assert h.state.tasks == {}
