"""Scripted runs of the worker core: events in, instructions out (validate=True).

Each test is a short event script for ``WorkerState``; ``WorkerSim`` plays the shell
(outcomes carry the attempt of their Execute, the holder and keys of their Gather), so
the races that once needed real processes and sleeps are replayed in microseconds.
"""

from __future__ import annotations

import pytest

from regrow.core import worker_events as ev
from regrow.core import worker_instructions as ins
from regrow.core.worker_state import (
    AHEAD,
    CANCELLED,
    ERRED,
    EXECUTING,
    LIVE,
    MEMORY,
    ORPHANED,
    READY,
    RELEASED,
    RERUN,
    SHORT_TASK,
    THREADED,
    TRANSITIONS,
    WAITING,
    InvalidTransition,
    WorkerState,
    WorkerTask,
)

from .worker_sim import WorkerSim, compute, kinds, of_type

STATES = (*sorted(LIVE), RELEASED, MEMORY, ERRED)


def state_of(w: WorkerSim, key: str) -> str:
    ts = w.state.tasks.get(key)
    return ts.state if ts is not None else RELEASED


# ------------------------------------------------------------------ ordering
def test_task_without_dependencies_runs_at_once() -> None:
    w = WorkerSim()
    out = w.handle(compute("t", run_spec="spec-t"))
    attempt = w.run_of("t").attempt
    assert out == [
        ins.SendStarted(keys=("t",)),
        ins.Execute(key="t", attempt=attempt, run_spec="spec-t"),
    ]
    out = w.succeed("t", nbytes=5, duration=0.5)
    assert out == [
        ins.StoreData(key="t", value="value", nbytes=5),
        ins.SendFinished(key="t", run_id=1, nbytes=5, type_name="str", duration=0.5),
    ]
    assert w.state.data == {"t": (5, "str")} and not w.state.tasks


def test_failure_is_reported_with_the_error() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=3))
    err = ZeroDivisionError("boom")
    out = w.fail("t", err, duration=0.25)
    assert out == [ins.SendErred(key="t", run_id=3, error=err, duration=0.25)]
    assert out[0].error is err  # type: ignore[attr-defined]
    assert not w.state.tasks and not w.state.data


def test_ready_tasks_run_by_priority() -> None:
    w = WorkerSim(nthreads=1)
    out = w.handle(
        compute("busy", priority=(0,)),
        compute("late", priority=(5,)),
        compute("soon", priority=(1,)),
    )
    assert [x.key for x in of_type(out, ins.Execute)] == ["busy"]
    assert [x.key for x in of_type(w.succeed("busy"), ins.Execute)] == ["soon"]
    assert [x.key for x in of_type(w.succeed("soon"), ins.Execute)] == ["late"]


def test_compute_for_a_key_already_held_is_finished_at_once() -> None:
    w = WorkerSim()
    w.handle(ev.DataPut(data={"k": (3, "int")}))
    assert w.handle(compute("k", run_id=4)) == [
        ins.SendFinished(key="k", run_id=4, nbytes=3, type_name="int")
    ]
    # likewise for a result computed here
    w.handle(compute("t"))
    w.succeed("t", nbytes=9)
    assert w.handle(compute("t", run_id=2)) == [
        ins.SendFinished(key="t", run_id=2, nbytes=9, type_name="str")
    ]
    assert not w.state.tasks and not w.executing


def test_compute_sent_twice_while_executing_updates_the_run_id() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    assert w.handle(compute("t", run_id=2)) == []  # no second Execute
    assert state_of(w, "t") == EXECUTING and w.state.in_threads == 1
    [finished] = of_type(w.succeed("t"), ins.SendFinished)
    assert finished.run_id == 2


def test_compute_sent_twice_while_waiting_updates_the_run_id() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}, run_id=1))
    assert w.handle(compute("t", {"d": ["h1"]}, run_id=2)) == []  # no second Gather
    w.gathered("h1")
    [finished] = of_type(w.succeed("t"), ins.SendFinished)
    assert finished.run_id == 2


def test_inline_and_held_dependencies_are_not_fetched() -> None:
    w = WorkerSim()
    w.handle(ev.DataPut(data={"held": (1, "int")}))
    out = w.handle(compute("t", {"held": ["h1"], "small": ["h2"]}, inline=("small",)))
    assert kinds(out) == ["SendStarted", "Execute"]
    assert not w.state.fetches


