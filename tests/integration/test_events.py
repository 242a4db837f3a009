"""Structured cluster events (``core.timeline``): what the core records, what clients
receive (``get_events``, ``subscribe_topic``), ``Client.log_event``, and the pipeline
runner's ``pipeline-restarted``.

The first tests drive the pure core (no IO); the others run real clusters.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.core_sim import Harness, spec
from pipeline import tasks as pipeline_tasks
from pipeline.helpers import TIMEOUT, numeric_pipeline
from regrow import Client
from regrow.core import events as ev
from regrow.core.timeline import ACTIONS, SAMPLE_KEYS
from regrow.pipeline import run_pipeline
from regrow.testing import MakeCluster, wait_until

from .tasks import inc

# Every event has these besides its action's own fields.
COMMON = {"seq", "time", "topic", "action", "text"}


def check_events(h: Harness, clients: int) -> list[dict[str, Any]]:
    """Every event ``h``'s core recorded is well formed and went to every client; they,
    oldest first."""
    events = list(h.state.events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        topic, fields = ACTIONS[e["action"]]
        assert set(e) == COMMON | set(fields), e
        assert e["topic"] == topic, e
        assert isinstance(e["text"], str) and e["text"], e
        assert isinstance(e["time"], int | float), e
        # Plain data: it travels to clients and the dashboard as it is.
        assert msgspec.json.decode(msgspec.json.encode(e)) == e
    times = [e["time"] for e in events]
    assert times == sorted(times)
    # Each one reached each client, as a ReportEvent carrying the whole record.
    sent = [(c.client, c.data["seq"]) for c in h.client_events]
    assert sorted(sent) == sorted((c, e["seq"]) for c in h.state.clients for e in events)
    assert len(h.state.clients) == clients
    for c in h.client_events:
        event = events[c.data["seq"] - 1]
        assert c.data == event and c.topic == event["topic"]
    return events


def by_action(events: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in events if e["action"] == action]


# ------------------------------------------------------------------ pure core


def test_every_event_the_core_records_has_exactly_its_fields() -> None:
    h = Harness(allowed_failures=2)
    h.handle(ev.ClientConnected(client="c1", now=1.0))
    h.handle(ev.ClientConnected(client="c2", now=1.0))
    for i, w in enumerate(("w1", "w2", "w3")):
        h.handle(
            ev.WorkerAdded(worker=w, name=f"n{i + 1}", nthreads=2, memory_limit=2**30, now=2.0)
        )
    # Results held by w1 only (one of them impure), then w1 dies: they are recomputed.
    h.submit(
        "c1",
        [
            spec("inc-1", workers=("w1",)),
            spec("inc-2", workers=("w1",)),
            spec("rand-1", pure=False, workers=("w1",)),
        ],
        wanted=["inc-1", "inc-2", "rand-1"],
    )
    assert h.processing_on("rand-1") == "w1"
    for key in ("inc-1", "inc-2", "rand-1"):
        h.finish(key)
    assert h.holders("inc-1") == h.holders("rand-1") == {"w1"}
    h.handle(ev.WorkerRemoved(worker="w1", reason="killed by signal 9", now=10.0))
    # The restricted results wait for a worker named w1: one joins and computes them.
    h.handle(ev.WorkerAdded(worker="w1", name="n1b", nthreads=2, now=11.0))
    h.run_to_completion()

    # A task that kills its workers: suspected, run alone, suspected again, blamed.
    h.submit("c2", [spec("poison-1")], wanted=["poison-1"])
    first = h.processing_on("poison-1")
    h.handle(ev.TasksStarted(worker=first, keys=("poison-1",), now=20.0))
    h.handle(ev.WorkerRemoved(worker=first, reason="segfault", now=21.0))
    second = h.processing_on("poison-1")
    assert second != first
    h.handle(ev.TasksStarted(worker=second, keys=("poison-1",), now=22.0))
    h.handle(ev.WorkerRemoved(worker=second, reason="segfault again", now=23.0))
    assert h.task_state("poison-1") == "erred"

    # A nanny started in place of a dead one.
    h.handle(ev.NannyJoined(nanny="tcp://nanny:2", name="n9", replaces="tcp://nanny:1", now=24.0))

    # An idle worker retires at once; the last worker, holding the only copies, cannot.
    h.handle(ev.WorkerAdded(worker="w9", name="n9", now=25.0))
    h.handle(ev.RetireWorkersRequested(request="r1", workers=("w9",), now=26.0))
    assert "w9" not in h.state.workers
    (last,) = [w for w in h.state.workers if h.state.workers[w].has_what]
    others = sorted(w for w in h.state.workers if w != last)
    for other in others:
        h.handle(ev.WorkerRemoved(worker=other, graceful=True, reason="scaled down", now=27.0))
    h.handle(ev.RetireWorkersRequested(request="r2", workers=(last,), now=28.0))
    assert last in h.state.workers

    events = check_events(h, clients=2)
    actions = {e["action"] for e in events}
    # Everything the core records (pipeline-restarted is a client's) was seen.
    assert actions == set(ACTIONS) - {"pipeline-restarted", "scheduler-recovered"}

    added = by_action(events, "worker-added")
    assert [(e["worker"], e["name"], e["nthreads"]) for e in added[:3]] == [
        ("w1", "n1", 2),
        ("w2", "n2", 2),
        ("w3", "n3", 2),
    ]
    assert added[0]["memory_limit"] == 2**30 and added[0]["time"] == 2.0
    lost = by_action(events, "worker-lost")
    assert lost[0] | {"seq": 0, "text": ""} == {
        "seq": 0,
        "time": 10.0,
        "topic": "workers",
        "action": "worker-lost",
        "text": "",
        "worker": "w1",
        "name": "n1",
        "reason": "killed by signal 9",
        "rescheduled": 0,
        "recomputing": 3,
        "out_of_memory": False,
    }
    # A departure comes before what follows from it.
    for follow in ("tasks-recomputed", "task-suspected"):
        for e in by_action(events, follow):
            (gone,) = [d for d in lost if d["worker"] == e["worker"]]
            assert gone["seq"] < e["seq"], (gone, e)
    recomputed = by_action(events, "tasks-recomputed")[0]
    assert recomputed["worker"] == "w1" and recomputed["count"] == 3
    assert recomputed["groups"] == {"inc": 2, "rand": 1}
    assert sorted(recomputed["keys"]) == ["inc-1", "inc-2", "rand-1"]
    assert "w1" in recomputed["cause"] and "killed by signal 9" in recomputed["cause"]
    assert by_action(events, "impure-recomputed")[0]["key"] == "rand-1"
    assert by_action(events, "impure-recomputed")[0]["topic"] == "warnings"

    suspected = by_action(events, "task-suspected")
    assert [(e["key"], e["worker"], e["reason"], e["deaths"], e["allowed"]) for e in suspected] == [
        ("poison-1", first, "segfault", 1, 2),
        ("poison-1", second, "segfault again", 2, 2),
    ]
    assert [(e["key"], e["worker"]) for e in by_action(events, "task-isolated")] == [
        ("poison-1", second)
    ]
    (blamed,) = by_action(events, "task-blamed")
    assert blamed["key"] == "poison-1" and blamed["workers"] == [first, second]
    assert "segfault" in blamed["error"] and "segfault again" in blamed["error"]
    (replaced,) = by_action(events, "nanny-replaced")
    assert (replaced["nanny"], replaced["name"], replaced["replaces"]) == (
        "tcp://nanny:2",
        "n9",
        "tcp://nanny:1",
    )
    retiring = by_action(events, "worker-retiring")
    assert [e["worker"] for e in retiring] == ["w9", last]
    retired = by_action(events, "worker-retired")
    assert retired[0]["worker"] == "w9" and retired[0]["rescheduled"] == 0
    assert [e["worker"] for e in retired[1:]] == others
    assert [e["reason"] for e in retired] == ["retired on request"] + ["scaled down"] * len(others)
    (refused,) = by_action(events, "worker-not-retired")
    assert refused["worker"] == last and "no other worker" in refused["why"]


def test_a_recovered_scheduler_says_so() -> None:
    h = Harness()
    h.handle(ev.ClientConnected(client="c1", now=1.0))
    h.add_worker("w1")
    rows = (
        ev.RestoredTask(key="x", dependencies=(), run_spec=("run", "x")),
        ev.RestoredTask(key="y", dependencies=("x",), run_spec=("run", "y")),
    )
    h.handle(ev.StateRestored(tasks=rows, wants=(("c1", "y"),), now=2.0))
    h.handle(ev.RecoveryFinished(now=3.0))
    events = check_events(h, clients=1)
    (recovered,) = by_action(events, "scheduler-recovered")
    assert (recovered["tasks"], recovered["recomputed"], recovered["time"]) == (2, 1, 3.0)
    assert recovered["topic"] == "recovery"


def test_many_lost_keys_make_one_event_with_a_sample() -> None:
    h = Harness()
    h.handle(ev.ClientConnected(client="c"))
    h.add_worker("w1")
    keys = [f"inc-{i}" for i in range(50)] + [f"('sum-abcdef0123', {i})" for i in range(10)]
    h.submit("c", [spec(k) for k in keys], wanted=keys)
    h.run_to_completion()
    h.add_worker("w2")
    h.remove_worker("w1")
    (recomputed,) = by_action(check_events(h, clients=1), "tasks-recomputed")
    assert recomputed["count"] == 60
    assert recomputed["groups"] == {"inc": 50, "sum": 10}
    assert len(recomputed["keys"]) == SAMPLE_KEYS and set(recomputed["keys"]) <= set(keys)


def test_the_event_log_is_bounded() -> None:
    h = Harness(event_log_length=5)
    for i in range(12):
        h.add_worker(f"w{i}")
    assert [e["seq"] for e in h.state.events] == [8, 9, 10, 11, 12]
    assert h.state.events[-1]["worker"] == "w11"


def test_removal_for_silence_counts_a_heartbeat_miss() -> None:
    h = Harness(heartbeat_timeout=3.0)
    h.handle(ev.WorkerAdded(worker="w1", now=0.0))
    h.handle(ev.WorkerAdded(worker="w2", now=0.0))
    h.handle(ev.HeartbeatReceived(worker="w2", now=3.5))
    h.tick(2.0)
    assert h.state.counts["heartbeat_misses"] == 0
    h.tick(4.0)
    assert "w1" not in h.state.workers and "w2" in h.state.workers
    assert h.state.counts["heartbeat_misses"] == 1
    (lost,) = by_action(list(h.state.events), "worker-lost")
    assert lost["worker"] == "w1" and "no heartbeat" in lost["reason"]
    # A worker that dies (its connection closes) is no heartbeat miss.
    h.handle(ev.WorkerConnectionClosed(worker="w2", now=4.5))
    assert "w2" not in h.state.workers
    assert h.state.counts["heartbeat_misses"] == 1


def logged(h: Harness, topic: str, data: dict[str, Any], client: str = "c1") -> None:
    h.handle(ev.EventLogged(client=client, topic=topic, data=data, now=5.0))


def test_logged_events_in_the_core() -> None:
    h = Harness()
    h.handle(ev.ClientConnected(client="c1", now=1.0))
    h.handle(ev.ClientConnected(client="c2", now=1.0))
    logged(h, "deploys", {"action": "model-pushed", "text": "v3 pushed", "version": 3})
    # Fields every event has are the scheduler's to set, not the client's.
    logged(h, "deploys", {"seq": 99, "time": 0.0, "topic": "other", "client": "c2", "x": 1})
    logged(h, "notes", {"text": "plain"})
    # A known action, with its topic and fields: kept, the client named.
    fields = {"job": "j1", "stage": "s", "task": "1", "why": "boom", "consumers": 2}
    logged(h, "pipeline", {"action": "pipeline-restarted", **fields})
    # Known actions, malformed: wrong topic, a field missing, a field too many.
    lost = {
        "action": "worker-lost",
        "worker": "tcp://forged:1",
        "name": "x",
        "reason": "r",
        "rescheduled": 0,
        "recomputing": 0,
        "out_of_memory": False,
    }
    logged(h, "recovery", lost)
    logged(h, "workers", {k: v for k, v in lost.items() if k != "reason"})
    logged(h, "workers", {**lost, "extra": 1})
    logged(h, "pipeline", {"action": "pipeline-restarted", **fields, "client": "c2"})
    events = list(h.state.events)
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert events[0] == {
        "seq": 1,
        "time": 5.0,
        "topic": "deploys",
        "action": "model-pushed",
        "text": "v3 pushed",
        "client": "c1",
        "version": 3,
    }
    # Defaults: text is the action, else the topic.
    assert events[1] == {
        "seq": 2,
        "time": 5.0,
        "topic": "deploys",
        "action": "",
        "text": "deploys",
        "client": "c1",
        "x": 1,
    }
    assert (events[2]["action"], events[2]["text"]) == ("", "plain")
    assert events[3] == {
        "seq": 4,
        "time": 5.0,
        "topic": "pipeline",
        "action": "pipeline-restarted",
        "text": "pipeline-restarted",
        "client": "c1",
        **fields,
    }
    # The client field is the sender's, whatever the message said ("client" is not one
    # of pipeline-restarted's fields: the sender's is added).
    assert events[4]["client"] == "c1" and events[4]["seq"] == 5
    warnings = [log.message for log in h.logs if log.level == "warning"]
    assert len(warnings) == 3, warnings
    assert all("malformed 'worker-lost' event" in w and "c1" in w for w in warnings)
    assert not any(e.get("worker") == "tcp://forged:1" for e in events)
    # Both clients got each kept event.
    assert sorted((c.client, c.data["seq"]) for c in h.client_events) == sorted(
        (c, s) for c in ("c1", "c2") for s in range(1, 6)
    )
    # Logging an event changes no task and no worker.
    assert not h.history


# --------------------------------------------------------------- real clusters


def test_a_killed_worker_is_lost_and_its_results_recomputed(make_cluster: MakeCluster) -> None:
    # Results stay with their workers only (none kept by the scheduler): the victim's
    # are lost with it.
    _, client = make_cluster(inline_result_bytes=0)
    futures = client.map(inc, range(20))
    assert client.gather(futures, timeout=30) == list(range(1, 21))
    info = client.scheduler_info()["workers"]
    who_has = client.who_has(futures)
    victim = max(info, key=lambda w: sum(h == [w] for h in who_has.values()))
    held = sorted(k for k, h in who_has.items() if h == [victim])
    assert held
    before = time.time()
    os.kill(info[victim]["pid"], signal.SIGKILL)

    def found(topic: str, action: str) -> list[dict[str, Any]]:
        return [
            e
            for _, _, e in client.get_events(topic)
            if e["action"] == action and e["worker"] == victim
        ]

    wait_until(lambda: found("workers", "worker-lost"), timeout=20, what="worker-lost")
    wait_until(lambda: found("recovery", "tasks-recomputed"), timeout=20, what="recomputed")
    (lost,) = found("workers", "worker-lost")
    (recomputed,) = found("recovery", "tasks-recomputed")
    assert lost["name"] == info[victim]["name"]
    assert lost["recomputing"] == recomputed["count"] == len(held)
    assert lost["out_of_memory"] is False and lost["reason"]
    assert recomputed["groups"] == {"inc": len(held)}
    assert sorted(recomputed["keys"]) == held  # 20 at most: all of them
    assert victim in recomputed["cause"]
    assert lost["seq"] < recomputed["seq"]  # the cause first, then what follows from it
    # Wall-clock times, as the scheduler saw it happen; no "time" in the dict itself.
    for stamp, topic, event in client.get_events():
        if event is lost or event is recomputed:
            assert before - 1 <= stamp <= time.time(), (stamp, before)
            assert "time" not in event and event["topic"] == topic
    assert client.gather(futures, timeout=30) == list(range(1, 21))


def test_log_event_round_trip(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(processes=False, n_workers=1)
    seen: list[tuple[float, dict[str, Any]]] = []
    lock = threading.Lock()

    def handler(event: tuple[float, dict[str, Any]]) -> None:
        with lock:
            seen.append(event)

    with Client(cluster, set_as_default=False) as other:
        other.subscribe_topic("deploys", handler)
        before = time.time()
        msg = {
            "action": "model-pushed",
            "text": "model v3 pushed",
            "version": 3,
            "nested": {"a": [1, 2.5, True, None, "s"]},
        }
        client.log_event("deploys", msg)
        assert msg["action"] == "model-pushed" and "client" not in msg  # not changed
        # A malformed known action is dropped (and logged by the scheduler); a forged
        # client id or seq is overwritten; a non-dict message is its text.
        client.log_event("workers", {"action": "worker-lost", "worker": "tcp://forged:1"})
        client.log_event(
            "recovery",
            {
                "action": "worker-lost",
                "worker": "tcp://forged:2",
                "name": "x",
                "reason": "r",
                "rescheduled": 0,
                "recomputing": 0,
                "out_of_memory": False,
            },
        )
        client.log_event("deploys", {"client": "someone-else", "seq": 999, "text": "forged"})
        client.log_event("deploys", 42)
        wait_until(lambda: len(seen) == 3, timeout=10, what="three events on the topic")
        with lock:
            (t1, pushed), (_, forged), (_, plain) = seen
        assert before - 1 <= t1 <= time.time()
        assert pushed == {
            "seq": pushed["seq"],
            "topic": "deploys",
            "action": "model-pushed",
            "text": "model v3 pushed",
            "client": client.id,
            "version": 3,
            "nested": {"a": [1, 2.5, True, None, "s"]},
        }
        assert forged["client"] == client.id and forged["text"] == "forged"
        assert plain["text"] == "42" and plain["action"] == "" and plain["client"] == client.id
        assert pushed["seq"] < forged["seq"] < plain["seq"]
        # Every client has them, the sender too, at the same times (each send turns the
        # core's clock into wall-clock time anew: allow for the microseconds between).
        for c in (client, other):

            def three(c: Client = c) -> bool:
                return len(c.get_events("deploys")) == 3

            wait_until(three, timeout=10, what="three events in each client")
            got = c.get_events("deploys")
            assert [e for _, _, e in got] == [e for _, e in seen]
            assert all(abs(t - s) < 0.01 for (t, _, _), (s, _) in zip(got, seen, strict=True))
        # The malformed ones reached nobody, and nothing else was recorded in between.
        for c in (client, other):
            assert not [e for _, _, e in c.get_events() if "forged" in str(e.get("worker"))]
        assert forged["seq"] == pushed["seq"] + 1
        logs = cluster.get_logs()["cluster"]
        assert logs.count("logged a malformed 'worker-lost' event; ignored") == 2, logs
        scheduler = cluster._inproc_scheduler
        assert scheduler is not None
        kept = [e for e in scheduler.state.events if e["topic"] == "deploys"]
        assert [e["seq"] for e in kept] == [pushed["seq"], forged["seq"], plain["seq"]]
        assert not [e for e in scheduler.state.events if e["action"] == "worker-lost"]


def test_log_event_refuses_bad_arguments(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(processes=False, n_workers=1)
    with pytest.raises(TypeError, match="topic"):
        client.log_event(5, {"text": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="topic"):
        client.log_event("", {"text": "x"})
    with pytest.raises(TypeError, match="str keys"):
        client.log_event("t", {1: "x"})
    # Nothing of those reached the scheduler: the next event is the first on its topic.
    client.log_event("t", {"text": "ok"})
    wait_until(lambda: client.get_events("t"), timeout=10, what="the good event")
    assert [e["text"] for _, _, e in client.get_events("t")] == ["ok"]


def test_a_pipeline_restart_is_an_event(client: Client, tmp_path: Path) -> None:
    inputs = pipeline_tasks.numeric_inputs(60)
    marker = tmp_path / "failed-once"
    params = {"fail": (str(marker), 17)}  # the task holding key 17 fails its first attempt
    result = run_pipeline(client, numeric_pipeline(params), inputs, input_batch=5, retries=2)
    assert sorted(result.gather(timeout=TIMEOUT)) == pipeline_tasks.numeric_expected(inputs)

    def restarts() -> list[dict[str, Any]]:
        return [
            e for _, _, e in client.get_events("pipeline") if e["action"] == "pipeline-restarted"
        ]

    wait_until(restarts, timeout=10, what="the pipeline-restarted event")
    (event,) = restarts()
    assert set(event) == COMMON - {"time"} | set(ACTIONS["pipeline-restarted"][1]) | {"client"}
    assert event["topic"] == "pipeline" and event["client"] == client.id
    assert event["stage"] == "square" and event["task"] == "3"  # batch 3 holds keys 15..19
    assert "StageError" in event["why"]
    assert isinstance(event["consumers"], int) and event["consumers"] >= 0
    assert event["job"] and event["job"] in event["text"]
    # The runner's own notes on the topic stay in its client, with no action.
    notes = [e for _, _, e in client.get_events("pipeline") if not e["action"]]
    assert any("square[3]" in e["text"] for e in notes)
