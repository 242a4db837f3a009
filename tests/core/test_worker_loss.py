"""Workers leave or die: running tasks move, lost results are recomputed from lineage."""

from __future__ import annotations

import pytest

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, chain, computes, freed, of_type, reported_keys, reports, spec


def assert_no_compute_points_at(commands: list[cmd.Command], dead: str) -> None:
    for c in of_type(commands, cmd.Compute):
        assert c.worker != dead, c
        for dep, holders in c.who_has.items():
            assert holders or dep in (c.inline or {}), f"{c}: nobody has input {dep!r}"
            assert dead not in holders, c


@pytest.mark.parametrize("graceful", [False, True])
def test_worker_lost_while_running_x_and_holding_y(graceful: bool) -> None:
    h = Harness()
    h.add_worker("w1")
    # y = f(a) computed on w1; a was only on w1 and is released (lineage)
    h.submit("cl", [spec("a"), spec("y", "a")], wanted=["y"])
    h.finish("a")
    h.finish("y")
    assert h.task_state("a") == "released"
    h.submit("cl", [spec("x")])
    assert h.processing_on("x") == "w1"
    h.add_worker("w2")

    out = h.remove_worker("w1", graceful=graceful)
    assert_no_compute_points_at(out, "w1")
    assert not reports(out, cmd.ReportErred)
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="y")]
    # x goes back to work (after a death it may first wait to run alone on a worker)
    assert h.task_state("x") in ("processing", "queued")
    # y waits for its input, which is recomputed (it was only on w1)
    assert h.task_state("y") == "waiting"
    assert h.task_state("a") in ("processing", "queued")
    mark = len(h.history)
    h.run_to_completion()
    after = h.history[mark:]
    assert_no_compute_points_at(after, "w1")
    assert computes(out + after) == {"x": "w2", "a": "w2", "y": "w2"}
    assert not reports(h.history, cmd.ReportErred)
    assert {h.task_state(k) for k in ("x", "y")} == {"memory"}
    assert h.holders("y") == {"w2"}
    assert reported_keys(after, cmd.ReportInMemory) == {"x", "y"}
    assert h.state.info()["counts"]["recomputed"] == 1


def test_lost_input_of_a_task_running_elsewhere() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a", workers=("w2",))])
    h.finish("a")
    assert h.processing_on("b") == "w2"
    out = h.remove_worker("w1")
    # b cannot fetch a any more: it is taken back and waits for a to be recomputed
    assert freed(out) == {("w2", "b")}
    assert h.task_state("b") == "waiting"
    assert h.task_state("a") == "queued"  # restricted to the dead w1
    assert not reports(out, cmd.ReportLost)  # nobody wants a itself
    out = h.add_worker("w1")
    assert computes(out) == {"a": "w1"}
    out = h.finish("a")
    assert computes(out) == {"b": "w2"}


def test_lost_results_recomputed_recursively_through_a_chain() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", chain(200))
    h.run_to_completion()
    h.add_worker("w2")
    out = h.remove_worker("w1")
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="t199")]
    assert computes(out) == {"t0": "w2"}
    h.run_to_completion()
    assert h.task_state("t199") == "memory"
    assert len(of_type(h.history, cmd.Compute)) == 400


def test_result_with_a_replica_is_not_recomputed() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a", workers=("w2",))], ["a", "b"])
    h.finish("a")
    h.handle(ev.ReplicasAdded(worker="w2", keys=("a",)))
    out = h.remove_worker("w1")
    assert out == []
    assert h.holders("a") == {"w2"}
    assert h.processing_on("b") == "w2"


def test_lost_data_nobody_needs_is_forgotten() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a")], ["b"])
    h.finish("a")
    h.handle(ev.ReplicasAdded(worker="w2", keys=("a",)))
    h.finish("b")
    # a is released (lineage) and b lives on some worker; lose every worker but one
    holder = next(iter(h.holders("b")))
    other = "w2" if holder == "w1" else "w1"
    h.remove_worker(other)
    assert h.task_state("b") == "memory"
    h.release("cl", "b")
    assert h.state.tasks == {}