def test_freeing_held_data_deletes_it() -> None:
    w = WorkerSim()
    w.handle(ev.DataPut(data={"k": (1, "int")}))
    assert w.handle(ev.KeysFreed(keys=("k", "unknown"))) == [ins.DeleteData(keys=("k",))]
    assert not w.state.data


# ------------------------------------------------------------------ fetching
def test_dependency_is_fetched_then_the_task_runs() -> None:
    w = WorkerSim()
    assert w.handle(compute("t", {"d": ["h1"]})) == [ins.Gather(holder="h1", keys=("d",))]
    assert state_of(w, "t") == WAITING
    out = w.gathered("h1")
    assert kinds(out) == ["SendAddReplicas", "SendStarted", "Execute"]
    assert out[0] == ins.SendAddReplicas(keys=("d",))
    assert w.state.data == {"d": (8, "bytes")}


def test_task_freed_while_its_dependency_is_fetched() -> None:
    """The fetch finishes after the task was cancelled: the data is kept and announced,
    nothing runs."""
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}))
    assert w.handle(ev.KeysFreed(keys=("t",))) == []
    assert "t" not in w.state.tasks
    assert w.state.fetches["d"].waiters == set()
    out = w.gathered("h1")
    assert out == [ins.SendAddReplicas(keys=("d",))]
    assert w.state.data == {"d": (8, "bytes")}
    assert not w.state.tasks and not w.state.fetches and not w.executing


def test_task_freed_and_ordered_again_while_its_dependency_is_fetched() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}, run_id=1))
    w.handle(ev.KeysFreed(keys=("t",)))
    assert w.handle(compute("t", {"d": ["h1"]}, run_id=2)) == []  # the transfer serves it
    assert kinds(w.gathered("h1")) == ["SendAddReplicas", "SendStarted", "Execute"]
    [finished] = of_type(w.succeed("t"), ins.SendFinished)
    assert finished.run_id == 2


def test_dependency_is_retried_at_the_second_holder() -> None:
    w = WorkerSim()
    assert w.handle(compute("t", {"d": ["h1", "h2"]})) == [ins.Gather(holder="h1", keys=("d",))]
    assert w.gathered("h1", got=()) == [ins.Gather(holder="h2", keys=("d",))]
    out = w.gathered("h2")
    assert kinds(out) == ["SendAddReplicas", "SendStarted", "Execute"]


def test_refusal_errs_the_task_with_that_exception() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}, run_id=7))
    refusal = TypeError("cannot unpickle")
    out = w.gathered("h1", got=(), refusal=refusal)
    assert out == [ins.SendErred(key="t", run_id=7, error=refusal)]
    assert out[0].error is refusal  # type: ignore[attr-defined]
    assert not w.state.tasks and not w.state.fetches and not w.executing


def test_refusal_then_an_unreachable_holder_errs_the_task() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1", "h2"]}))
    refusal = TypeError("cannot pickle")
    assert w.gathered("h1", got=(), refusal=refusal) == [ins.Gather(holder="h2", keys=("d",))]
    [erred] = w.gathered("h2", got=())
    assert isinstance(erred, ins.SendErred) and erred.error is refusal


def test_refusal_then_a_holder_that_sends_runs_the_task() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1", "h2"]}))
    w.gathered("h1", got=(), refusal=TypeError("cannot pickle"))
    assert kinds(w.gathered("h2")) == ["SendAddReplicas", "SendStarted", "Execute"]


def test_no_holders_at_all_is_a_missing_dependency() -> None:
    w = WorkerSim()
    out = w.handle(compute("t", {"d": []}))
    assert out == [ins.SendDependencyMissing(key="t", dependency="d", holders=())]
    assert not w.state.tasks and not w.state.fetches


def test_no_holder_reachable_is_a_missing_dependency() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1", "h2"]}))
    w.gathered("h1", got=())
    out = w.gathered("h2", got=())
    assert out == [ins.SendDependencyMissing(key="t", dependency="d", holders=("h1", "h2"))]
    assert not w.state.tasks and not w.state.fetches


