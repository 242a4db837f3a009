"""Liveness decided in the core: heartbeats, closed connections, death reports, comebacks.

Each test is an event script (the shell's clock arrives in ``now``) and the commands that
come out, against a validating core.
"""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, computes, of_type, reports, spec

DIED = "its nanny reports it was killed by signal 9 (SIGKILL)"


def join(h: Harness, worker: str, now: float = 0.0, **kwargs: object) -> list[cmd.Command]:
    return h.handle(ev.WorkerAdded(worker=worker, now=now, **kwargs))  # type: ignore[arg-type]


def start(h: Harness, key: str, now: float = 0.0) -> None:
    """``key``'s worker began running it (so a death counts against it)."""
    h.handle(ev.TasksStarted(worker=h.processing_on(key), keys=(key,), now=now))


def beat(h: Harness, now: float, *workers: str) -> None:
    for w in workers:
        h.handle(ev.HeartbeatReceived(worker=w, now=now, metrics={"rss": 100}))


# ------------------------------------------------------------------ heartbeats
def test_a_worker_silent_past_the_heartbeat_timeout_is_removed() -> None:
    h = Harness(heartbeat_timeout=3.0)
    join(h, "w1")
    h.submit("cl", [spec("x", workers=("w1",))])
    start(h, "x")
    join(h, "w2")
    beat(h, 2.0, "w2")
    assert h.tick(now=3.0) == []  # w1 silent for 3.0 s: not past the timeout yet
    beat(h, 3.4, "w2")
    out = h.tick(now=3.5)
    reason = "no heartbeat for 3.5 s (timeout 3.0 s)"
    assert of_type(out, cmd.CloseWorkerConnection) == [
        cmd.CloseWorkerConnection(worker="w1", reason=reason)
    ]
    assert "w1" not in h.state.workers  # removed by the core, at once, with that reason
    assert h.state.deaths["x"] == [("w1", reason)]
    assert reports(out, cmd.ReportInterrupted) == [
        cmd.ReportInterrupted(client="cl", key="x", worker="w1")
    ]
    assert h.logs[-1] == cmd.Log(level="warning", message=f"worker w1 removed: {reason}")
    # The shell closes the connection; that is no news any more.
    assert h.handle(ev.WorkerConnectionClosed(worker="w1", now=3.6)) == []
    assert "w2" in h.state.workers
    assert h.state.info()["workers"]["w2"]["rss"] == 100


def test_any_message_from_a_worker_is_a_sign_of_life() -> None:
    h = Harness(heartbeat_timeout=3.0)
    join(h, "w1")
    h.submit("cl", [spec("x")])
    start(h, "x", now=2.0)  # TasksStarted: a message, not a heartbeat
    assert h.tick(now=4.5) == []
    h.finish("x")  # no `now`: an event without a clock reading changes nothing
    assert h.state.workers["w1"].last_seen == 2.0
    out = h.tick(now=5.1)
    assert of_type(out, cmd.CloseWorkerConnection)[0].worker == "w1"


# ---------------------------------------------------------- closed connections
def test_closed_connection_of_a_worker_without_a_nanny_removes_it_at_once() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1")
    join(h, "w2")
    h.submit("cl", [spec("x", workers=("w1",)), spec("y", "x")], wanted=["y"])
    h.finish("x")
    out = h.handle(ev.WorkerConnectionClosed(worker="w1", reason="connection closed: EOF"))
    assert "w1" not in h.state.workers
    assert not of_type(out, cmd.CloseWorkerConnection)
    # x only lived on w1: y goes back to waiting while x is recomputed (queued: only w1 may)
    assert h.task_state("y") == "waiting"
    assert h.logs[-1].message == "worker w1 removed: connection closed: EOF"


def test_closed_connection_waits_for_the_nanny_report_that_comes_in_time() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1", nanny="tcp://nanny1")
    h.submit("cl", [spec("x")])
    start(h, "x")
    join(h, "w2")
    out = h.handle(ev.WorkerConnectionClosed(worker="w1", reason="connection closed", now=1.0))
    assert out == []  # nothing decided yet: its nanny knows why it died
    ws = h.state.workers["w1"]
    assert ws.status == "closed" and ws not in h.state.free
    assert h.task_state("x") == "processing"
    assert h.tick(now=1.5) == []  # before the deadline
    out = h.handle(ev.WorkerDeathReported(worker="w1", reason=DIED, now=1.6))
    assert "w1" not in h.state.workers
    assert not of_type(out, cmd.CloseWorkerConnection)  # its connection is closed already
    assert h.state.deaths["x"] == [("w1", DIED)]  # the error will name the real cause
    assert computes(out) == {"x": "w2"}  # the suspect runs alone on the empty w2


