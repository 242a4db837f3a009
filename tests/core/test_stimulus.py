"""Every order a core gives names the event that caused it (its stimulus id)."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core import worker_events as wev
from regrow.core import worker_instructions as ins
from regrow.core.scheduler_state import SchedulerState
from regrow.core.worker_state import WorkerState


def test_scheduler_commands_carry_their_stimulus() -> None:
    state = SchedulerState(validate=True)
    state.handle(ev.WorkerAdded(worker="w1", stimulus_id="join-1"))
    out = state.handle(
        ev.TasksSubmitted(
            client="c",
            tasks=(ev.TaskSpec(key="x", run_spec=("run", "x")),),
            wanted=("x",),
            stimulus_id="submit-7",
        )
    )
    [compute] = [c for c in out if isinstance(c, cmd.Compute)]
    assert compute.stimulus_id == "submit-7"
    out = state.handle(
        ev.TaskFinished(worker="w1", key="x", run_id=compute.run_id, nbytes=1, stimulus_id="fin-8")
    )
    assert out and {c.stimulus_id for c in out} == {"fin-8"}
    # The stimulus is not part of what an order is.
    assert cmd.FreeKeys(worker="w", keys=("x",), stimulus_id="a") == cmd.FreeKeys(
        worker="w", keys=("x",), stimulus_id="b"
    )


def test_worker_instructions_carry_their_stimulus() -> None:
    state = WorkerState(nthreads=1, validate=True)
    out = state.handle(
        wev.ComputeRequested(
            key="y", run_id=1, priority=(0,), who_has={"x": ["tcp://a:1"]}, stimulus_id="c-1"
        )
    )
    assert out == [ins.Gather(holder="tcp://a:1", keys=("x",))]
    assert out[0].stimulus_id == "c-1"
    out = state.handle(
        wev.GatherFinished(
            holder="tcp://a:1", keys=("x",), got={"x": (8, "int")}, stimulus_id="g-2"
        )
    )
    assert [type(i) for i in out] == [ins.SendAddReplicas, ins.SendStarted, ins.Execute]
    assert {i.stimulus_id for i in out} == {"g-2"}