def test_missing_dependency_is_told_once_the_others_arrived() -> None:
    w = WorkerSim()
    out = w.handle(compute("t", {"gone": [], "d": ["h1"]}))
    assert out == [ins.Gather(holder="h1", keys=("d",))]  # nothing told yet
    out = w.gathered("h1")
    assert out == [
        ins.SendAddReplicas(keys=("d",)),
        ins.SendDependencyMissing(key="t", dependency="gone", holders=()),
    ]
    assert not w.state.tasks


def test_partial_transfer_retries_only_what_did_not_come() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"a": ["h1", "h2"], "b": ["h1", "h2"]}))
    assert w.gather_to("h1").keys == ("a", "b")
    out = w.gathered("h1", got=("a",))
    assert out == [ins.SendAddReplicas(keys=("a",)), ins.Gather(holder="h2", keys=("b",))]
    assert kinds(w.gathered("h2")) == ["SendAddReplicas", "SendStarted", "Execute"]


def test_dependency_shared_by_two_tasks_is_fetched_once() -> None:
    w = WorkerSim(nthreads=2)
    out = w.handle(compute("a", {"d": ["h1"]}), compute("b", {"d": ["h1", "h2"]}))
    assert out == [ins.Gather(holder="h1", keys=("d",))]
    # a third one while the transfer is under way
    assert w.handle(compute("c", {"d": ["h2"]})) == []
    out = w.gathered("h1")
    assert of_type(out, ins.SendStarted) == [ins.SendStarted(keys=("a", "b"))]
    assert state_of(w, "c") == READY


def test_one_transfer_per_holder_and_at_most_max_gathers() -> None:
    w = WorkerSim(max_gathers=2)
    out = w.handle(compute("t", {"a": ["h1"], "b": ["h2"], "c": ["h1"], "d": ["h3"]}))
    assert out == [ins.Gather(holder="h1", keys=("a", "c")), ins.Gather(holder="h2", keys=("b",))]
    assert w.state.gathers == 2
    assert w.gathered("h2") == [
        ins.SendAddReplicas(keys=("b",)),
        ins.Gather(holder="h3", keys=("d",)),
    ]
    assert w.state.gathers == 2
    assert w.gathered("h1") == [ins.SendAddReplicas(keys=("a", "c"))]
    assert kinds(w.gathered("h3")) == ["SendAddReplicas", "SendStarted", "Execute"]
    assert w.state.gathers == 0


def test_the_most_urgent_transfers_go_first() -> None:
    w = WorkerSim(max_gathers=1)
    w.handle(ev.ReplicasRequested(who_has={"r": ["h0"]}))
    assert w.handle(compute("low", {"x": ["h1"]}, priority=(9,))) == []
    assert w.handle(compute("high", {"y": ["h2"]}, priority=(1,))) == []
    assert [g.holder for g in w.gathering] == ["h0"]
    assert w.gathered("h0") == [
        ins.SendAddReplicas(keys=("r",)),
        ins.Gather(holder="h2", keys=("y",)),
    ]
    assert of_type(w.gathered("h2"), ins.Gather) == [ins.Gather(holder="h1", keys=("x",))]


def test_replicas_requested_are_fetched_and_announced() -> None:
    w = WorkerSim()
    w.handle(ev.DataPut(data={"held": (1, "int")}))
    out = w.handle(ev.ReplicasRequested(who_has={"r": ["h1"], "held": ["h1"], "none": []}))
    assert out == [ins.Gather(holder="h1", keys=("r",))]
    assert w.handle(ev.ReplicasRequested(who_has={"r": ["h2"]})) == []  # under way already
    assert w.gathered("h1") == [ins.SendAddReplicas(keys=("r",))]
    assert set(w.state.data) == {"held", "r"}


def test_dependency_put_here_meanwhile_saves_a_failed_fetch() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}))
    w.handle(ev.DataPut(data={"d": (2, "int")}))
    assert kinds(w.gathered("h1", got=())) == ["SendStarted", "Execute"]


# -------------------------------------------------------------- cancellation
def test_result_of_a_task_freed_while_it_ran_is_discarded() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    attempt = w.run_of("t").attempt
    assert w.handle(ev.KeysFreed(keys=("t",))) == [ins.Abandon(key="t", attempt=attempt)]
    assert state_of(w, "t") == CANCELLED
    sealed = object()
    out = w.succeed("t", sealed=sealed)
    assert out == [ins.DiscardResult(key="t", sealed=sealed)]  # no StoreData, no SendFinished
    assert not w.state.tasks and not w.state.data and w.state.in_threads == 0


