"""``regrow.dashboard.model`` over a real ``SchedulerState`` driven by core events: no
IO, no clock. The recorder's counts by group and state are checked against a recount of
``state.tasks``; its task stream and the messages built from it (``message``) against
what was fed in."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from core.core_sim import Harness, SimCluster, spec
from core.test_random_simulation import Walk
from regrow.core import events as ev
from regrow.core.queries import key_group
from regrow.core.records import TaskState
from regrow.core.scheduler_state import SchedulerState
from regrow.core.transitions import ERRED, FORGOTTEN, MEMORY, PROCESSING, QUEUED, WAITING
from regrow.dashboard import model
from regrow.dashboard.model import (
    FIRST_EVENTS,
    FIRST_STREAM,
    MAX_GROUPS,
    MAX_STREAM,
    STREAM_LENGTH,
    Cursor,
    Group,
    Recorder,
    message,
)

STATES = ("waiting", "queued", "processing", "memory", "erred", "released")
ABOUT = {"address": "tcp://127.0.0.1:8786", "id": "sched-1", "started": 1.0, "journal": False}


def watch(state: SchedulerState, recorder: Recorder) -> None:
    """Hook ``recorder`` to ``state`` as the scheduler's shell does: after every
    ``handle`` it follows what the core did (``follow``), and where the core's log is
    short it also takes every move (``hook``), while active. Whatever hook the state had
    (a test harness's) is kept."""
    previous = state.on_transition
    handle = state.handle

    def on_transition(ts: TaskState, start: str, finish: str) -> None:
        if previous is not None:
            previous(ts, start, finish)
        if recorder.active and recorder.hook is not None:
            recorder.hook(ts, start, finish)

    def observed(*events: ev.Event) -> Any:
        out = handle(*events)
        if recorder.active:
            recorder.follow(state, events)
        return out

    state.on_transition = on_transition
    state.handle = observed  # type: ignore[method-assign]


def watched(**settings: Any) -> tuple[Harness, Recorder]:
    h = Harness(**settings)
    recorder = Recorder()
    watch(h.state, recorder)
    return h, recorder


def recount(state: SchedulerState) -> dict[str, dict[str, int]]:
    """``{group: {state: tasks}}``, counted from scratch."""
    out: dict[str, Counter[str]] = {}
    for key, ts in state.tasks.items():
        out.setdefault(key_group(key), Counter())[ts.state] += 1
    return {g: dict(c) for g, c in out.items()}


def counted(recorder: Recorder) -> dict[str, dict[str, int]]:
    """The recorder's counts in ``recount``'s shape (no empty entries)."""
    out = {}
    for name, group in recorder.groups.items():
        assert all(n >= 0 for n in group.states.values()), (name, group)
        states = {s: n for s, n in group.states.items() if n}
        if states:
            out[name] = states
    return out


def check_counts(state: SchedulerState, recorder: Recorder) -> None:
    recorder.catch_up(state)  # as a message does
    assert counted(recorder) == recount(state)
    # The message's totals are the same counts over all groups.
    totals = message(state, recorder, Cursor(), ABOUT, 0.0, 0.0, first=True)["tasks"]
    expected = Counter(ts.state for ts in state.tasks.values())
    assert totals == {s: expected.get(s, 0) for s in STATES}


def finish(h: Harness, key: str, duration: float = 0.0, now: float = 0.0, nbytes: int = 8) -> None:
    h.handle(
        ev.TaskFinished(
            worker=h.processing_on(key),
            key=key,
            run_id=h.run_id(key),
            nbytes=nbytes,
            type_name="int",
            duration=duration,
            now=now,
        )
    )


def fail(h: Harness, key: str, duration: float = 0.0, now: float = 0.0) -> None:
    h.handle(
        ev.TaskErred(
            worker=h.processing_on(key),
            key=key,
            run_id=h.run_id(key),
            exception=b"e",
            traceback=b"",
            text="boom",
            duration=duration,
            now=now,
        )
    )


# ------------------------------------------------------------------ counting


def test_attach_counts_the_tasks_there_are_then_follows_them() -> None:
    h, recorder = watched()
    h.add_worker("w1", nthreads=2)
    keys = [f"inc-{i}" for i in range(6)] + ["('sum-0123456789abcdef', 0)"]
    h.submit("c", [spec(k) for k in keys], wanted=keys)
    finish(h, "inc-0")
    fail(h, "inc-1")
    assert recorder.groups == {}  # nobody watches: nothing is counted
    recorder.attach(h.state)
    assert recorder.active
    assert counted(recorder) == recount(h.state)
    assert counted(recorder)["inc"] == {"memory": 1, "erred": 1, "processing": 4}
    assert counted(recorder)["sum"] == {"processing": 1}
    h.run_to_completion()
    check_counts(h.state, recorder)
    assert recorder.groups["inc"].row("inc") == {
        "name": "inc",
        "waiting": 0,
        "queued": 0,
        "processing": 0,
        "memory": 5,
        "erred": 1,
        "released": 0,
        "done": 5,
        "total": 6,
    }
    # Attaching again starts over: nothing is counted twice.
    recorder.attach(h.state)
    check_counts(h.state, recorder)


def test_detach_forgets_everything() -> None:
    h, recorder = watched()
    h.add_worker("w1")
    recorder.attach(h.state)
    h.submit("c", [spec("inc-1")], wanted=["inc-1"])
    finish(h, "inc-1", duration=0.5, now=3.0)
    recorder.catch_up(h.state)
    assert recorder.groups and recorder.stream
    seq = recorder.stream_seq
    recorder.detach()
    assert not recorder.active
    assert recorder.groups == {} and not recorder.stream and not recorder._keys
    # What happens meanwhile is not followed (the shell unhooks it)...
    h.submit("c", [spec("inc-2")], wanted=["inc-2"])
    assert recorder.groups == {}
    # ... and the next viewer's attach counts it all again; stream numbers only go up.
    recorder.attach(h.state)
    check_counts(h.state, recorder)
    finish(h, "inc-2", now=4.0)
    assert recorder.stream_seq == seq + 1


def test_done_and_failed_survive_the_tasks_being_forgotten() -> None:
    h, recorder = watched()
    h.add_worker("w1", nthreads=4)
    recorder.attach(h.state)
    keys = [f"inc-{i}" for i in range(4)]
    h.submit("c", [spec(k) for k in keys], wanted=keys)
    for k in keys[:3]:
        finish(h, k)
    fail(h, keys[3])
    recorder.catch_up(h.state)
    before = recorder.groups["inc"].row("inc")
    assert (before["done"], before["erred"], before["total"]) == (3, 1, 4)
    # The client lets go of its futures: the tasks are forgotten, the progress stays.
    h.release("c", *keys)
    assert h.state.tasks == {}
    check_counts(h.state, recorder)
    after = recorder.groups["inc"].row("inc")
    assert after["memory"] == 0
    assert (after["done"], after["erred"], after["total"]) == (3, 1, 4), after


def test_done_counts_a_result_forgotten_after_its_dependent_finished() -> None:
    h, recorder = watched()
    h.add_worker("w1")
    recorder.attach(h.state)
    # a is an input only: released once b has it, forgotten with b.
    h.submit("c", [spec("a-1"), spec("b-1", "a-1")], wanted=["b-1"])
    finish(h, "a-1")
    finish(h, "b-1")
    assert h.task_state("a-1") == "released"
    h.release("c", "b-1")
    assert h.state.tasks == {}
    recorder.catch_up(h.state)
    rows = {name: g.row(name) for name, g in recorder.groups.items()}
    assert (rows["a"]["done"], rows["a"]["total"]) == (1, 1), rows
    assert (rows["b"]["done"], rows["b"]["total"]) == (1, 1), rows


def test_a_task_that_never_moved_is_counted() -> None:
    """An input submitted with a dependent that errs at once (another of its inputs had
    erred) enters the graph released, and stays so: no transition ever names it."""
    h, recorder = watched()
    h.add_worker("w1")
    recorder.attach(h.state)
    h.submit("c", [spec("x-1")], wanted=["x-1"])
    fail(h, "x-1")
    h.submit("c", [spec("y-1"), spec("z-1", "x-1", "y-1")], wanted=["z-1"])
    assert (h.task_state("y-1"), h.task_state("z-1")) == ("released", "erred")
    check_counts(h.state, recorder)


def test_a_restart_forgets_every_task_on_the_dashboard_too() -> None:
    h, recorder = watched()
    h.add_worker("w1")
    recorder.attach(h.state)
    h.submit("c", [spec("inc-1"), spec("inc-2")], wanted=["inc-1", "inc-2"])
    finish(h, "inc-1")
    h.handle(ev.RestartRequested())
    assert h.state.tasks == {}
    check_counts(h.state, recorder)
    # The same key submitted again after the restart is a new task.
    h.submit("c", [spec("inc-1")], wanted=["inc-1"])
    check_counts(h.state, recorder)


class Oracle:
    """Per group, the tasks forgotten after they finished (last reached memory) or erred,
    kept apart from the recorder, from the transitions since ``attach``."""

    def __init__(self, state: SchedulerState) -> None:
        self.last = {k: ts.state for k, ts in state.tasks.items() if ts.state in (MEMORY, ERRED)}
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def transition(self, ts: TaskState, start: str, finish: str) -> None:
        if finish in (MEMORY, ERRED):
            self.last[ts.key] = finish
        elif finish in (WAITING, QUEUED, PROCESSING):
            self.last.pop(ts.key, None)
        elif finish == FORGOTTEN:
            was = self.last.pop(ts.key, None)
            if was == MEMORY:
                self.done[key_group(ts.key)] += 1
            elif was == ERRED:
                self.failed[key_group(ts.key)] += 1


GROUPS = ("inc", "add", "sum", "load-data")


class WatchedWalk(Walk):
    """The core's random walk (tests/core/test_random_simulation.py) with a dashboard
    recorder attached part-way, keys named as task groups, and the recount checked after
    every step. No restarts (test_a_restart_forgets_every_task_on_the_dashboard_too)."""

    def __init__(self, seed: int, log: int | None = None) -> None:
        """``log``: the core's transition log holds this many moves (the recorder reads
        it in batches from ``model.MIN_LOG`` up, else takes every move)."""
        super().__init__(seed)
        del self.weights[self.restart]
        if log is not None:
            self.sim.state.log = deque(maxlen=log)
        self.recorder = Recorder()
        watch(self.sim.state, self.recorder)
        self.oracle: Oracle | None = None
        hooked = self.sim.state.on_transition
        assert hooked is not None

        def both(ts: TaskState, start: str, finish: str) -> None:
            hooked(ts, start, finish)
            if self.oracle is not None:
                self.oracle.transition(ts, start, finish)

        self.sim.state.on_transition = both

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        group = self.rng.choice(GROUPS)
        if self.rng.random() < 0.3:
            return f"('{group}-{self.counter:08x}abcdef', {self.counter})"
        return f"{group}-{self.counter}"

    def attach(self) -> None:
        self.log("attach()")
        self.recorder.attach(self.sim.state)
        self.oracle = Oracle(self.sim.state)

    def watch_steps(self, steps: int, check: Callable[[], None]) -> None:
        actions = list(self.weights)
        weights = [self.weights[a] for a in actions]
        attach_at = self.rng.randrange(steps // 2)
        for step in range(steps):
            if step == attach_at:
                self.attach()
            elif self.recorder.active and self.rng.random() < 0.02:
                self.log("detach()")
                self.recorder.detach()
                self.oracle = None
            elif not self.recorder.active and step > attach_at and self.rng.random() < 0.2:
                self.attach()
            self.rng.choices(actions, weights)[0]()
            if self.recorder.active:
                check()
        if not self.recorder.active:
            self.attach()
        self.sim.settle()
        check()
        # Every future let go: every task forgotten.
        for client, keys in sorted(self.sim.wants.items()):
            self.sim.release(client, sorted(keys))
        self.sim.settle()
        check()
        assert recount(self.sim.state) == {}, self.sim.state.tasks


def walk(seed: int, check: Callable[[WatchedWalk], None], log: int | None = None) -> None:
    w = WatchedWalk(seed, log)
    try:
        w.watch_steps(150, lambda: check(w))
    except Exception as exc:
        story = "\n".join(w.actions[-40:])
        raise AssertionError(f"seed {seed} failed: {exc!r}\nlast actions:\n{story}") from exc


@pytest.mark.parametrize("block", range(2))
def test_counts_by_state_match_a_recount_on_random_walks(block: int) -> None:
    for seed in range(block * 20, (block + 1) * 20):
        walk(seed, lambda w: check_counts(w.sim.state, w.recorder))


@pytest.mark.parametrize("log", ["short", "overflowing"])
def test_counts_match_whatever_the_log_holds(log: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log shorter than ``MIN_LOG``: the recorder takes every move from the hook. A log
    read in batches that overflows (more moves in one ``handle`` than it holds): the
    recorder counts afresh, keeping what the groups' forgotten tasks had done."""
    if log == "overflowing":
        monkeypatch.setattr(model, "MIN_LOG", 2)
    for seed in range(10):
        walk(seed, lambda w: check_counts(w.sim.state, w.recorder), log=2)


def test_an_overflowing_log_keeps_what_forgotten_tasks_did() -> None:
    h, recorder = watched()
    h.add_worker("w1", nthreads=2)
    h.state.log = deque(maxlen=model.MIN_LOG)
    recorder.attach(h.state)
    assert recorder.hook is None
    h.submit("c", [spec("inc-0"), spec("inc-1")], wanted=["inc-0", "inc-1"])
    finish(h, "inc-0")
    fail(h, "inc-1")
    h.release("c", "inc-0", "inc-1")
    recorder.catch_up(h.state)
    group = recorder.groups["inc"]
    assert (group.done, group.failed, group.gone) == (1, 1, 2)
    # More moves in one batch than the log holds.
    keys = [f"inc-{i}" for i in range(2, 2 + model.MIN_LOG)]
    h.submit("c", [spec(k) for k in keys], wanted=keys)
    check_counts(h.state, recorder)
    group = recorder.groups["inc"]
    assert (group.done, group.failed, group.gone) == (1, 1, 2)


@pytest.mark.parametrize("log", [None, 2])
def test_done_and_failed_match_on_random_walks(log: int | None) -> None:
    def check(w: WatchedWalk) -> None:
        assert w.oracle is not None
        w.recorder.catch_up(w.sim.state)
        live: dict[str, Counter[str]] = {}
        for key, last in w.oracle.last.items():
            live.setdefault(key_group(key), Counter())[last] += 1
        for name, group in w.recorder.groups.items():
            done = w.oracle.done[name] + live.get(name, Counter())[MEMORY]
            failed = w.oracle.failed[name] + live.get(name, Counter())[ERRED]
            gone = w.oracle.done[name] + w.oracle.failed[name]
            assert (group.done, group.failed, group.gone) == (done, failed, gone), name

    for seed in range(20):
        walk(seed, check, log)


def test_old_finished_groups_are_trimmed_past_the_limit() -> None:
    h, recorder = watched(validate=False)
    h.add_worker("w1", nthreads=4)
    recorder.attach(h.state)
    n = model.KEPT_GROUPS + 20
    for i in range(n):
        key = f"g{i}x-1"
        h.submit("c", [spec(key)], wanted=[key])
        h.handle(ev.TaskErred(worker="w1", key=key, run_id=h.run_id(key), exception=b"",
                              traceback=b"", text="", now=float(i)))  # fmt: skip
        h.release("c", key)
        if i % 7 == 0:
            recorder.catch_up(h.state)  # now and then, as messages do
    recorder.catch_up(h.state)
    assert len(recorder.groups) == model.KEPT_GROUPS
    # The oldest finished ones went; the newest are kept with their counts.
    assert f"g{n - 1}x" in recorder.groups and "g0x" not in recorder.groups
    assert recorder.groups[f"g{n - 1}x"].row(f"g{n - 1}x")["erred"] == 1
    # A group with tasks left is never trimmed, however old.
    h2, rec2 = watched(validate=False)
    h2.add_worker("w1")
    rec2.attach(h2.state)
    h2.submit("c", [spec("old-1")], wanted=["old-1"])
    for i in range(model.KEPT_GROUPS + 5):
        key = f"n{i}y-1"
        h2.submit("c", [spec(key)], wanted=[key])
        h2.release("c", key)
    rec2.catch_up(h2.state)
    assert "old" in rec2.groups and len(rec2.groups) <= model.KEPT_GROUPS


def test_group_row() -> None:
    # 2 in memory and 3 forgotten after they finished; 1 erred and 1 forgotten so.
    group = Group(states={"memory": 2, "processing": 1, "erred": 1}, done=5, failed=2, gone=4)
    assert group.row("x") == {
        "name": "x",
        "waiting": 0,
        "queued": 0,
        "processing": 1,
        "memory": 2,
        "erred": 2,
        "released": 0,
        "done": 5,
        "total": 8,
    }


# -------------------------------------------------------------------- stream


def test_stream_items_from_finished_and_failed_runs() -> None:
    h, recorder = watched()
    h.add_worker("w1", nthreads=3)
    recorder.attach(h.state)
    h.submit("c", [spec("inc-1"), spec("inc-2"), spec("bad-1")], wanted=["inc-1", "inc-2", "bad-1"])
    finish(h, "inc-1", duration=0.5, now=10.0)
    fail(h, "bad-1", duration=0.25, now=11.0)
    # A negative duration (a clock that went back) is no run of negative length.
    finish(h, "inc-2", duration=-1.0, now=12.0)
    # Other events are no stream items.
    h.handle(ev.TasksStarted(worker="w1", keys=("inc-1",), now=13.0))
    runs = list(recorder.stream)
    assert [(r.seq, r.key, r.group, r.worker, r.start, r.stop, r.ok) for r in runs] == [
        (1, "inc-1", "inc", "w1", 9.5, 10.0, True),
        (2, "bad-1", "bad", "w1", 10.75, 11.0, False),
        (3, "inc-2", "inc", "w1", 12.0, 12.0, True),
    ]
    assert recorder.stream_seq == 3
    first = message(h.state, recorder, Cursor(), ABOUT, now=100.0, offset=1000.0, first=True)
    assert first["stream"] == [
        {"key": k, "group": g, "worker": "w1", "start": start, "stop": stop, "ok": ok}
        for k, g, start, stop, ok in (
            ("inc-1", "inc", 1009.5, 1010.0, True),
            ("bad-1", "bad", 1010.75, 1011.0, False),
            ("inc-2", "inc", 1012.0, 1012.0, True),
        )
    ]


def test_deltas_carry_only_what_is_new() -> None:
    h, recorder = watched()
    h.handle(ev.ClientConnected(client="c"))
    h.add_worker("w1", nthreads=2)
    recorder.attach(h.state)
    h.submit("c", [spec("inc-1"), spec("inc-2")], wanted=["inc-1", "inc-2"])
    finish(h, "inc-1", duration=1.0, now=5.0)
    cursor = Cursor()
    first = message(h.state, recorder, cursor, ABOUT, now=50.0, offset=100.0, first=True)
    assert [s["key"] for s in first["stream"]] == ["inc-1"]
    assert [e["action"] for e in first["events"]] == ["worker-added"]
    assert first["events"][0]["time"] == h.state.events[0]["time"] + 100.0
    assert h.state.events[0]["time"] == 0.0  # the core's own record is not changed
    assert (cursor.stream, cursor.events) == (1, 1)
    # Nothing new: an empty delta, but the state as it is now.
    quiet = message(h.state, recorder, cursor, ABOUT, now=51.0, offset=100.0, first=False)
    assert quiet["stream"] == [] and quiet["events"] == [] and quiet["stream_dropped"] == 0
    assert quiet["tasks"] == first["tasks"] and quiet["groups"] == first["groups"]
    assert quiet["now"] == 51.0
    # New runs and events: only they.
    finish(h, "inc-2", now=6.0)
    h.handle(ev.WorkerAdded(worker="w2", now=7.0))
    delta = message(h.state, recorder, cursor, ABOUT, now=52.0, offset=100.0, first=False)
    assert [s["key"] for s in delta["stream"]] == ["inc-2"]
    assert [(e["action"], e["worker"], e["time"]) for e in delta["events"]] == [
        ("worker-added", "w2", 107.0)
    ]
    assert delta["tasks"]["memory"] == 2 and delta["tasks"]["processing"] == 0
    # Each viewer has its own cursor: a new one gets everything again.
    again = message(h.state, recorder, Cursor(), ABOUT, now=53.0, offset=100.0, first=True)
    assert [s["key"] for s in again["stream"]] == ["inc-1", "inc-2"]
    assert len(again["events"]) == 2


def test_message_contents() -> None:
    h, recorder = watched()
    h.handle(ev.ClientConnected(client="c"))
    h.handle(ev.WorkerAdded(worker="tcp://b:1", name="b", nthreads=2, memory_limit=100, now=1.0))
    h.handle(ev.WorkerAdded(worker="tcp://a:1", name="a", nthreads=1, now=1.0))
    h.handle(ev.HeartbeatReceived(worker="tcp://a:1", metrics={"cpu": 50, "rss": 7}, now=2.0))
    h.handle(ev.WorkerPaused(worker="tcp://b:1", paused=True, now=2.5))
    recorder.attach(h.state)
    h.submit("c", [spec("inc-1")], wanted=["inc-1"])
    h.tick(4.0)
    body = message(h.state, recorder, Cursor(), ABOUT, now=1e9, offset=0.0, first=True)
    assert body["version"] == 1 and body["now"] == 1e9
    assert body["scheduler"] == {**ABOUT, "recovering": False, "clients": 1}
    a, b = body["workers"]  # sorted by name
    assert (a["address"], a["name"], a["status"], a["nthreads"]) == ("tcp://a:1", "a", "running", 1)
    assert (a["processing"], a["cpu"], a["rss"], a["last_seen"]) == (1, 50, 7, 2.0)
    assert (b["address"], b["status"], b["memory_limit"], b["last_seen"]) == (
        "tcp://b:1",
        "paused",
        100,
        1.5,
    )
    assert body["counts"] == h.state.counts
    assert body["groups"] == [recorder.groups["inc"].row("inc")]
    assert body["groups_more"] == 0 and body["stream_dropped"] == 0
    # All of it is plain data for the page.
    assert msgspec.json.decode(msgspec.json.encode(body)) == body


# -------------------------------------------------------------------- limits


def test_groups_past_the_limit_are_counted_not_sent() -> None:
    h, recorder = watched(validate=False)
    h.add_worker("w1", nthreads=8)
    recorder.attach(h.state)
    names = [f"group{i}x" for i in range(MAX_GROUPS + 50)]
    h.submit("c", [spec(f"{n}-1") for n in names], wanted=[f"{n}-1" for n in names])
    finish(h, h.processing("w1")[0])
    body = message(h.state, recorder, Cursor(), ABOUT, 0.0, 0.0, first=True)
    assert len(body["groups"]) == MAX_GROUPS and body["groups_more"] == 50
    # The most recently active first.
    ranked = sorted(recorder.groups, key=lambda g: -recorder.groups[g].touched)
    assert [r["name"] for r in body["groups"]] == ranked[:MAX_GROUPS]
    last = h.state.log[-1][0]
    assert body["groups"][0]["name"] == key_group(last)
    # The totals still count every group.
    assert sum(body["tasks"].values()) == len(names)


def test_stream_limits() -> None:
    recorder = Recorder()
    state = SchedulerState()
    recorder.attach(state)

    def runs(n: int, start: int) -> None:
        for i in range(start, start + n):
            recorder.follow(
                state,
                (ev.TaskFinished(worker="w", key=f"inc-{i}", run_id=1, nbytes=1, now=float(i)),),
            )

    runs(MAX_STREAM + 500, 0)
    cursor = Cursor()
    # A first message has the latest FIRST_STREAM items, and drops nothing it owes.
    first = message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=True)
    assert [s["key"] for s in first["stream"]] == [
        f"inc-{i}" for i in range(MAX_STREAM + 500 - FIRST_STREAM, MAX_STREAM + 500)
    ]
    assert first["stream_dropped"] == 0
    # A delta has the latest MAX_STREAM new ones, and says how many it left out.
    runs(MAX_STREAM + 300, 10_000)
    delta = message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=False)
    assert len(delta["stream"]) == MAX_STREAM and delta["stream_dropped"] == 300
    assert delta["stream"][-1]["key"] == f"inc-{10_000 + MAX_STREAM + 300 - 1}"
    assert delta["stream"][0]["key"] == f"inc-{10_000 + 300}"
    assert message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=False)["stream"] == []
    # The recorder keeps STREAM_LENGTH items at most.
    runs(STREAM_LENGTH + 10, 20_000)
    assert len(recorder.stream) == STREAM_LENGTH
    assert recorder.stream[0].key == "inc-20010"


