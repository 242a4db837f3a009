"""Work stealing on Ticked: idle threads ask busy workers for tasks they have not started."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, computes, of_type, spec

MB = 1_000_000


def busy_and_idle(n: int = 4, **task_kwargs: object) -> Harness:
    """'busy' runs n tasks (all it could take), then 'idle' joins with nothing to do."""
    h = Harness()
    h.add_worker("busy")
    keys = [f"k{i}" for i in range(n)]
    h.submit("cl", [spec(k, **task_kwargs) for k in keys], wanted=keys)
    assert set(computes(h.history).values()) == {"busy"}
    assert h.add_worker("idle") == [cmd.AcceptWorker(worker="idle")]
    return h


def test_tick_steals_from_the_busy_worker_for_the_idle_one() -> None:
    h = busy_and_idle()
    out = h.tick()
    steals = of_type(out, cmd.Steal)
    assert len(steals) == 1  # 'idle' has one thread
    [steal] = steals
    assert steal.worker == "busy"
    assert steal.key == "k3"  # the most recently assigned: least likely to have started
    # while the request is pending, ticking again does not ask twice for the same task
    again = of_type(h.tick(), cmd.Steal)
    assert all(s.key != "k3" for s in again)


def test_steal_answered_yes_moves_the_task_to_the_thief() -> None:
    h = busy_and_idle()
    [steal] = of_type(h.tick(), cmd.Steal)
    out = h.handle(ev.StealAnswered(worker="busy", key=steal.key, stolen=True))
    assert computes(out) == {steal.key: "idle"}
    assert h.processing_on(steal.key) == "idle"
    assert steal.key not in h.processing("busy")
    assert h.state.info()["counts"]["stolen"] == 1
    out = h.finish(steal.key)
    assert [r.key for r in of_type(out, cmd.ReportInMemory)] == [steal.key]


def test_steal_answered_no_keeps_the_task() -> None:
    h = busy_and_idle()
    [steal] = of_type(h.tick(), cmd.Steal)
    out = h.handle(ev.StealAnswered(worker="busy", key=steal.key, stolen=False))
    assert out == []
    assert h.processing_on(steal.key) == "busy"
    assert not h.state.tasks[steal.key].steal_pending
    # the refusal means it runs: later passes ask for other tasks, never this one again
    assert steal.key not in [s.key for s in of_type(h.tick(), cmd.Steal)]


def test_stale_steal_answers_are_ignored() -> None:
    h = busy_and_idle()
    [steal] = of_type(h.tick(), cmd.Steal)
    h.finish(steal.key)  # it finished before the answer came
    assert h.handle(ev.StealAnswered(worker="busy", key=steal.key, stolen=True)) == []
    assert h.task_state(steal.key) == "memory"
    assert h.handle(ev.StealAnswered(worker="busy", key="unknown", stolen=True)) == []
    assert h.handle(ev.StealAnswered(worker="ghost", key="k0", stolen=True)) == []
    assert h.processing_on("k0") == "busy"


def test_nothing_to_steal_when_balanced() -> None:
    h = Harness()
    h.add_worker("a")
    h.add_worker("b")
    h.submit("cl", [spec("x"), spec("y")], wanted=["x", "y"])
    assert of_type(h.tick(), cmd.Steal) == []
    h2 = Harness()
    h2.add_worker("solo")
    h2.submit("cl", [spec(f"k{i}") for i in range(3)], wanted=[f"k{i}" for i in range(3)])
    assert of_type(h2.tick(), cmd.Steal) == []  # no thief


def test_restricted_tasks_are_not_stolen() -> None:
    h = busy_and_idle(workers=("busy",))
    assert of_type(h.tick(), cmd.Steal) == []


def _behind_a_large_input() -> Harness:
    """'busy' holds a 500 MB result and 4 tasks that need it; 'idle' holds nothing."""
    h = Harness()
    h.add_worker("busy")
    h.submit("cl", [spec("d")])
    h.finish("d", nbytes=500 * MB)
    keys = [f"k{i}" for i in range(4)]
    h.submit("cl", [spec("d"), *(spec(k, "d") for k in keys)], wanted=keys)
    h.add_worker("idle")
    return h


def test_tasks_with_large_inputs_elsewhere_are_not_stolen() -> None:
    assert of_type(_behind_a_large_input().tick(), cmd.Steal) == []


def test_a_worker_that_stood_still_long_gives_up_tasks_with_large_inputs() -> None:
    """Moving 500 MB (1 s at the assumed bandwidth) is worth it once the busy worker has
    finished nothing for longer than that: a task of its holds its thread."""
    h = _behind_a_large_input()
    assert of_type(h.tick(now=0.5), cmd.Steal) == []  # still within a second
    steals = of_type(h.tick(now=1.5), cmd.Steal)
    assert [s.worker for s in steals] == ["busy"]


def test_queued_tasks_are_handed_out_instead_of_stealing() -> None:
    h = Harness(worker_saturation=1.0)
    h.add_worker("a")
    h.submit("cl", [spec("x"), spec("y")], wanted=["x", "y"])
    assert h.task_state("y") == "queued"
    out = h.tick()
    assert of_type(out, cmd.Steal) == []


def test_stolen_task_goes_back_to_the_victim_when_nobody_else_is_free() -> None:
    h = busy_and_idle()
    [steal] = of_type(h.tick(), cmd.Steal)
    h.remove_worker("idle", graceful=True)
    out = h.handle(ev.StealAnswered(worker="busy", key=steal.key, stolen=True))
    assert computes(out) == {steal.key: "busy"}


def test_several_thieves_share_the_surplus() -> None:
    h = Harness()
    h.add_worker("busy", nthreads=2)  # 8 slots
    keys = [f"k{i}" for i in range(8)]
    h.submit("cl", [spec(k) for k in keys], wanted=keys)
    h.add_worker("t1", nthreads=2)
    h.add_worker("t2", nthreads=3)
    out = h.tick()
    steals = of_type(out, cmd.Steal)
    assert {s.worker for s in steals} == {"busy"}
    assert len({s.key for s in steals}) == len(steals) == 5
    for s in steals:
        h.handle(ev.StealAnswered(worker="busy", key=s.key, stolen=True))
    per_worker = {w: len(h.processing(w)) for w in ("busy", "t1", "t2")}
    assert per_worker == {"busy": 3, "t1": 2, "t2": 3}


def test_a_task_waiting_for_an_absent_worker_does_not_stop_stealing() -> None:
    h = busy_and_idle()
    h.submit("cl", [spec("elsewhere", workers=("absent",))])
    assert h.task_state("elsewhere") == "queued"
    steals = of_type(h.tick(), cmd.Steal)
    assert [(s.worker, s.key) for s in steals] == [("busy", "k3")]


def test_paused_workers_do_not_steal() -> None:
    h = busy_and_idle()
    h.handle(ev.WorkerPaused(worker="idle", paused=True))
    assert of_type(h.tick(), cmd.Steal) == []
    h.handle(ev.WorkerPaused(worker="idle", paused=False))
    assert len(of_type(h.tick(), cmd.Steal)) == 1