def test_unsealed_result_of_a_freed_task_needs_nothing() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    w.handle(ev.KeysFreed(keys=("t",)))
    assert w.succeed("t") == []
    w.handle(compute("u"))
    w.handle(ev.KeysFreed(keys=("u",)))
    assert w.fail("u") == []
    assert not w.state.tasks and not w.state.data


def test_freed_twice_while_running_is_abandoned_again() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    attempt = w.run_of("t").attempt
    w.handle(ev.KeysFreed(keys=("t",)))
    assert w.handle(ev.KeysFreed(keys=("t",))) == [ins.Abandon(key="t", attempt=attempt)]
    assert state_of(w, "t") == CANCELLED


def test_rerun_racing_a_completion_reports_the_new_run() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    w.handle(ev.KeysFreed(keys=("t",)))
    assert w.handle(compute("t", run_id=2)) == []  # the thread still runs: no second Execute
    assert state_of(w, "t") == RERUN
    out = w.succeed("t", nbytes=5, duration=0.5)
    assert out == [
        ins.StoreData(key="t", value="value", nbytes=5),
        ins.SendFinished(key="t", run_id=2, nbytes=5, type_name="str", duration=0.5),
    ]
    assert not w.state.tasks and "t" in w.state.data


def test_rerun_whose_thread_fails_is_run_anew() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1, run_spec="old"))
    first = w.run_of("t").attempt
    w.handle(ev.KeysFreed(keys=("t",)))
    w.handle(compute("t", run_id=2, run_spec="new"))
    out = w.fail("t", ValueError("interrupted"))
    assert kinds(out) == ["SendStarted", "Execute"]  # no SendErred: the old run's error
    [again] = of_type(out, ins.Execute)
    assert again.key == "t" and again.attempt != first and again.run_spec == "new"
    assert state_of(w, "t") == EXECUTING
    [finished] = of_type(w.succeed("t"), ins.SendFinished)
    assert finished.run_id == 2


def test_rerun_whose_thread_fails_fetches_its_dependencies_first() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    w.handle(ev.KeysFreed(keys=("t",)))
    w.handle(compute("t", {"d": ["h1"]}, run_id=2))
    assert w.fail("t") == [ins.Gather(holder="h1", keys=("d",))]
    assert state_of(w, "t") == WAITING
    assert kinds(w.gathered("h1")) == ["SendAddReplicas", "SendStarted", "Execute"]


def test_rerun_whose_result_arrived_meanwhile_is_finished_at_once() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    w.handle(ev.KeysFreed(keys=("t",)))
    w.handle(compute("t", run_id=2))
    w.handle(ev.DataPut(data={"t": (4, "int")}))
    out = w.fail("t")
    assert out == [ins.SendFinished(key="t", run_id=2, nbytes=4, type_name="int")]
    assert not w.state.tasks and not w.executing


def test_rerun_freed_again_drops_the_order() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    attempt = w.run_of("t").attempt
    w.handle(ev.KeysFreed(keys=("t",)))
    w.handle(compute("t", run_id=2))
    assert w.handle(ev.KeysFreed(keys=("t",))) == [ins.Abandon(key="t", attempt=attempt)]
    assert state_of(w, "t") == CANCELLED
    assert w.fail("t") == [] and not w.state.tasks


# --------------------------------------------------------------------- steal
def test_steal_of_a_waiting_or_ready_task_succeeds() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(
        compute("running", priority=(0,)),
        compute("ready", priority=(1,)),
        compute("waiting", {"d": ["h1"]}, priority=(2,)),
    )
    assert state_of(w, "ready") == READY and state_of(w, "waiting") == WAITING
    assert w.handle(ev.StealRequested(key="ready")) == [
        ins.SendStealResponse(key="ready", stolen=True)
    ]
    assert w.handle(ev.StealRequested(key="waiting")) == [
        ins.SendStealResponse(key="waiting", stolen=True)
    ]
    assert set(w.state.tasks) == {"running"}
    # the freed thread slot goes to nobody; the transfer lands as a mere replica
    assert kinds(w.succeed("running")) == ["StoreData", "SendFinished"]
    assert w.gathered("h1") == [ins.SendAddReplicas(keys=("d",))]


