"""Graceful retirement decided in the core: copy what only the worker holds, then close it.

Event scripts in, commands out, against a validating core. Progress is made when asked
and on each ``Ticked``.
"""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, computes, of_type, reports, spec


def join(h: Harness, worker: str, **kwargs: object) -> list[cmd.Command]:
    return h.handle(ev.WorkerAdded(worker=worker, **kwargs))  # type: ignore[arg-type]


def retire(h: Harness, *workers: str, request: str = "r1", now: float = 0.0) -> list[cmd.Command]:
    return h.handle(
        ev.RetireWorkersRequested(request=request, workers=workers, stimulus_id=request, now=now)
    )


def answered(out: list[cmd.Command]) -> dict[str, tuple[str, ...]]:
    return {c.request: c.workers for c in of_type(out, cmd.ReportRetired)}


def test_retirement_moves_the_only_copies_then_closes_the_worker() -> None:
    h = Harness()
    join(h, "w2", nanny="tcp://nanny2")
    # x finished on w2 (only there); y runs there; z waits in w2's queue, not started
    # (w2 was the only worker when it was placed).
    h.submit(
        "cl",
        [spec("x", workers=("w2",)), spec("y", workers=("w2",)), spec("z")],
        wanted=["x", "y", "z"],
    )
    h.finish("x")
    h.handle(ev.TasksStarted(worker="w2", keys=("y",)))
    join(h, "w1")
    assert h.processing_on("z") == "w2"
    out = retire(h, "w2")
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker="w1", who_has={"x": ["w2"]})
    ]
    assert cmd.Steal(worker="w2", key="z") in out  # not started: taken back
    out = h.handle(ev.StealAnswered(worker="w2", key="z", stolen=True))
    assert computes(out) == {"z": "w1"}
    h.finish("z")
    assert not of_type(out, cmd.CloseWorker)  # y still runs there
    assert h.state.workers["w2"] not in h.state.free
    # New work goes elsewhere.
    out = h.submit("cl", [spec("n")])
    assert computes(out) == {"n": "w1"}
    # y finishes on w2 (its only copy): on the next tick it is copied too.
    h.finish("y")
    out = h.tick()
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker="w1", who_has={"y": ["w2"]})
    ]  # x was asked for already, and not long ago: not again
    assert not of_type(out, cmd.CloseWorker)
    h.handle(ev.ReplicasAdded(worker="w1", keys=("x", "y")))
    out = h.tick()
    assert of_type(out, cmd.CloseWorker) == [
        cmd.CloseWorker(worker="w2", nanny="tcp://nanny2", reason="retired on request")
    ]
    assert answered(out) == {"r1": ("w2",)}
    assert "w2" not in h.state.workers
    assert h.holders("x") == h.holders("y") == {"w1"}
    assert not reports(h.history, cmd.ReportLost) and not reports(h.history, cmd.ReportErred)
    assert h.state.counts["workers_lost"] == 0 and h.state.counts["recomputed"] == 0
    assert h.logs[-1] == cmd.Log(level="info", message="worker w2 removed: retired on request")
    # Its connection closes as it goes: no news.
    assert h.handle(ev.WorkerConnectionClosed(worker="w2")) == []


def test_an_idle_worker_with_nothing_of_its_own_retires_at_once() -> None:
    h = Harness()
    join(h, "w1")
    join(h, "w2", name="second")
    h.submit("cl", [spec("x", workers=("w1",))])
    h.finish("x")
    h.handle(ev.ReplicasAdded(worker="w2", keys=("x",)))
    out = retire(h, "second", "nobody")  # by name; an unknown worker is left out
    assert of_type(out, cmd.CloseWorker) == [
        cmd.CloseWorker(worker="w2", nanny="", reason="retired on request")
    ]
    assert answered(out) == {"r1": ("w2",)}
    assert h.holders("x") == {"w1"}
    assert answered(retire(h, "nobody", request="r2")) == {"r2": ()}


def test_results_the_scheduler_keeps_need_no_copy() -> None:
    h = Harness()
    join(h, "w1")
    join(h, "w2")
    h.submit("cl", [spec("x", workers=("w2",))])
    h.finish("x", inline=b"small")
    out = retire(h, "w2")
    assert not of_type(out, cmd.AcquireReplicas)
    assert answered(out) == {"r1": ("w2",)}
    assert h.task_state("x") == "memory"  # kept by the scheduler, held by no worker


def test_retiring_worker_dies_on_the_way() -> None:
    h = Harness()
    join(h, "w1")
    join(h, "w2")
    h.submit("cl", [spec("a", workers=("w2",)), spec("b", "a", workers=("w2",))], ["a", "b"])
    h.finish("a")
    h.handle(ev.TasksStarted(worker="w2", keys=("b",)))
    retire(h, "w2")
    # Before the copy of a arrives, w2 dies.
    out = h.handle(ev.WorkerConnectionClosed(worker="w2", reason="connection closed: reset"))
    assert answered(out) == {"r1": ()}  # it did not retire: it died
    assert not of_type(out, cmd.CloseWorker)
    assert "w2" not in h.state.workers
    assert h.state.counts["workers_lost"] == 1
    assert h.state.deaths["b"] == [("w2", "connection closed: reset")]  # b is a suspect
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="a")]
    assert h.task_state("a") == "queued"  # recomputed from lineage when w2's kind comes back
    assert h.state.retirements == {}