def test_removing_unknown_or_removed_worker_is_a_no_op() -> None:
    h = Harness()
    h.add_worker("w1")
    h.remove_worker("w1")
    assert h.remove_worker("w1") == []
    assert h.remove_worker("never") == []
    assert h.state.workers == {}
    assert h.state.free == {}


def test_all_workers_lost_then_one_comes_back() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a")], ["b"])
    h.finish("a")
    out = h.remove_worker("w1", graceful=True)
    assert not of_type(out, cmd.Compute)
    assert h.task_state("a") == "queued"
    out = h.add_worker("w2")
    assert computes(out) == {"a": "w2"}
    h.run_to_completion()
    assert h.task_state("b") == "memory"


def test_stale_task_finished_from_removed_worker_is_ignored() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("x", workers=("w1", "w2"))])
    first = h.processing_on("x")
    second = "w2" if first == "w1" else "w1"
    h.remove_worker(first)
    assert h.processing_on("x") == second
    assert h.finish("x", worker=first) == []
    assert h.task_state("x") == "processing"
    out = h.finish("x", worker=second)
    assert reported_keys(out, cmd.ReportInMemory) == {"x"}
    assert h.holders("x") == {second}


def test_task_finished_for_unknown_key_frees_it() -> None:
    h = Harness()
    h.add_worker("w1")
    out = h.finish("mystery", worker="w1")
    assert out == [cmd.FreeKeys(worker="w1", keys=("mystery",))]
    assert h.state.tasks == {}
    assert not h.state.workers["w1"].has_what


def test_task_finished_for_a_waiting_task_frees_it() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a")])
    out = h.finish("b", worker="w1")
    assert out == [cmd.FreeKeys(worker="w1", keys=("b",))]
    assert h.task_state("b") == "waiting"


def test_duplicate_finish_from_another_worker_is_kept_as_a_replica() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("x", workers=("w1",))])
    h.finish("x")
    out = h.finish("x", worker="w2")
    assert out == []
    assert h.holders("x") == {"w1", "w2"}
    out = h.release("cl", "x")
    assert freed(out) == {("w1", "x"), ("w2", "x")}


def test_dependency_missing_with_no_other_holder_recomputes_it() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a", workers=("w2",))], ["a", "b"])
    h.finish("a")
    out = h.handle(ev.DependencyMissing(worker="w2", key="b", dependency="a", holders=("w1",)))
    # the scheduler believes w2: w1 no longer has a, so a is lost
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="a")]
    assert computes(out) == {"a": "w1"}
    assert h.task_state("b") == "waiting"
    assert h.state.workers["w1"].has_what == set()
    out = h.finish("a")
    assert computes(out) == {"b": "w2"}


def test_dependency_missing_with_another_holder_reschedules() -> None:
    h = Harness()
    for w in ("w1", "w2", "w3"):
        h.add_worker(w)
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a", workers=("w2",))])
    h.finish("a")
    h.handle(ev.ReplicasAdded(worker="w3", keys=("a",)))
    out = h.handle(ev.DependencyMissing(worker="w2", key="b", dependency="a", holders=("w1",)))
    [compute] = of_type(out, cmd.Compute)
    assert (compute.key, compute.worker) == ("b", "w2")
    assert compute.who_has == {"a": ["w3"]}
    assert h.holders("a") == {"w3"}
    assert not reports(out, cmd.ReportLost)


def test_dependency_missing_from_a_worker_not_running_the_task() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a", workers=("w2",))])
    h.finish("a")
    out = h.handle(ev.DependencyMissing(worker="w1", key="b", dependency="a", holders=()))
    assert out == []
    assert h.processing_on("b") == "w2"
    out = h.handle(ev.DependencyMissing(worker="w2", key="zz", dependency="yy", holders=("w1",)))
    assert out == []


def test_replicas_added() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a")])
    h.finish("a", nbytes=10)
    out = h.handle(ev.ReplicasAdded(worker="w2", keys=("a", "gone")))
    assert out == [cmd.FreeKeys(worker="w2", keys=("gone",))]
    assert h.holders("a") == {"w1", "w2"}
    assert h.state.workers["w2"].nbytes == 10
    # again: idempotent
    assert h.handle(ev.ReplicasAdded(worker="w2", keys=("a",))) == []
    assert h.state.workers["w2"].nbytes == 10
    # from a worker the scheduler does not know: ignored
    assert h.handle(ev.ReplicasAdded(worker="ghost", keys=("a",))) == []