def test_steal_of_an_executing_or_unknown_task_is_refused() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    assert w.handle(ev.StealRequested(key="t")) == [ins.SendStealResponse(key="t", stolen=False)]
    assert state_of(w, "t") == EXECUTING
    assert w.handle(ev.StealRequested(key="zz")) == [ins.SendStealResponse(key="zz", stolen=False)]
    w.handle(ev.KeysFreed(keys=("t",)))  # cancelled, its thread still runs
    assert w.handle(ev.StealRequested(key="t")) == [ins.SendStealResponse(key="t", stolen=False)]


# ----------------------------------------------------------------- interrupt
@pytest.mark.parametrize("nanny", [True, False])
def test_interrupt_then_deadline_of_a_task_that_ignores_it(nanny: bool) -> None:
    w = WorkerSim(has_nanny=nanny)
    w.handle(compute("t"))
    attempt = w.run_of("t").attempt
    assert w.handle(ev.InterruptRequested(key="t")) == [
        ins.InterruptThread(key="t", attempt=attempt)
    ]
    assert state_of(w, "t") == CANCELLED
    out = w.handle(ev.InterruptDeadlinePassed(key="t", attempt=attempt, started=True))
    assert kinds(out) == (["ExitForNanny"] if nanny else ["LogWarning"])
    assert "'t'" in (out[0].reason if nanny else out[0].text)  # type: ignore[attr-defined]
    assert w.fail("t") == [] and not w.state.tasks


def test_interrupt_deadline_of_a_run_never_begun_or_done_is_ignored() -> None:
    w = WorkerSim(has_nanny=True)
    w.handle(compute("t"))
    attempt = w.run_of("t").attempt
    w.handle(ev.InterruptRequested(key="t"))
    assert w.handle(ev.InterruptDeadlinePassed(key="t", attempt=attempt, started=False)) == []
    w.fail("t")  # it stopped
    assert w.handle(ev.InterruptDeadlinePassed(key="t", attempt=attempt, started=True)) == []


def test_interrupt_deadline_of_an_older_attempt_is_ignored() -> None:
    w = WorkerSim(has_nanny=True)
    w.handle(compute("t", run_id=1))
    old = w.run_of("t").attempt
    w.handle(ev.InterruptRequested(key="t"))
    w.handle(compute("t", run_id=2))  # ordered again while the interrupted run goes on
    assert state_of(w, "t") == RERUN
    out = w.fail("t", ValueError("interrupted"))  # it stopped: run anew
    [again] = of_type(out, ins.Execute)
    assert again.attempt != old
    assert w.handle(ev.InterruptDeadlinePassed(key="t", attempt=old, started=True)) == []
    assert state_of(w, "t") == EXECUTING


def test_interrupt_of_a_task_not_running_frees_it() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(compute("busy", priority=(0,)), compute("queued", priority=(1,)))
    assert w.handle(ev.InterruptRequested(key="queued")) == []
    assert "queued" not in w.state.tasks
    assert w.handle(ev.InterruptRequested(key="nothing")) == []


# -------------------------------------------------------------------- memory
def test_sample_above_target_spills_and_does_not_decide_on_pausing() -> None:
    w = WorkerSim(memory_limit=1000)  # target 600, pause 800
    assert w.handle(ev.MemorySampled(rss=950)) == [ins.Spill(nbytes=350)]
    assert not w.state.paused
    # the sample after the spill decides
    assert w.handle(ev.MemorySampled(rss=850, after_spill=True)) == [ins.SendPaused(paused=True)]
    # still above target: spill again, stay paused
    assert w.handle(ev.MemorySampled(rss=650)) == [ins.Spill(nbytes=50)]
    assert w.state.paused
    assert w.handle(ev.MemorySampled(rss=650, after_spill=True)) == []
    assert w.handle(ev.MemorySampled(rss=600)) == [ins.SendPaused(paused=False)]


def test_sample_between_target_and_pause_after_a_spill_does_not_pause() -> None:
    w = WorkerSim(memory_limit=1000)
    assert w.handle(ev.MemorySampled(rss=700, after_spill=True)) == []
    assert not w.state.paused


def test_no_memory_limit_no_memory_decisions() -> None:
    w = WorkerSim()
    assert w.handle(ev.MemorySampled(rss=10**12)) == []
    assert w.handle(ev.MemorySampled(rss=10**12, after_spill=True)) == []
    assert not w.state.paused


