"""``secede()`` in both cores: a task that waits on other tasks gives its place up.

The worker core counts a seceded run in none of its threads (the next ready task starts)
and tells the scheduler, whose core then counts it in none of the worker's slots. Stale
news (a run that already ended, or moved) changes nothing."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import worker_events as wev
from regrow.core import worker_instructions as ins
from regrow.core.worker_state import EXECUTING

from .core_sim import Harness, spec
from .worker_sim import WorkerSim, compute, of_type


def computes(out: list[cmd.Command]) -> list[str]:
    return [c.key for c in out if isinstance(c, cmd.Compute)]


# ------------------------------------------------------------------ scheduler


def test_a_seceded_task_frees_its_slot_for_a_queued_task() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1", nthreads=1)
    h.submit("c", [spec("a"), spec("b"), spec("c")], wanted=["a", "b", "c"])
    assert h.processing_on("a") == "w1"
    assert h.task_state("b") == "queued" and h.task_state("c") == "queued"
    out = h.handle(ev.TaskSeceded(worker="w1", key="a", run_id=h.run_id("a")))
    # One slot, now free: the best queued task goes there; "a" still runs on w1.
    assert computes(out) == ["b"]
    assert h.task_state("a") == "processing" and h.task_state("c") == "queued"
    ws = h.state.workers["w1"]
    assert {t.key for t in ws.slotless} == {"a"}
    # It ends as any task does, and leaves the long-running set.
    h.finish("a")
    assert not ws.slotless and h.task_state("a") == "memory"


def test_stale_secede_news_changes_nothing() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1", nthreads=1)
    h.submit("c", [spec("a"), spec("b")], wanted=["a", "b"])
    run = h.run_id("a")
    assert h.handle(ev.TaskSeceded(worker="w1", key="a", run_id=run + 1)) == []
    assert h.handle(ev.TaskSeceded(worker="w2", key="a", run_id=run)) == []
    assert h.handle(ev.TaskSeceded(worker="w1", key="nope", run_id=1)) == []
    h.finish("a")
    h.handle(ev.TaskSeceded(worker="w1", key="a", run_id=run))
    assert not h.state.workers["w1"].slotless


def test_a_seceded_task_on_a_dead_worker_is_rescheduled() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("w1", nthreads=1)
    h.add_worker("w2", nthreads=1)
    h.submit("c", [spec("a")], wanted=["a"])
    where = h.processing_on("a")
    h.handle(ev.TaskSeceded(worker=where, key="a", run_id=h.run_id("a")))
    h.remove_worker(where)
    other = "w2" if where == "w1" else "w1"
    assert h.processing_on("a") == other
    assert not any(ws.slotless for ws in h.state.workers.values())


# --------------------------------------------------------------------- worker


def test_a_seceded_run_gives_its_place_to_the_next_ready_task() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(compute("slow", run_id=7, priority=(0,)), compute("next", priority=(1,)))
    [run] = [x for x in w.executing.values() if x.key == "slow"]
    assert w.state.in_threads == 1
    out = w.handle(wev.TaskSeceded(key="slow", attempt=run.attempt))
    assert ins.SendLongRunning(key="slow", run_id=7) in out
    assert [x.key for x in of_type(out, ins.Execute)] == ["next"]
    assert w.state.in_threads == 1  # "next"; "slow" runs on, counted nowhere
    # Seceding twice, or a stale attempt, does nothing.
    assert w.handle(wev.TaskSeceded(key="slow", attempt=run.attempt)) == []
    assert w.handle(wev.TaskSeceded(key="slow", attempt=run.attempt + 9)) == []
    # It ends: nothing to give back.
    w.succeed("slow")
    assert w.state.in_threads == 1
    w.succeed("next")
    assert w.state.in_threads == 0


def test_a_rejoined_run_counts_again() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(compute("slow", priority=(0,)))
    [run] = list(w.executing.values())
    w.handle(wev.TaskSeceded(key="slow", attempt=run.attempt))
    assert w.state.in_threads == 0
    w.handle(wev.TaskRejoined(key="slow", attempt=run.attempt))
    assert w.state.in_threads == 1
    assert w.state.tasks["slow"].state == EXECUTING
    # Rejoining twice counts once.
    w.handle(wev.TaskRejoined(key="slow", attempt=run.attempt))
    assert w.state.in_threads == 1
    w.succeed("slow")
    assert w.state.in_threads == 0


def test_a_seceded_run_orphaned_by_a_lost_scheduler_is_counted_once() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(compute("slow"))
    [run] = list(w.executing.values())
    w.handle(wev.TaskSeceded(key="slow", attempt=run.attempt))
    w.handle(wev.SchedulerLost())
    w.succeed("slow")
    assert w.state.in_threads == 0