def test_closed_connection_gives_up_on_the_nanny_report_at_the_deadline() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1", nanny="tcp://nanny1")
    h.submit("cl", [spec("x")])
    start(h, "x")
    join(h, "w2")
    h.handle(ev.WorkerConnectionClosed(worker="w1", reason="connection closed: reset", now=1.0))
    assert h.tick(now=1.9) == []
    out = h.tick(now=2.0)
    assert "w1" not in h.state.workers
    assert h.state.deaths["x"] == [("w1", "connection closed: reset")]
    assert computes(out) == {"x": "w2"}
    # The report that comes too late changes nothing.
    assert h.handle(ev.WorkerDeathReported(worker="w1", reason=DIED, now=2.2)) == []
    assert h.state.deaths["x"] == [("w1", "connection closed: reset")]


def test_death_report_before_the_connection_closes_removes_and_closes() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1", nanny="tcp://nanny1")
    join(h, "w2")
    h.submit("cl", [spec("x", workers=("w1",))])
    start(h, "x")
    out = h.handle(ev.WorkerDeathReported(worker="w1", reason=DIED, now=5.0))
    # The process is dead: the shell need not wait for the kernel to notice.
    assert of_type(out, cmd.CloseWorkerConnection) == [
        cmd.CloseWorkerConnection(worker="w1", reason=DIED)
    ]
    assert "w1" not in h.state.workers
    assert h.state.deaths["x"] == [("w1", DIED)]
    assert h.handle(ev.WorkerConnectionClosed(worker="w1", now=5.1)) == []


def test_a_leaving_worker_is_removed_gracefully_when_its_connection_closes() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1", nanny="tcp://nanny1")
    join(h, "w2")
    h.submit("cl", [spec("x", workers=("w1",))])
    start(h, "x")
    reason = "task 'x' did not stop within 2.0 s of cancel"
    assert h.handle(ev.WorkerRetiring(worker="w1", reason=reason)) == []
    assert h.state.workers["w1"] not in h.state.free  # it takes no new tasks
    h.handle(ev.WorkerConnectionClosed(worker="w1", now=1.0))
    assert "w1" not in h.state.workers  # no wait for its nanny: we know why it went
    assert "x" not in h.state.deaths  # graceful: its task is no suspect
    assert h.state.tasks["x"].suspicious == 0
    assert h.logs[-1] == cmd.Log(level="info", message=f"worker w1 removed: {reason}")


# ------------------------------------------------------------------- comebacks
def test_a_removed_worker_that_registers_again_must_drop_its_data() -> None:
    h = Harness()
    join(h, "w1", id="id-1")
    join(h, "w2")
    h.submit("cl", [spec("x", workers=("w1",))])
    h.finish("x")
    h.handle(ev.WorkerConnectionClosed(worker="w1", now=1.0))
    assert h.task_state("x") == "queued"  # lost, and only w1 may compute it
    # It comes back (a network cut, say) with what it held before.
    out = join(h, "w1", now=2.0, id="id-1", keys=(("x", 8),))
    assert out[0] == cmd.AcceptWorker(worker="w1", drop=True)
    assert computes(out) == {"x": "w1"}  # computed again: its old copy is stale
    assert h.state.workers["w1"].has_what == set()
    # Its id is spent: it registering once more (without being removed) keeps its data.
    h.finish("x")
    h.handle(ev.WorkerConnectionClosed(worker="w2"))
    assert "id-1" not in h.state.removed_ids
    assert "w2" in h.state.removed_ids


def test_a_worker_never_removed_keeps_its_data_when_it_registers() -> None:
    h = Harness()
    join(h, "w1")
    h.submit("cl", [spec("x")])
    h.finish("x")
    out = join(h, "w2", id="id-2", keys=(("x", 8),))
    assert out[0] == cmd.AcceptWorker(worker="w2", drop=False)
    assert h.holders("x") == {"w1", "w2"}


def test_a_new_connection_from_an_address_waiting_for_its_death_report() -> None:
    h = Harness(death_report_wait=1.0)
    join(h, "w1", id="id-1", nanny="tcp://nanny1")
    h.submit("cl", [spec("x")])
    h.finish("x")
    h.handle(ev.WorkerConnectionClosed(worker="w1", now=1.0))
    assert h.state.workers["w1"].status == "closed"
    # The same worker process reconnects (the connection dropped, not the process).
    out = join(h, "w1", now=1.2, id="id-1", keys=(("x", 8),))
    # The old one is removed first (x, only there, is lost); the new one is told to drop
    # what it holds, before it is given anything.
    to_w1 = [c for c in out if getattr(c, "worker", None) == "w1"]
    assert to_w1[0] == cmd.AcceptWorker(worker="w1", drop=True)
    assert reports(out, cmd.ReportLost) == [cmd.ReportLost(client="cl", key="x")]
    assert computes(out) == {"x": "w1"}
    assert h.state.workers["w1"].status == "running"