def test_retiring_worker_with_a_nanny_dies_on_the_way() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1")
    join(h, "w2", nanny="tcp://nanny2")
    h.submit("cl", [spec("a", workers=("w2",))])
    h.finish("a")
    retire(h, "w2")
    assert h.handle(ev.WorkerConnectionClosed(worker="w2", now=0.5)) == []  # wait for the nanny
    out = h.handle(ev.WorkerDeathReported(worker="w2", reason="its nanny reports it OOM", now=0.7))
    assert answered(out) == {"r1": ()}
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="a")]


def test_the_last_holder_is_not_retired_when_no_worker_can_take_its_data() -> None:
    h = Harness()
    join(h, "w1")
    join(h, "w2")
    h.submit("cl", [spec("x", workers=("w1",)), spec("y", workers=("w2",))], ["x", "y"])
    h.finish("x")
    h.finish("y")
    # Both asked to go. Taken in order: nobody is left to take x from w1, so w1 stays
    # (and works as before); then w1 can take y, so w2 retires.
    out = retire(h, "w1", "w2")
    assert [c.message for c in h.logs if c.level == "warning"] == [
        "worker w1 (w1) not retired: no other worker is left to take the only copy of 1 result(s)"
    ]
    assert h.state.workers["w1"].status == "running"
    assert h.state.workers["w1"] in h.state.free
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker="w1", who_has={"y": ["w2"]})
    ]
    assert answered(out) == {}
    h.handle(ev.ReplicasAdded(worker="w1", keys=("y",)))
    out = h.tick()
    assert answered(out) == {"r1": ("w2",)}
    assert h.holders("x") == h.holders("y") == {"w1"}


def test_the_only_worker_holding_data_is_not_retired() -> None:
    h = Harness()
    join(h, "w1")
    h.submit("cl", [spec("x")])
    h.finish("x")
    out = retire(h, "w1")
    assert answered(out) == {"r1": ()}
    assert not of_type(out, cmd.CloseWorker)
    assert h.holders("x") == {"w1"}
    out = h.submit("cl", [spec("z")])  # it works as before
    assert computes(out) == {"z": "w1"}


def test_retiring_the_only_worker_while_it_runs_a_task_is_refused() -> None:
    h = Harness()
    join(h, "w1")
    h.submit("cl", [spec("x")])
    h.handle(ev.TasksStarted(worker="w1", keys=("x",)))
    out = retire(h, "w1")
    assert answered(out) == {"r1": ()}
    assert h.logs[-1].message == (
        "worker w1 (w1) not retired: no other worker is left to take 1 running task(s)"
    )
    assert h.processing_on("x") == "w1"
    assert h.state.workers["w1"] in h.state.free


def test_an_idle_last_worker_holding_nothing_is_retired() -> None:
    h = Harness()
    join(h, "w1")
    out = retire(h, "w1")
    assert answered(out) == {"r1": ("w1",)}
    assert h.state.workers == {}


def test_a_copy_whose_recipient_goes_away_is_asked_of_another() -> None:
    h = Harness(heartbeat_timeout=3.0)
    for w in ("w1", "w2", "w3"):
        join(h, w)
    h.submit("cl", [spec("x", workers=("w3",))])
    h.finish("x")
    out = retire(h, "w3")
    [order] = of_type(out, cmd.AcquireReplicas)
    first = order.worker
    other = ({"w1", "w2"} - {first}).pop()
    h.remove_worker(first)
    out = h.tick(now=0.1)
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker=other, who_has={"x": ["w3"]})
    ]
    # The order is not carried out within the heartbeat timeout: it is given again.
    for now in (2.0, 3.0):
        for w in (other, "w3"):
            h.handle(ev.HeartbeatReceived(worker=w, now=now))
        assert not of_type(h.tick(now=now), cmd.AcquireReplicas)
    h.handle(ev.HeartbeatReceived(worker=other, now=3.5))
    h.handle(ev.HeartbeatReceived(worker="w3", now=3.5))
    out = h.tick(now=3.5)
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker=other, who_has={"x": ["w3"]})
    ]
    h.handle(ev.ReplicasAdded(worker=other, keys=("x",)))
    out = h.tick(now=3.6)
    assert answered(out) == {"r1": ("w3",)}
    assert h.holders("x") == {other}


def test_a_worker_in_two_requests_answers_both() -> None:
    h = Harness()
    join(h, "w1")
    join(h, "w2")
    join(h, "w3")
    h.submit("cl", [spec("x", workers=("w2",))])
    h.finish("x")
    assert answered(retire(h, "w2", request="r1")) == {}
    out = retire(h, "w2", "w3", request="r2")
    assert answered(out) == {}  # w3 is gone at once, w2 still has x to hand over
    h.handle(ev.ReplicasAdded(worker="w1", keys=("x",)))
    out = h.tick()
    assert answered(out) == {"r1": ("w2",), "r2": ("w3", "w2")}
    assert set(h.state.workers) == {"w1"}
