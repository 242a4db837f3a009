"""Errors: propagation to dependents, retries, poison tasks, lost scattered data."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, chain, computes, freed, of_type, reported_keys, reports, spec


def diamond() -> list[ev.TaskSpec]:
    return [spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c")]


def test_diamond_error_blames_the_root_for_every_dependent() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", diamond(), wanted=["a", "b", "c", "d"])
    out = h.err("a", exception=b"ZeroDivisionError-pickled")
    erred = {r.key: r for r in reports(out, cmd.ReportErred, "cl")}
    assert set(erred) == {"a", "b", "c", "d"}
    for r in erred.values():
        assert r.blame == "a"
        assert r.exception == b"ZeroDivisionError-pickled"
        assert r.traceback == b"tb-a"
        assert r.text == "a failed"
        assert r.kind == ""
    # one shared error object, not a copy per task
    errors = {id(h.state.tasks[k].error) for k in "abcd"}
    assert len(errors) == 1
    assert {h.task_state(k) for k in "abcd"} == {"erred"}
    assert not of_type(out, cmd.Compute)
    # the worker carries on
    assert not h.state.workers["w1"].processing
    out = h.submit("cl", [spec("ok")])
    assert computes(out) == {"ok": "w1"}
    out = h.finish("ok")
    assert reported_keys(out, cmd.ReportInMemory) == {"ok"}


def test_diamond_error_reported_only_for_wanted_keys() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", diamond(), wanted=["d"])
    out = h.err("a")
    assert [(r.key, r.blame) for r in reports(out, cmd.ReportErred)] == [("d", "a")]
    # releasing the only wanted key forgets the whole erred graph
    h.release("cl", "d")
    assert h.state.tasks == {}


def test_error_in_one_branch_releases_the_other_branch() -> None:
    # d needs b and c; c errs while b is still running: b is not needed any more.
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("b"), spec("c"), spec("d", "b", "c")], wanted=["d"])
    assert set(computes(h.history)) == {"b", "c"}
    out = h.err("c")
    assert reported_keys(out, cmd.ReportErred, "cl") == {"d"}
    assert freed(out) == {("w1", "b")}
    h.release("cl", "d")
    assert h.state.tasks == {}


def test_error_in_one_branch_while_the_other_is_in_memory() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("b"), spec("c"), spec("d", "b", "c")], wanted=["d"])
    h.finish("b")
    out = h.err("c")
    assert freed(out) == {("w1", "b")}
    assert h.task_state("b") == "released"


def test_dependent_submitted_after_the_error_errs_at_once() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a")])
    h.err("a", exception=b"E")
    out = h.submit("cl", [spec("a"), spec("z", "a")], wanted=["z"])
    [r] = reports(out, cmd.ReportErred)
    assert (r.key, r.blame, r.exception) == ("z", "a", b"E")
    assert not of_type(out, cmd.Compute)


def test_dependent_of_an_erred_and_a_lineage_task_does_not_compute_the_lineage() -> None:
    # 'x' is released but kept for lineage (its dependent 'y' is in memory). A new task
    # needs both 'x' and the erred 'e': it errs, and 'x' must not be recomputed for it.
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("x"), spec("y", "x"), spec("e")], wanted=["y", "e"])
    h.finish("x")
    h.finish("y")
    h.err("e")
    assert h.task_state("x") == "released"
    out = h.submit("cl", [spec("b", "x", "e")], wanted=["b"])
    assert reported_keys(out, cmd.ReportErred, "cl") == {"b"}
    assert not of_type(out, cmd.Compute)
    assert h.task_state("x") == "released"


def test_dependent_of_an_erred_task_and_a_fresh_branch_does_not_compute_the_branch() -> None:
    h = Harness()
    h.add_worker("w1", nthreads=2)
    h.submit("cl", [spec("e")])
    h.err("e")
    # 'p' and 'q' are new; 'd' needs 'e' through 'p': the whole submission is doomed.
    tasks = [spec("e"), spec("p", "e"), spec("q"), spec("d", "p", "q")]
    out = h.submit("cl", tasks, wanted=["d"])
    assert reported_keys(out, cmd.ReportErred, "cl") == {"d"}
    # 'q' may have been sent before 'p' was found doomed; then it is taken back at once
    assert {("w1", k) for k in computes(out)} == freed(out) <= {("w1", "q")}
    assert not h.state.workers["w1"].processing
    h.release("cl", "d", "e")
    assert h.state.tasks == {}


def test_chain_of_1000_errs_from_the_first_task_without_recursion() -> None:
    h = Harness()
    h.add_worker("w1")
    n = 1000
    keys = [f"t{i}" for i in range(n)]
    h.submit("cl", chain(n), wanted=keys)
    out = h.err("t0", exception=b"boom")
    erred = reports(out, cmd.ReportErred, "cl")
    assert {r.key for r in erred} == set(keys)
    assert {(r.blame, r.exception) for r in erred} == {("t0", b"boom")}
    assert {h.task_state(k) for k in keys} == {"erred"}
    h.release("cl", *keys)
    assert h.state.tasks == {}


def test_chain_of_1000_errs_midway_and_only_the_tip_is_wanted() -> None:
    h = Harness()
    h.add_worker("w1")
    n = 1000
    h.submit("cl", chain(n))
    for i in range(500):
        h.finish(f"t{i}")
    out = h.err("t500")
    [r] = reports(out, cmd.ReportErred)
    assert (r.key, r.blame) == (f"t{n - 1}", "t500")
    assert freed(out) == {("w1", "t499")}
    h.release("cl", f"t{n - 1}")
    assert h.state.tasks == {}


def test_retries_recompute_then_err() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.submit("cl", [spec("x", retries=2)])
    assert len(of_type(out, cmd.Compute)) == 1
    for _ in range(2):
        out = h.err("x")
        assert computes(out) == {"x": "w1"}
        assert not reports(out, cmd.ReportErred)
    out = h.err("x", exception=b"third")
    assert not of_type(out, cmd.Compute)
    [r] = reports(out, cmd.ReportErred)
    assert (r.key, r.exception) == ("x", b"third")
    assert h.task_state("x") == "erred"


def test_retry_that_succeeds() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("x", "a", retries=1)])
    h.finish("a")
    out = h.err("x")
    [compute] = of_type(out, cmd.Compute)
    assert compute.who_has == {"a": ["w1"]}
    out = h.finish("x")
    assert reported_keys(out, cmd.ReportInMemory) == {"x"}
    assert not reports(h.history, cmd.ReportErred)


def test_error_reported_again_to_a_late_client() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("x")])
    h.err("x", exception=b"E")
    out = h.submit("c2", [spec("x")])
    [r] = reports(out, cmd.ReportErred)
    assert (r.client, r.key, r.exception) == ("c2", "x", b"E")
    out = h.desire("c2", "x")
    assert reported_keys(out, cmd.ReportErred, "c2") == {"x"}


def test_stale_error_from_another_worker_state_is_ignored() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    h.finish("x")
    # an error for a key in memory, or an unknown key, or from an unknown worker
    assert h.err("x", worker="w1") == []
    assert h.err("nope", worker="w1") == []
    assert h.err("x", worker="ghost") == []
    assert h.task_state("x") == "memory"


def test_killed_worker_after_allowed_failures_deaths() -> None:
    h = Harness(allowed_failures=3)
    for i in range(5):
        h.add_worker(f"w{i}")
    h.submit("cl", [spec("x"), spec("y", "x")], wanted=["y"])
    dead: list[str] = []
    for _ in range(h.state.allowed_failures - 1):
        worker = h.processing_on("x")
        dead.append(worker)
        out = h.remove_worker(worker)
        assert not reports(out, cmd.ReportErred)
        assert h.task_state("x") == "processing"
        assert h.processing_on("x") not in dead
    worker = h.processing_on("x")
    dead.append(worker)
    out = h.remove_worker(worker)
    erred = {r.key: r for r in reports(out, cmd.ReportErred)}
    assert set(erred) == {"y"}
    r = erred["y"]
    assert r.kind == "KilledWorker"
    assert r.blame == "x"
    assert worker in r.workers
    assert h.task_state("x") == "erred"
    assert h.task_state("y") == "erred"
    assert not of_type(out, cmd.Compute)
    # the surviving workers are fine
    out = h.submit("cl", [spec("z")])
    assert len(computes(out)) == 1


def test_graceful_removals_do_not_count_as_failures() -> None:
    h = Harness(allowed_failures=1)
    for i in range(6):
        h.add_worker(f"w{i}")
    h.submit("cl", [spec("x")])
    for _ in range(5):
        out = h.remove_worker(h.processing_on("x"), graceful=True)
        assert not reports(out, cmd.ReportErred)
        assert h.task_state("x") == "processing"
    out = h.finish("x")
    assert reported_keys(out, cmd.ReportInMemory) == {"x"}


def test_finishing_clears_suspicion() -> None:
    h = Harness(allowed_failures=2)
    for i in range(4):
        h.add_worker(f"w{i}")
    h.submit("cl", [spec("x")])
    h.remove_worker(h.processing_on("x"))
    h.finish("x")
    assert h.state.tasks["x"].suspicious == 0
    # lost later: one more death does not make it a poison task
    h.remove_worker(next(iter(h.holders("x"))))
    assert h.task_state("x") == "processing"
    h.remove_worker(h.processing_on("x"))
    assert h.task_state("x") == "processing"


def test_scattered_data_lost_with_its_only_worker() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    item = ev.ScatteredKey(key="s", nbytes=100, type_name="bytes", workers=("w1",))
    out = h.handle(ev.DataScattered(client="cl", keys=(item,)))
    assert out == [cmd.ReportInMemory(client="cl", key="s", type_name="bytes", nbytes=100)]
    h.submit("cl", [spec("a", "s"), spec("b", "a")], wanted=["b"])
    assert h.processing_on("a") == "w1"  # the data is there
    out = h.remove_worker("w1")
    erred = {r.key: r for r in reports(out, cmd.ReportErred, "cl")}
    assert set(erred) == {"s", "b"}
    assert {r.kind for r in erred.values()} == {"LostDataError"}
    assert {r.blame for r in erred.values()} == {"s"}
    assert h.task_state("a") == "erred"
    assert not of_type(out, cmd.Compute)
    h.release("cl", "s", "b")
    assert h.state.tasks == {}


def test_scattered_data_with_a_replica_survives() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    item = ev.ScatteredKey(key="s", nbytes=100, type_name="bytes", workers=("w1", "w2"))
    h.handle(ev.DataScattered(client="cl", keys=(item,)))
    out = h.remove_worker("w1")
    assert not reports(out, cmd.ReportErred)
    assert h.holders("s") == {"w2"}


def test_scatter_to_no_live_worker_errs() -> None:
    h = Harness()
    h.add_worker("w1")
    item = ev.ScatteredKey(key="s", nbytes=1, type_name="bytes", workers=("gone",))
    out = h.handle(ev.DataScattered(client="cl", keys=(item,)))
    [r] = reports(out, cmd.ReportErred)
    assert (r.key, r.kind) == ("s", "LostDataError")
    h.release("cl", "s")
    assert h.state.tasks == {}


def test_released_scattered_data_is_freed_everywhere() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    item = ev.ScatteredKey(key="s", nbytes=1, type_name="bytes", workers=("w1", "w2"))
    h.handle(ev.DataScattered(client="cl", keys=(item,)))
    out = h.release("cl", "s")
    assert freed(out) == {("w1", "s"), ("w2", "s")}
    assert h.state.tasks == {}


def test_graceful_removal_never_kills_even_with_no_failures_allowed() -> None:
    h = Harness(allowed_failures=0)
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("x")])
    out = h.remove_worker(h.processing_on("x"), graceful=True)
    assert not reports(out, cmd.ReportErred)
    assert h.task_state("x") == "processing"
    out = h.remove_worker(h.processing_on("x"))
    [r] = reports(out, cmd.ReportErred)
    assert r.kind == "KilledWorker"