def test_pause_during_a_fetch_holds_the_task_until_memory_drops() -> None:
    w = WorkerSim(memory_limit=1000)
    w.handle(compute("t", {"d": ["h1"]}))
    assert w.handle(ev.MemorySampled(rss=900, after_spill=True)) == [ins.SendPaused(paused=True)]
    assert w.gathered("h1") == [ins.SendAddReplicas(keys=("d",))]  # no Execute
    assert state_of(w, "t") == READY
    assert w.handle(compute("u")) == []
    assert w.handle(ev.MemorySampled(rss=700, after_spill=True)) == []  # above target still
    out = w.handle(ev.MemorySampled(rss=500))
    assert kinds(out) == ["SendPaused", "SendStarted", "Execute"]
    assert out[0] == ins.SendPaused(paused=False)
    assert out[1] == ins.SendStarted(keys=("t",))


def test_paused_worker_tells_a_scheduler_it_reconnects_to() -> None:
    w = WorkerSim(memory_limit=1000)
    w.handle(ev.MemorySampled(rss=900, after_spill=True))
    w.handle(ev.SchedulerLost())
    assert w.handle(ev.SchedulerReconnected()) == [ins.SendPaused(paused=True)]


# --------------------------------------------------------- scheduler lost
def test_scheduler_lost_orphans_running_tasks_and_keeps_their_results() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(
        compute("running", priority=(0,)),
        compute("ready", priority=(1,)),
        compute("waiting", {"d": ["h1"]}),
    )
    assert w.handle(ev.SchedulerLost()) == []  # the orphan runs on: no Abandon
    assert {k: ts.state for k, ts in w.state.tasks.items()} == {"running": ORPHANED}
    out = w.succeed("running", nbytes=6)
    assert out == [ins.StoreData(key="running", value="value", nbytes=6)]  # not reported
    assert w.state.data == {"running": (6, "str")}
    assert w.handle(ev.SchedulerReconnected()) == []
    assert w.state.data == {"running": (6, "str")}
    # the transfer under way at the loss still lands
    assert w.gathered("h1") == [ins.SendAddReplicas(keys=("d",))]
    assert not w.state.tasks and not w.executing


def test_failed_orphan_is_dropped_silently() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    w.handle(ev.SchedulerLost())
    assert w.fail("t") == [] and not w.state.tasks and not w.state.data


def test_orphan_ordered_again_by_the_restored_scheduler_reports_its_result() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    w.handle(ev.SchedulerLost())
    w.handle(ev.SchedulerReconnected())
    assert w.handle(compute("t", run_id=8)) == []
    assert state_of(w, "t") == RERUN
    out = w.succeed("t")
    assert kinds(out) == ["StoreData", "SendFinished"]
    assert of_type(out, ins.SendFinished)[0].run_id == 8


def test_scheduler_lost_cancels_reruns() -> None:
    w = WorkerSim()
    w.handle(compute("t", run_id=1))
    attempt = w.run_of("t").attempt
    w.handle(ev.KeysFreed(keys=("t",)))
    w.handle(compute("t", run_id=2))
    assert w.handle(ev.SchedulerLost()) == [ins.Abandon(key="t", attempt=attempt)]
    assert state_of(w, "t") == CANCELLED
    assert w.succeed("t") == [] and not w.state.data


def test_reconnect_with_drop_deletes_data_and_cancels_orphans() -> None:
    w = WorkerSim(nthreads=2)
    w.handle(ev.DataPut(data={"k": (1, "int")}))
    w.handle(compute("done", priority=(0,)), compute("orphan", priority=(1,)))
    w.succeed("done")
    w.handle(ev.SchedulerLost())
    assert state_of(w, "orphan") == ORPHANED
    out = w.handle(ev.SchedulerReconnected(drop=True))
    assert out[0] == ins.DeleteData(keys=("k", "done"))
    assert not w.state.data
    assert state_of(w, "orphan") == CANCELLED
    sealed = object()
    assert w.succeed("orphan", sealed=sealed) == [ins.DiscardResult(key="orphan", sealed=sealed)]
    assert not w.state.tasks and not w.state.data