def test_replica_of_a_task_not_in_memory_is_dropped() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a")])
    out = h.handle(ev.ReplicasAdded(worker="w2", keys=("a",)))
    assert out == [cmd.FreeKeys(worker="w2", keys=("a",))]


def test_results_lost_together_are_recomputed_without_naming_the_dead_worker() -> None:
    # Every link of a chain is wanted and in memory on w1 only. When w1 dies, no
    # recomputation may be sent off to fetch an input from w1 (which the scheduler
    # has not yet marked lost, whatever the order it looks at w1's data in).
    h = Harness()
    h.add_worker("w1")
    n = 30
    keys = [f"t{i}" for i in range(n)]
    h.submit("cl", chain(n), wanted=keys)
    h.run_to_completion()
    h.add_worker("w2")
    out = h.remove_worker("w1")
    assert_no_compute_points_at(out, "w1")
    assert computes(out) == {"t0": "w2"}
    assert not freed(out)
    assert reported_keys(out, cmd.ReportLost) == set(keys)
    assert h.state.info()["counts"]["recomputed"] == n
    h.run_to_completion()
    assert {h.task_state(k) for k in keys} == {"memory"}


def test_a_task_that_only_waited_in_the_dead_workers_queue_is_not_blamed() -> None:
    h = Harness(allowed_failures=1)
    h.add_worker("a", nthreads=1)
    h.submit("c", [spec("run"), spec("queued")], wanted=["run", "queued"])
    h.handle(ev.TasksStarted(worker="a", keys=("run",)))  # only one thread: one began
    h.add_worker("b")
    out = h.remove_worker("a", started=False)
    erred = {c.key for c in out if isinstance(c, cmd.ReportErred)}
    assert erred == {"run"}  # the poison suspect, at its first death
    assert h.state.tasks["queued"].suspicious == 0


def _oom(h: Harness, address: str) -> list[cmd.Command]:
    reason = "memory limit: 300 MiB used, above 95% of its 286 MiB"
    return h.handle(
        ev.WorkerDeathReported(
            worker=address, reason=reason, out_of_memory=True, stimulus_id=h.sid()
        )
    )


def test_a_result_lost_to_memory_deaths_errs_instead_of_looping() -> None:
    # Its holder dies of its memory limit with no task running, twice: holding (or
    # sending) it is what kills, so a third computation would only kill again.
    h = Harness(allowed_failures=2)
    h.add_worker("w1")
    h.submit("cl", [spec("x"), spec("y", "x")], wanted=["x", "y"])
    h.finish("x")
    h.finish("y")
    h.add_worker("w2")
    out = _oom(h, "w1")
    assert reports(out, cmd.ReportLost, "cl")  # recomputed, once
    assert h.processing_on("x") == "w2"
    h.finish("x")
    h.finish("y")
    out = _oom(h, "w2")
    erred = reports(out, cmd.ReportErred, "cl")
    assert {r.key for r in erred} == {"x", "y"}
    assert h.task_state("x") == "erred"
    error = h.state.tasks["x"].error
    assert error is not None and error.kind == "KilledWorker"
    assert "lost 2 times" in error.text and "memory limit" in error.text, error.text
    assert "286 MiB" in error.text
    assert not computes(out)  # nothing is computed again


def test_a_memory_death_with_a_task_running_blames_the_task_not_the_results() -> None:
    h = Harness(allowed_failures=2)
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("x", workers=("w1",))], wanted=["x"])
    h.finish("x")
    h.submit("cl", [spec("hog", workers=("w1",))], wanted=["hog"])
    h.handle(ev.TasksStarted(worker="w1", keys=("hog",)))
    _oom(h, "w1")
    assert h.state.tasks["x"].memory_losses == 0
    assert h.state.tasks["hog"].suspicious == 1