def test_the_stream_keeps_every_nth_run_past_its_rate() -> None:
    """Past STREAM_RATE runs a second (the core's clock), the next second keeps every
    n-th run only, spread over it, and viewers are told how many were left out."""
    recorder = Recorder()
    state = SchedulerState()
    recorder.attach(state)
    cursor = Cursor()
    message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=True)
    rate = 20 * model.STREAM_RATE
    for second in range(3):
        for i in range(rate):
            now = second + i / rate
            run = ev.TaskFinished(worker="w", key=f"inc-{second}-{i}", run_id=1, nbytes=1, now=now)
            recorder.follow(state, (run,))
    # Second 0: all kept (nothing seen before); seconds 1 and 2: every 20th.
    assert len(recorder.stream) == rate + 2 * model.STREAM_RATE
    kept = [r.key for r in recorder.stream if r.key.startswith("inc-2-")]
    assert kept == [f"inc-2-{i}" for i in range(19, rate, 20)]
    assert recorder.skipped == 2 * (rate - model.STREAM_RATE)
    delta = message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=False)
    assert len(delta["stream"]) == MAX_STREAM
    assert delta["stream_dropped"] == 3 * rate - MAX_STREAM


def test_stream_dropped_counts_items_that_fell_out_of_the_recorder() -> None:
    """A viewer that fell STREAM_LENGTH items or more behind is told how many it missed."""
    recorder = Recorder()
    state = SchedulerState()
    recorder.attach(state)
    cursor = Cursor()
    message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=True)
    new = STREAM_LENGTH + 1_000
    for i in range(new):
        recorder.follow(state, (ev.TaskFinished(worker="w", key=f"inc-{i}", run_id=1, nbytes=1),))
    delta = message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=False)
    assert len(delta["stream"]) == MAX_STREAM
    assert delta["stream_dropped"] == new - MAX_STREAM


