"""Pausing, isolation of suspect tasks, replicated scatter, restart, force-cancel."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, computes, freed, of_type, reported_keys, reports, spec


def test_paused_worker_takes_no_new_tasks() -> None:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.handle(ev.WorkerPaused(worker="w1", paused=True))
    keys = [f"k{i}" for i in range(3)]
    out = h.submit("cl", [spec(k) for k in keys], wanted=keys)
    assert set(computes(out).values()) == {"w2"}
    h.handle(ev.WorkerPaused(worker="w2", paused=True))
    out = h.submit("cl", [spec("late")])
    assert not of_type(out, cmd.Compute)
    assert h.task_state("late") == "queued"
    out = h.handle(ev.WorkerPaused(worker="w1", paused=False))
    assert computes(out) == {"late": "w1"}
    # pausing twice, or an unknown worker, changes nothing
    assert h.handle(ev.WorkerPaused(worker="w1", paused=False)) == []
    assert h.handle(ev.WorkerPaused(worker="ghost", paused=True)) == []


def test_paused_worker_still_finishes_and_serves_its_data() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("a"), spec("b", "a")])
    h.handle(ev.WorkerPaused(worker="w1", paused=True))
    out = h.finish("a")
    assert not of_type(out, cmd.Compute)  # b waits for a worker that takes tasks
    assert h.task_state("b") == "queued"
    h.add_worker("w2")
    assert h.processing_on("b") == "w2"


def test_suspect_task_runs_alone_after_a_death() -> None:
    h = Harness(allowed_failures=3)
    h.add_worker("w1", nthreads=2)
    h.add_worker("w2", nthreads=2)
    h.submit("cl", [spec("poison", workers=("w1",))])
    h.submit("cl", [spec("other", workers=("w2",))])
    out = h.remove_worker("w1")
    assert not of_type(out, cmd.Compute)
    assert h.task_state("poison") == "queued"
    assert h.state.info()["suspects"] == ["poison"]  # restricted to w1: waits for it
    h.add_worker("w1", nthreads=2)
    assert h.processing_on("poison") == "w1"
    assert h.state.workers["w1"].isolated is h.state.tasks["poison"]
    assert h.state.info()["suspects"] == []
    # nothing else goes to w1 while the suspect runs there
    out = h.submit("cl", [spec("x"), spec("y"), spec("z")], wanted=["x", "y", "z"])
    assert "w1" not in computes(out).values()
    h.finish("poison")
    assert h.state.tasks["poison"].suspicious == 0
    assert h.state.workers["w1"].isolated is None


def test_suspect_waits_for_a_busy_worker_to_drain() -> None:
    h = Harness(allowed_failures=3)
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("s", workers=("w1", "w2"))])
    h.submit("cl", [spec("busy", workers=("w2",))])
    dead = h.processing_on("s")
    assert dead == "w1"
    h.remove_worker(dead)
    # w2 is not empty: it is drained (takes nothing new) until the suspect can run alone
    assert h.task_state("s") == "queued"
    assert h.state.workers["w2"].draining
    out = h.submit("cl", [spec("later")])
    assert not of_type(out, cmd.Compute)
    out = h.finish("busy")
    assert computes(out) == {"s": "w2"}
    out = h.finish("s")
    assert computes(out) == {"later": "w2"}
    assert not h.state.workers["w2"].draining


def test_scattered_replicas_are_remade_when_lost() -> None:
    h = Harness()
    for w in ("w1", "w2", "w3"):
        h.add_worker(w)
    item = ev.ScatteredKey(key="d", nbytes=10, type_name="bytes", workers=("w1", "w2"))
    out = h.handle(ev.DataScattered(client="cl", keys=(item,), replicas=2))
    assert not of_type(out, cmd.AcquireReplicas)
    out = h.remove_worker("w1")
    assert not reports(out, cmd.ReportErred)
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker="w3", who_has={"d": ["w2"]})
    ]
    h.handle(ev.ReplicasAdded(worker="w3", keys=("d",)))
    assert h.holders("d") == {"w2", "w3"}
    h.release("cl", "d")
    assert h.state.tasks == {}
    assert h.state.replicas == {}


def test_scattered_replicas_made_when_a_worker_joins() -> None:
    h = Harness()
    h.add_worker("w1")
    item = ev.ScatteredKey(key="d", nbytes=10, type_name="bytes", workers=("w1",))
    h.handle(ev.DataScattered(client="cl", keys=(item,), replicas=2))
    out = h.add_worker("w2")
    assert of_type(out, cmd.AcquireReplicas) == [
        cmd.AcquireReplicas(worker="w2", who_has={"d": ["w1"]})
    ]


def test_force_cancel_interrupts_running_tasks() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    out = h.cancel("cl", "x", force=True)
    assert of_type(out, cmd.Interrupt) == [cmd.Interrupt(worker="w1", key="x")]
    assert freed(out) == {("w1", "x")}
    h2 = Harness()
    h2.add_worker("w1")
    h2.submit("cl", [spec("x")])
    assert not of_type(h2.cancel("cl", "x"), cmd.Interrupt)


def test_restart_forgets_everything_and_cancels_every_future() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c1", [spec("a"), spec("b", "a")], wanted=["a", "b"])
    h.finish("a")
    h.submit("c2", [spec("q", workers=("nowhere",))])
    out = h.handle(ev.RestartRequested())
    assert {(r.client, r.key) for r in reports(out, cmd.ReportCancelled)} == {
        ("c1", "a"),
        ("c1", "b"),
        ("c2", "q"),
    }
    assert h.state.tasks == {}
    assert h.state.info()["queued"] == 0
    assert not h.state.workers["w1"].processing
    assert not h.state.workers["w1"].has_what
    # the cluster works as new
    out = h.submit("c1", [spec("a")])
    assert computes(out) == {"a": "w1"}
    out = h.finish("a")
    assert reported_keys(out, cmd.ReportInMemory) == {"a"}


def test_clients_hear_about_workers_joining_and_leaving() -> None:
    h = Harness()
    h.handle(ev.ClientConnected(client="cl"))
    h.add_worker("w1", name="alice")
    h.remove_worker("w1")
    topics = [(e.client, e.topic) for e in h.client_events]
    assert topics == [("cl", "workers"), ("cl", "workers")]
    assert "alice" in h.client_events[0].data["text"]
    assert "lost" in h.client_events[1].data["text"]
