"""fire_and_forget: the scheduler itself wants a task until it is done, whatever its
clients do, then lets it go (its pseudo-client ``FIRE_AND_FORGET``)."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import queries
from regrow.core.client_requests import FIRE_AND_FORGET

from .core_sim import Harness, chain, computes, freed, reports, spec


def fire(h: Harness, client: str, *keys: str) -> list[cmd.Command]:
    return h.handle(ev.KeysFiredAndForgotten(client=client, keys=keys, stimulus_id=h.sid()))


def test_a_fired_task_runs_after_its_client_let_go_and_left_then_is_freed() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    fire(h, "cl", "x")
    assert queries.info(h.state)["clients"] == 1  # the pseudo-client is not counted
    out = h.release("cl", "x")
    assert not freed(out)  # still wanted: by the scheduler itself
    h.handle(ev.ClientDisconnected(client="cl", stimulus_id=h.sid()))
    assert h.task_state("x") == "processing"
    assert "cl" not in h.state.clients
    out = h.finish("x")
    assert freed(out) == {("w1", "x")}  # done: let go at once
    assert h.state.tasks == {}
    assert h.state.clients == {}
    assert queries.info(h.state)["clients"] == 0


def test_a_fired_task_that_errs_is_forgotten() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    fire(h, "cl", "x")
    h.release("cl", "x")
    h.err("x")
    assert h.state.tasks == {}
    assert FIRE_AND_FORGET not in h.state.clients


def test_a_fired_chain_runs_whole_with_nobody_holding_it() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", chain(5))
    fire(h, "cl", "t4")
    h.handle(ev.ClientDisconnected(client="cl", stimulus_id=h.sid()))
    assert set(computes(h.history)) == {"t0"}
    h.run_to_completion()
    assert set(computes(h.history)) == {f"t{i}" for i in range(5)}
    assert h.state.tasks == {} and h.state.clients == {}
    assert not h.state.workers["w1"].has_what


def test_a_fired_key_done_already_needs_nothing_more() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x"), spec("y")], wanted=["x", "y"])
    h.finish("x")
    h.err("y")
    fire(h, "cl", "x", "y", "unknown")
    assert FIRE_AND_FORGET not in h.state.clients
    out = h.release("cl", "x", "y")
    assert freed(out) == {("w1", "x")}
    assert h.state.tasks == {}


def test_a_fired_key_a_client_still_holds_stays_until_it_lets_go() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    fire(h, "cl", "x")
    out = h.finish("x")
    assert not freed(out)
    assert [r.key for r in reports(out, cmd.ReportInMemory, "cl")] == ["x"]
    assert FIRE_AND_FORGET not in h.state.clients  # its wish is done
    out = h.release("cl", "x")
    assert freed(out) == {("w1", "x")}
    assert h.state.tasks == {}


def test_a_fired_task_survives_the_loss_of_its_worker() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    fire(h, "cl", "x")
    h.release("cl", "x")
    h.handle(ev.ClientDisconnected(client="cl", stimulus_id=h.sid()))
    h.add_worker("w2")
    h.remove_worker("w1")
    assert h.processing_on("x") == "w2"  # rescheduled: still wanted
    h.finish("x")
    assert h.state.tasks == {} and h.state.clients == {}


def test_cancel_with_force_drops_the_schedulers_wish_too() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    fire(h, "cl", "x")
    out = h.cancel("cl", "x")  # without force another wanter (the scheduler) keeps it
    assert not freed(out) and h.task_state("x") == "processing"
    h.submit("cl", [spec("x")])
    out = h.cancel("cl", "x", force=True)
    assert freed(out) == {("w1", "x")}
    assert h.state.tasks == {}


def test_a_restored_fired_task_is_let_go_once_a_worker_brings_it_back() -> None:
    h = Harness()
    rows = (
        ev.RestoredTask(key="x", dependencies=(), run_spec=("run", "x")),
        ev.RestoredTask(key="y", dependencies=(), run_spec=("run", "y")),
        ev.RestoredTask(
            key="z",
            dependencies=(),
            run_spec=("run", "z"),
            error=ev.ErrorRecord(blame="z", text="it failed"),
        ),
    )
    wants = ((FIRE_AND_FORGET, "x"), (FIRE_AND_FORGET, "y"), (FIRE_AND_FORGET, "z"))
    h.handle(ev.StateRestored(tasks=rows, wants=wants, stimulus_id=h.sid()))
    # z erred before the restart: the wish was done, it is not wanted again.
    assert {ts.key for ts in h.state.clients[FIRE_AND_FORGET].wants} == {"x", "y"}
    h.handle(ev.WorkerAdded(worker="w1", keys=(("x", 8),), stimulus_id=h.sid()))
    assert h.task_state("x") == "memory"  # kept while recovering
    out = h.handle(ev.RecoveryFinished(stimulus_id=h.sid()))
    assert ("w1", "x") in freed(out)  # back, hence done
    assert computes(out) == {"y": "w1"}  # never finished: computed
    h.finish("y")
    h.handle(ev.ReattachGraceEnded(stimulus_id=h.sid()))
    assert h.state.tasks == {} and h.state.clients == {}
