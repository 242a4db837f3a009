"""The basic life of a task: submit, compute, report, release, forget."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, chain, computes, freed, of_type, reported_keys, reports, spec


def test_submit_compute_report_release_forget() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit("c", [spec("x")])
    [compute] = of_type(out, cmd.Compute)
    assert compute.worker == "w1"
    assert compute.key == "x"
    assert compute.run_spec == ("run", "x")
    assert compute.who_has == {}
    assert h.task_state("x") == "processing"

    out = h.finish("x", nbytes=123)
    assert out == [cmd.ReportInMemory(client="c", key="x", type_name="int", nbytes=123)]
    assert h.task_state("x") == "memory"
    assert h.holders("x") == {"w1"}
    assert h.state.workers["w1"].nbytes == 123

    out = h.release("c", "x")
    assert out == [cmd.FreeKeys(worker="w1", keys=("x",))]
    assert h.state.tasks == {}
    assert h.state.workers["w1"].nbytes == 0
    assert not h.state.workers["w1"].has_what


def test_task_waits_for_a_worker() -> None:
    h = Harness()
    out = h.submit("c", [spec("x")])
    assert out == []
    assert h.task_state("x") == "queued"
    out = h.add_worker("w1")
    assert computes(out) == {"x": "w1"}


def test_dependency_inputs_are_described_in_compute() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c", [spec("a"), spec("b", "a")])
    assert h.task_state("b") == "waiting"
    out = h.finish("a", nbytes=50)
    [compute] = of_type(out, cmd.Compute)
    assert compute.key == "b"
    assert compute.who_has == {"a": ["w1"]}
    assert compute.nbytes == {"a": 50}
    # 'a' is not wanted by the client: no report for it
    assert not reports(out, cmd.ReportInMemory)


def test_release_before_compute_finishes_frees_the_worker() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c", [spec("x")])
    out = h.release("c", "x")
    assert freed(out) == {("w1", "x")}
    assert h.state.tasks == {}
    # a late result for a forgotten key is dropped on the worker
    out = h.finish("x", worker="w1")
    assert out == [cmd.FreeKeys(worker="w1", keys=("x",))]


def test_release_of_waiting_graph_forgets_everything() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c", [spec("a"), spec("b", "a"), spec("c", "b")])
    out = h.release("c", "c")
    assert freed(out) == {("w1", "a")}
    assert h.state.tasks == {}


def test_chain_of_1000_completes_step_by_step() -> None:
    h = Harness()
    h.add_worker("w1")
    n = 1000
    out = h.submit("c", chain(n))
    assert computes(out) == {"t0": "w1"}
    for i in range(n - 1):
        out = h.finish(f"t{i}")
        assert computes(out) == {f"t{i + 1}": "w1"}
        # the input is freed as soon as its only dependent finished
        if i > 0:
            assert freed(out) == {("w1", f"t{i - 1}")}
    out = h.finish(f"t{n - 1}")
    assert reported_keys(out, cmd.ReportInMemory, "c") == {f"t{n - 1}"}
    assert h.state.workers["w1"].has_what == {h.state.tasks[f"t{n - 1}"]}
    h.release("c", f"t{n - 1}")
    assert h.state.tasks == {}


def test_release_of_a_long_waiting_chain_does_not_recurse() -> None:
    h = Harness()
    h.add_worker("w1")
    n = 3000
    h.submit("c", chain(n))
    out = h.release("c", f"t{n - 1}")
    assert freed(out) == {("w1", "t0")}
    assert h.state.tasks == {}


def test_disconnect_of_a_client_with_a_long_waiting_chain() -> None:
    h = Harness()
    h.add_worker("w1")
    n = 3000
    h.submit("c", chain(n))
    h.handle(ev.ClientDisconnected(client="c"))
    assert h.state.tasks == {}
    assert h.state.clients == {}


def test_pure_key_shared_between_clients() -> None:
    h = Harness()
    h.add_worker("w1")
    out1 = h.submit("c1", [spec("x")])
    out2 = h.submit("c2", [spec("x")])
    assert len(of_type(out1 + out2, cmd.Compute)) == 1
    out = h.finish("x")
    assert reported_keys(out, cmd.ReportInMemory) == {"x"}
    assert {r.client for r in reports(out, cmd.ReportInMemory)} == {"c1", "c2"}
    # one client lets go: the other keeps it
    assert h.release("c1", "x") == []
    assert h.task_state("x") == "memory"
    assert h.release("c2", "x") == [cmd.FreeKeys(worker="w1", keys=("x",))]
    assert h.state.tasks == {}


def test_submitting_a_known_key_in_memory_reports_at_once() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("x")])
    h.finish("x", nbytes=7)
    out = h.submit("c2", [spec("x")])
    assert out == [cmd.ReportInMemory(client="c2", key="x", type_name="int", nbytes=7)]


def test_shared_dependency_between_clients() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("c1", [spec("a"), spec("b", "a")])
    h.submit("c2", [spec("a"), spec("c", "a")])
    assert len(of_type(h.history, cmd.Compute)) == 1
    out = h.finish("a")
    assert set(computes(out)) == {"b", "c"}
    out = h.finish("b")
    assert freed(out) == set()  # 'c' still needs 'a'
    out = h.finish("c")
    assert freed(out) == {("w1", "a")}


def test_keys_desired_reports_known_state_and_unknown_keys() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("x")])
    h.finish("x", nbytes=3)
    out = h.desire("c2", "x", "nope")
    assert reports(out, cmd.ReportInMemory) == [
        cmd.ReportInMemory(client="c2", key="x", type_name="int", nbytes=3)
    ]
    [lost] = reports(out, cmd.ReportErred)
    assert lost.key == "nope"
    assert lost.kind == "FutureLostError"
    # c2 now holds x too: c1 releasing it keeps it
    h.release("c1", "x")
    assert h.task_state("x") == "memory"
    # desiring again is idempotent for the wants, but re-reports
    out = h.desire("c2", "x")
    assert reported_keys(out, cmd.ReportInMemory) == {"x"}
    h.release("c2", "x")
    assert h.state.tasks == {}


def test_submission_depending_on_a_forgotten_key_errs_for_the_client() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit("c", [spec("b", "gone"), spec("d", "b")], wanted=["b", "d"])
    assert not of_type(out, cmd.Compute)
    erred = {r.key: r for r in reports(out, cmd.ReportErred, "c")}
    assert set(erred) == {"b", "d"}
    assert {r.kind for r in erred.values()} == {"FutureLostError"}
    assert {r.blame for r in erred.values()} == {"b"}
    h.release("c", "b", "d")
    assert h.state.tasks == {}


def test_submission_depending_on_a_forgotten_key_not_wanted_is_forgotten() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit("c", [spec("b", "gone"), spec("x")], wanted=["x"])
    assert computes(out) == {"x": "w1"}
    assert set(h.state.tasks) == {"x"}


def test_client_disconnect_releases_everything() -> None:
    h = Harness()
    h.add_worker("w1")
    h.handle(ev.ClientConnected(client="c"))
    h.submit("c", [spec("a"), spec("b", "a")], wanted=["a", "b"])
    h.finish("a")
    out = h.handle(ev.ClientDisconnected(client="c"))
    assert freed(out) == {("w1", "a"), ("w1", "b")}
    assert h.state.tasks == {}
    assert h.state.clients == {}
    assert not h.state.workers["w1"].processing


def test_unknown_event_type_is_rejected() -> None:
    import pytest

    h = Harness()
    with pytest.raises(TypeError):
        h.handle(ev.Event())


def test_stimulus_id_is_recorded_in_the_story_and_compute() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.handle(
        ev.TasksSubmitted(client="c", tasks=(spec("x"),), wanted=("x",), stimulus_id="sub-1")
    )
    [compute] = of_type(out, cmd.Compute)
    assert compute.stimulus_id == "sub-1"
    story = h.state.story("x")
    assert [(s, f) for _, s, f, _ in story] == [
        ("released", "waiting"),
        ("waiting", "processing"),
    ]
    assert {sid for *_, sid in story} == {"sub-1"}


def test_info_snapshot() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2, name="alice")
    h.submit("c", [spec("a"), spec("b", "a")])
    info = h.state.info()
    assert info["workers"]["w1"]["name"] == "alice"
    assert info["workers"]["w1"]["processing"] == 1
    assert info["tasks"] == {"processing": 1, "waiting": 1}
    assert info["clients"] == 1
    h.finish("a", nbytes=5)
    assert h.state.who_has(["a", "zz"]) == {"a": ["w1"], "zz": []}
    assert h.state.info()["counts"]["finished"] == 1