def test_a_first_message_has_the_latest_events() -> None:
    h = Harness(validate=False)
    for i in range(FIRST_EVENTS + 100):
        h.add_worker(f"w{i}")
    recorder = Recorder()
    recorder.attach(h.state)
    cursor = Cursor()
    first = message(h.state, recorder, cursor, ABOUT, 0.0, 0.0, first=True)
    assert [e["seq"] for e in first["events"]] == list(range(101, FIRST_EVENTS + 101))
    assert message(h.state, recorder, cursor, ABOUT, 0.0, 0.0, first=False)["events"] == []
    for i in range(3):
        h.add_worker(f"x{i}")
    delta = message(h.state, recorder, cursor, ABOUT, 0.0, 0.0, first=False)
    assert [e["worker"] for e in delta["events"]] == ["x0", "x1", "x2"]


def test_a_message_with_100_000_tasks_in_flight() -> None:
    """Built on the scheduler's loop: it must not block it. The time is printed (run
    with -s), not asserted; the counts are."""
    state = SchedulerState()
    for i in range(16):
        state.handle(ev.WorkerAdded(worker=f"tcp://w:{i}", nthreads=8, now=1.0))
    groups = [f"stage{j}x" for j in range(200)]
    specs = tuple(
        ev.TaskSpec(key=f"{groups[i % 200]}-{i}", run_spec=("run", i)) for i in range(100_000)
    )
    state.handle(ev.TasksSubmitted(client="c", tasks=specs, wanted=tuple(s.key for s in specs)))
    recorder = Recorder()
    started = time.perf_counter()
    recorder.attach(state)
    attached = time.perf_counter()
    for i in range(STREAM_LENGTH):
        recorder.follow(
            state, (ev.TaskFinished(worker="tcp://w:0", key=f"old-{i}", run_id=1, nbytes=1),)
        )
    cursor = Cursor()
    first_started = time.perf_counter()
    first = message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=True)
    built = time.perf_counter()
    encoded = msgspec.json.encode(first)
    done = time.perf_counter()
    for i in range(MAX_STREAM):
        recorder.follow(
            state, (ev.TaskFinished(worker="tcp://w:1", key=f"new-{i}", run_id=1, nbytes=1),)
        )
    delta_started = time.perf_counter()
    delta = msgspec.json.encode(message(state, recorder, cursor, ABOUT, 0.0, 0.0, first=False))
    delta_done = time.perf_counter()
    print(
        f"\n100,000 tasks in {len(groups)} groups: attach {1e3 * (attached - started):.1f} ms, "
        f"first message {1e3 * (built - first_started):.2f} ms + encoding "
        f"{1e3 * (done - built):.2f} ms ({len(encoded):,} bytes); delta with "
        f"{MAX_STREAM} stream items {1e3 * (delta_done - delta_started):.2f} ms "
        f"({len(delta):,} bytes)"
    )
    assert first["tasks"]["queued"] + first["tasks"]["processing"] == 100_000
    assert first["tasks"]["processing"] == sum(len(ws.processing) for ws in state.workers.values())
    assert len(first["groups"]) == MAX_GROUPS and first["groups_more"] == 100
    assert sum(r["total"] for r in first["groups"]) == 100_000 * MAX_GROUPS // 200
    assert len(first["stream"]) == FIRST_STREAM