def test_reconnect_with_drop_abandons_the_orphans_it_cancels() -> None:
    """An orphan handed to the threads may not have begun (tasks go ahead of the threads):
    once the orphan is stale, like every other move to CANCELLED, the run is abandoned so
    that a thread that has not begun it skips it instead of running stale user code."""
    w = WorkerSim(nthreads=1)
    w.handle(compute("orphan"))
    attempt = w.run_of("orphan").attempt
    w.handle(ev.SchedulerLost())
    out = w.handle(ev.SchedulerReconnected(drop=True))
    assert state_of(w, "orphan") == CANCELLED
    assert ins.Abandon(key="orphan", attempt=attempt) in out, out


def test_state_dropped_forgets_tasks_and_data() -> None:
    w = WorkerSim(nthreads=1)
    w.handle(ev.DataPut(data={"k": (1, "int")}))
    w.handle(
        compute("running", priority=(0,)),
        compute("ready", priority=(1,)),
        compute("waiting", {"d": ["h1"]}),
    )
    attempt = w.run_of("running").attempt
    out = w.handle(ev.StateDropped())
    assert out == [ins.Abandon(key="running", attempt=attempt), ins.DeleteData(keys=("k",))]
    assert {k: ts.state for k, ts in w.state.tasks.items()} == {"running": CANCELLED}
    assert not w.state.data and not w.state.ready
    assert w.succeed("running") == []  # dropped, and nothing else starts
    assert not w.state.tasks and not w.state.data


def test_state_dropped_cancels_orphans() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    attempt = w.run_of("t").attempt
    w.handle(ev.SchedulerLost())
    assert w.handle(ev.StateDropped()) == [ins.Abandon(key="t", attempt=attempt)]
    assert w.succeed("t") == [] and not w.state.data


# ----------------------------------------------------------- short tasks
def _warm_up(w: WorkerSim) -> None:
    """Short tasks, one at a time, until the average duration counts as short."""
    for n in range(1000):
        if w.state.avg_duration < SHORT_TASK:
            return
        w.handle(compute(f"warm{n}"))
        w.succeed(f"warm{n}", duration=0.0)
    raise AssertionError("the average duration never came below SHORT_TASK")


def test_long_tasks_take_one_thread_each() -> None:
    w = WorkerSim(nthreads=2)
    out = w.handle(*(compute(f"t{n}") for n in range(10)))
    assert of_type(out, ins.SendStarted) == [ins.SendStarted(keys=("t0", "t1"))]
    assert len(of_type(out, ins.Execute)) == 2


def test_short_tasks_go_ahead_to_the_threads() -> None:
    w = WorkerSim(nthreads=2)
    _warm_up(w)
    assert w.state.in_threads == 0
    out = w.handle(*(compute(f"t{n}") for n in range(20)))
    limit = 2 * (1 + AHEAD)
    keys = tuple(f"t{n}" for n in range(limit))
    assert out[0] == ins.SendStarted(keys=keys)
    assert [x.key for x in of_type(out, ins.Execute)] == list(keys)
    assert w.state.in_threads == limit
    # one back, one more out
    out = w.succeed("t0", duration=0.0)
    assert [x.key for x in of_type(out, ins.Execute)] == [f"t{limit}"]
    assert w.state.in_threads == limit


def test_tasks_turning_long_stop_going_ahead() -> None:
    w = WorkerSim(nthreads=1)
    _warm_up(w)
    w.handle(*(compute(f"t{n}") for n in range(10)))
    assert w.state.in_threads == 1 + AHEAD
    # a long one: the others in the threads stay, nothing more goes until below nthreads
    out = w.succeed("t0", duration=100.0)
    assert not of_type(out, ins.Execute)
    for n in range(1, AHEAD):
        assert not of_type(w.succeed(f"t{n}", duration=1.0), ins.Execute)
    out = w.succeed(f"t{AHEAD}", duration=1.0)
    assert [x.key for x in of_type(out, ins.Execute)] == [f"t{AHEAD + 1}"]


def test_started_news_precede_the_runs_of_their_batch() -> None:
    w = WorkerSim(nthreads=2)
    out = w.handle(
        compute("a", priority=(0,)), compute("b", priority=(1,)), compute("c", priority=(2,))
    )
    assert out == [
        ins.SendStarted(keys=("a", "b")),
        ins.Execute(key="a", attempt=w.run_of("a").attempt, run_spec=("run", "a")),
        ins.Execute(key="b", attempt=w.run_of("b").attempt, run_spec=("run", "b")),
    ]
    out = w.succeed("a")
    assert kinds(out) == ["StoreData", "SendFinished", "SendStarted", "Execute"]
    # (every batch WorkerSim sees is checked the same way: see check_started_first)


