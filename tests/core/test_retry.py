"""RetryRequested (``Future.retry``): an erred task, and the erred inputs it erred
through, are computed again; who wants them hears they are pending again."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, computes, reported_keys, reports, spec


def retry(h: Harness, client: str, *keys: str) -> list[cmd.Command]:
    return h.handle(ev.RetryRequested(client=client, keys=keys, stimulus_id=h.sid()))


def test_an_erred_task_runs_again() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    h.err("x")
    assert h.state.tasks["x"].error is not None
    out = retry(h, "cl", "x")
    assert reports(out, cmd.ReportRetried) == [cmd.ReportRetried(client="cl", key="x")]
    assert computes(out) == {"x": "w1"}
    assert h.state.tasks["x"].error is None
    out = h.finish("x")
    assert reported_keys(out, cmd.ReportInMemory, "cl") == {"x"}
    h.release("cl", "x")
    assert h.state.tasks == {}


def test_the_erred_inputs_it_erred_through_run_again_first() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("a"), spec("b", "a"), spec("c", "b")])
    h.submit("c2", [spec("b", "a")])
    h.err("a")
    assert {k: h.task_state(k) for k in "abc"} == dict.fromkeys("abc", "erred")
    out = retry(h, "c1", "c")
    # b, which c2 wants too, is pending again for both; a is wanted by nobody.
    assert {(r.client, r.key) for r in reports(out, cmd.ReportRetried)} == {
        ("c1", "c"),
        ("c2", "b"),
    }
    assert computes(out) == {"a": "w1"}
    h.run_to_completion()
    assert reported_keys(h.history, cmd.ReportInMemory, "c1") == {"c"}
    assert reported_keys(h.history, cmd.ReportInMemory, "c2") == {"b"}
    h.release("c1", "c")
    h.release("c2", "b")
    assert h.state.tasks == {}


def test_a_task_that_fails_again_errs_again() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x", retries=1)])
    h.err("x")
    h.err("x")  # its one automatic retry
    retry(h, "cl", "x")
    out = h.err("x", exception=b"again")
    [erred] = reports(out, cmd.ReportErred, "cl")
    assert erred.exception == b"again"


def test_a_key_that_did_not_err_is_reported_as_it_stands() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x"), spec("y")], wanted=["x", "y"])
    h.finish("x")
    out = retry(h, "cl", "x", "y", "gone")
    assert reported_keys(out, cmd.ReportInMemory, "cl") == {"x"}
    assert not computes(out) and not reports(out, cmd.ReportRetried)
    [unknown] = reports(out, cmd.ReportErred, "cl")
    assert unknown.key == "gone" and unknown.kind == "FutureLostError"
    h.finish("y")
    h.release("cl", "x", "y")
    assert h.state.tasks == {}


def test_a_graph_that_cannot_run_is_not_retried() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x", "missing"), spec("y", "x")], wanted=["y"])
    assert h.task_state("y") == "erred"
    out = retry(h, "cl", "y")
    assert not computes(out) and not reports(out, cmd.ReportRetried)
    assert reported_keys(out, cmd.ReportErred, "cl") == {"y"}
    assert h.task_state("x") == "erred"
    h.release("cl", "y")
    assert h.state.tasks == {}


def test_has_what_by_address_or_name() -> None:
    h = Harness()
    h.add_worker("w1", name="one")
    h.add_worker("w2", name="two")
    h.submit("cl", [spec("x", workers=("w1",)), spec("y", workers=("w2",))], wanted=["x", "y"])
    h.run_to_completion()
    assert h.state.has_what() == {"w1": ["x"], "w2": ["y"]}
    assert h.state.has_what(["two", "w1", "nope"]) == {"w2": ["y"], "w1": ["x"], "nope": []}