def test_random_sequences_of_views_are_consistent() -> None:
    """Several viewers reading at random moments each see every stream item exactly once
    (or counted as dropped), in order."""
    rng = random.Random(7)
    sim = SimCluster()
    recorder = Recorder()
    watch(sim.state, recorder)
    recorder.attach(sim.state)
    for w in ("w1", "w2"):
        sim.add_worker(w, nthreads=2)
    cursors = [Cursor() for _ in range(3)]
    seen: list[list[str]] = [[] for _ in cursors]
    dropped = [0 for _ in cursors]
    firsts = [True for _ in cursors]
    for step in range(300):
        key = f"inc-{step}"
        sim.submit("c", [spec(key)], [key])
        if rng.random() < 0.7:
            running = sim.running()
            if running:
                sim.finish(*running[0])
        for i, cursor in enumerate(cursors):
            if rng.random() < 0.2:
                body = message(sim.state, recorder, cursor, ABOUT, 0.0, 0.0, first=firsts[i])
                firsts[i] = False
                seen[i] += [s["key"] for s in body["stream"]]
                dropped[i] += body["stream_dropped"]
    everything = [r.key for r in recorder.stream]
    for i, cursor in enumerate(cursors):
        body = message(sim.state, recorder, cursor, ABOUT, 0.0, 0.0, first=firsts[i])
        seen[i] += [s["key"] for s in body["stream"]]
        assert seen[i] == everything
        assert dropped[i] == 0