# ------------------------------------------------------------ transitions
def test_transitions_name_only_known_states() -> None:
    known = set(STATES)
    for (start, finish), why in TRANSITIONS.items():
        assert start in known and finish in known, (start, finish)
        assert start != finish and why
        assert start not in (MEMORY, ERRED), (start, finish)  # final: the record is gone
    assert THREADED <= LIVE
    # every live state has a way out, every state a way in
    assert {s for s, _ in TRANSITIONS} >= LIVE
    assert {f for _, f in TRANSITIONS} == known


def test_illegal_transition_raises_with_the_story() -> None:
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}))
    ts = w.state.tasks["t"]
    with pytest.raises(InvalidTransition, match="'t': waiting -> executing") as info:
        w.state._set_state(ts, EXECUTING)
    assert "released" in str(info.value)  # the story: released -> waiting
    assert ts.state == WAITING


@pytest.mark.parametrize(
    ("start", "finish"),
    [(s, f) for s in STATES for f in STATES if (s, f) not in TRANSITIONS],
)
def test_every_illegal_transition_raises(start: str, finish: str) -> None:
    state = WorkerState(nthreads=1)
    ts = WorkerTask("k", 1, (0,), {}, None, state=start)
    with pytest.raises(InvalidTransition):
        state._set_state(ts, finish)
    assert ts.state == start and not state.log


def test_outcome_of_a_run_no_thread_has_raises() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    attempt = w.run_of("t").attempt
    with pytest.raises(InvalidTransition, match="no thread was running"):
        w.state.handle(
            ev.ExecuteSucceeded(
                key="t", attempt=attempt + 1, value=1, nbytes=1, type_name="int", duration=0
            )
        )
    w = WorkerSim()
    with pytest.raises(InvalidTransition, match="no thread was running"):
        w.state.handle(ev.ExecuteFailed(key="ghost", attempt=1, error=ValueError(), duration=0))
    w = WorkerSim()
    w.handle(compute("t", {"d": ["h1"]}))  # waiting: no thread has it
    with pytest.raises(InvalidTransition, match="no thread was running"):
        w.state.handle(ev.ExecuteFailed(key="t", attempt=0, error=ValueError(), duration=0))


def test_unknown_event_and_bad_settings_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown worker event"):
        WorkerState(nthreads=1).handle(ev.WorkerEvent())
    with pytest.raises(ValueError, match="nthreads"):
        WorkerState(nthreads=0)
    with pytest.raises(ValueError, match="max_gathers"):
        WorkerState(nthreads=1, max_gathers=0)


def test_story_tells_a_keys_moves() -> None:
    w = WorkerSim()
    w.handle(compute("t"))
    w.handle(ev.KeysFreed(keys=("t",), stimulus_id="free-1"))
    w.succeed("t")
    assert [(a, b) for _, a, b, _ in w.state.story("t")] == [
        (RELEASED, READY),
        (READY, EXECUTING),
        (EXECUTING, CANCELLED),
        (CANCELLED, RELEASED),
    ]
    assert w.state.story("t")[2][3] == "free-1"


def test_a_busy_holder_gets_the_next_keys_once_it_is_done() -> None:
    # Two transfers from one holder at once would double what it sends and what we
    # receive at a time: the second key waits for the first transfer to end.
    w = WorkerSim()
    assert w.handle(compute("s", {"a": ["h1"]})) == [ins.Gather(holder="h1", keys=("a",))]
    assert w.handle(compute("t", {"b": ["h1"]})) == []
    # A key another holder also has goes there instead.
    assert w.handle(compute("u", {"c": ["h1", "h2"]})) == [ins.Gather(holder="h2", keys=("c",))]
    assert of_type(w.gathered("h1"), ins.Gather) == [ins.Gather(holder="h1", keys=("b",))]


def test_no_transfer_starts_while_paused() -> None:
    w = WorkerSim(memory_limit=1000)
    w.handle(ev.MemorySampled(rss=900, after_spill=True))
    assert w.state.paused
    assert of_type(w.handle(compute("t", {"d": ["h1"]})), ins.Gather) == []
    out = w.handle(ev.MemorySampled(rss=100))
    assert of_type(out, ins.Gather) == [ins.Gather(holder="h1", keys=("d",))]
