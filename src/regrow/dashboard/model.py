"""What the dashboard shows, built from the scheduler core's state: pure, no IO.

Owns: the ``Recorder``, which keeps what the core does not (tasks by group and state,
counted as they move; the task stream: which worker ran what, when), and only while
someone watches (``attach`` counts the tasks once; ``detach`` drops it all: a scheduler
nobody looks at pays nothing); and ``snapshot``/``delta``, the JSON-ready messages the
page receives (documented in docs/dashboard.md). Groups are a key's prefix, as
``core.queries.key_group`` names them.

Must not: change the core's state, read a clock (the shell passes ``now`` and the
offset of its wall clock from the core's), or send anything.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from regrow.core import events as ev
from regrow.core.queries import client_count, key_group
from regrow.core.transitions import (
    ERRED,
    FORGOTTEN,
    MEMORY,
    PROCESSING,
    RELEASED,
    moves_since,
)

if TYPE_CHECKING:
    from regrow.core.records import TaskState
    from regrow.core.scheduler_state import SchedulerState

# What one message holds at most: groups (the most recently active), new stream items.
MAX_GROUPS = 100
MAX_STREAM = 2_000
# What a first message holds: the latest stream items and events.
FIRST_STREAM = 1_000
FIRST_EVENTS = 500
# Groups kept once finished and forgotten (the oldest such go first past this).
KEPT_GROUPS = 1_000
# The task-stream items kept for viewers that join later.
STREAM_LENGTH = 10_000
# Task runs a second the stream keeps at most (the rest are counted, not kept): the
# page keeps 10,000 items, enough for its 60 s window at this rate; at more, thousands
# of runs under one pixel look no different.
STREAM_RATE = 160
# The shortest transition log read in batches (``Recorder.follow``); below it, the
# recorder is called on every move.
MIN_LOG = 10_000

_STATES = ("waiting", "queued", "processing", "memory", "erred", "released")
_RUNNING = frozenset(("waiting", "queued", "processing"))
# Moves that make a group recently active (it is among the 100 shown).
_ACTIVE = frozenset((PROCESSING, MEMORY, ERRED))


@dataclass
class Group:
    """Tasks of one group: the live ones by state; ``done``/``failed``: those that
    finished or erred, live or forgotten since (progress counts a result released by its
    client as done, as dask's does); ``gone``: the forgotten among those."""

    states: dict[str, int] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    gone: int = 0
    touched: int = 0  # the recorder's change count when it last changed

    def row(self, name: str) -> dict[str, Any]:
        s = self.states
        out: dict[str, Any] = {"name": name}
        for state in _STATES:
            out[state] = s.get(state, 0)
        out["done"] = self.done
        out["erred"] = self.failed
        out["total"] = sum(s.values()) + self.gone
        return out


class Run(NamedTuple):
    """One finished task run: the task stream's item (core clock). A tuple: one is made
    per task while someone watches, so it must cost little."""

    seq: int
    key: str
    group: str
    worker: str
    start: float
    stop: float
    ok: bool


# What a key last settled as, for its group's done and failed counts.
_RAN, _DONE, _FAILED = 0, 1, 2


class Recorder:
    """Follows the core while someone watches. It reads the core's transition log when a
    message is built (``catch_up``) rather than being called on every transition: one
    loop over thousands of moves costs a fraction of a call per move. Where the log is
    too short to hold a busy batch (``transition_log_length`` below ``MIN_LOG``), it
    takes the core's ``on_transition`` hook instead (``hook``)."""

    def __init__(self) -> None:
        self.active = False
        self.groups: dict[str, Group] = {}
        # A followed key: 4 x its group's number (in ``_order``) + _RAN / _DONE / _FAILED.
        # An int, not an object: 100,000 keys must cost the garbage collector nothing to
        # walk.
        self._keys: dict[str, int] = {}
        self._order: list[Group] = []
        self._names: list[str] = []
        self._number: dict[str, int] = {}
        self.changes = 0
        self.stream: deque[Run] = deque(maxlen=STREAM_LENGTH)
        self._stream_seq = 0
        # Task runs left out of the stream under load (``_ran``), in all.
        self.skipped = 0
        self._stride = 1
        self._tick = 0
        self._window = (0.0, 0)  # (core time it ends, runs seen by then)
        self._seen = 0  # runs seen in all
        # The core's ``moves`` already counted; the per-move hook where the log is short.
        self._moves = 0
        self.hook: Callable[[TaskState, str, str], None] | None = None
        self._due = MIN_LOG // 2  # new moves that are counted at once (half the log)

    # ------------------------------------------------------------ life
    def attach(self, state: SchedulerState) -> None:
        """Someone looks: count the tasks as they are now, then follow them."""
        self.detach()
        self.active = True
        maxlen = state.log.maxlen
        self.hook = self.transition if maxlen is not None and maxlen < MIN_LOG else None
        self._due = (maxlen or MIN_LOG) // 2
        self._recount(state)

    def detach(self) -> None:
        """Nobody looks: forget everything (``attach`` counts again)."""
        self.active = False
        self.hook = None
        self._forget_groups()
        self.stream.clear()

    def _forget_groups(self) -> None:
        self.groups.clear()
        self._keys.clear()
        self._order.clear()
        self._names.clear()
        self._number.clear()

    def _recount(self, state: SchedulerState, keep: bool = False) -> None:
        """Count the tasks there are afresh. ``keep``: the groups' counts of forgotten
        tasks stay (their runs happened); a task released after it finished, not yet
        forgotten, then counts as not done."""
        kept: dict[str, tuple[int, int, int]] = {}
        if keep:
            live = [[0, 0] for _ in self._order]
            for code in self._keys.values():
                if code & 3:
                    live[code >> 2][(code & 3) - 1] += 1
            for name, number in self._number.items():
                g = self._order[number]
                kept[name] = (g.done - live[number][0], g.failed - live[number][1], g.gone)
        self._forget_groups()
        self._count_new(state, state.tasks)
        for name, (done, failed, gone) in kept.items():
            if gone:
                known = self._number.get(name)
                g = self._order[self._numbered(name) if known is None else known]
                g.done += done
                g.failed += failed
                g.gone += gone
        self._moves = state.moves

    # -------------------------------------------------------- following
    def follow(self, state: SchedulerState, events: Iterable[ev.Event]) -> None:
        """The core handled ``events``: add the finished and failed runs to the task
        stream, and count again what a restart forgot or a restored graph made (neither
        makes transitions). The moves themselves are counted when a message is built
        (``catch_up``), or here once half the log is new: a few thousand at a time, not
        the one or two of each ``handle``."""
        recount = False
        for event in events:
            kind = type(event)
            if kind is ev.TaskFinished or kind is ev.TaskErred:
                self._ran(cast("ev.TaskFinished | ev.TaskErred", event), kind is ev.TaskFinished)
            elif kind is ev.RestartRequested or kind is ev.StateRestored:
                recount = True
        if recount:
            self._recount(state)
        elif state.moves - self._moves > self._due:
            self.catch_up(state)

    def catch_up(self, state: SchedulerState) -> None:
        """Count the moves the core logged since the last call, in one loop."""
        seen, self._moves = self._moves, state.moves
        if self.hook is None:
            batch = moves_since(state.log, state.moves, seen)
            if batch is None:
                # More moves than the log holds (one huge batch): count afresh.
                self._recount(state, keep=True)
                return
            self._moved(batch)
        if len(self._keys) != len(state.tasks):
            # Tasks made without a move yet (submitted, released, not yet wanted).
            self._count_new(state, state.tasks)

    def transition(self, ts: TaskState, start: str, finish: str) -> None:
        """The core's ``on_transition`` (where its log is short): one move."""
        self._moved(((ts.key, start, finish, ""),))

    def _moved(self, batch: Iterable[tuple[str, str, str, str]]) -> None:
        """Count moves ``(key, start, finish, stimulus)``, in the order they were made."""
        keys = self._keys
        order = self._order
        for key, start, finish, _ in batch:
            code = keys.get(key)
            if code is None:
                if start != RELEASED:
                    continue  # made and moved before this recorder looked: counted then
                # New: it was made released and not counted yet.
                code = self._code(key, _RAN)
                group = order[code >> 2]
                states = group.states
            else:
                group = order[code >> 2]
                states = group.states
                states[start] -= 1
            settled = code & 3
            if finish == FORGOTTEN:
                del keys[key]
                self.changes += 1
                group.touched = self.changes
                if settled:
                    group.gone += 1
                if len(self.groups) > KEPT_GROUPS:
                    self._trim()
                    keys = self._keys
                    order = self._order
                continue
            states[finish] = states.get(finish, 0) + 1
            if finish in _ACTIVE:
                # How recently it was active: the groups shown are the latest 100.
                self.changes += 1
                group.touched = self.changes
            if finish == MEMORY:
                if settled != _DONE:
                    group.done += 1
                    if settled:
                        group.failed -= 1
                    keys[key] = code - settled + _DONE
            elif finish == ERRED:
                if settled != _FAILED:
                    group.failed += 1
                    if settled:
                        group.done -= 1
                    keys[key] = code - settled + _FAILED
            elif settled and finish in _RUNNING:
                # Computed again (its result was lost, or it is retried): not settled now.
                if settled == _DONE:
                    group.done -= 1
                else:
                    group.failed -= 1
                keys[key] = code - settled

    def _ran(self, event: ev.TaskFinished | ev.TaskErred, ok: bool) -> None:
        """A finished or failed run: a task-stream item. Past ``STREAM_RATE`` runs a
        second (of the core's clock) only every n-th is kept, n from the last second's
        rate, the others counted in ``skipped``: the page could not draw them apart."""
        self._seen += 1
        now = event.now
        if now >= self._window[0]:
            seen = self._window[1]
            self._stride = max(1, -(-(self._seen - seen) // STREAM_RATE))
            self._window = (now + 1.0, self._seen)
        self._tick += 1
        if self._tick < self._stride:
            self.skipped += 1
            return
        self._tick = 0
        self._stream_seq += 1
        key = event.key
        code = self._keys.get(key)
        self.stream.append(
            Run(
                self._stream_seq,
                key,
                self._names[code >> 2] if code is not None else key_group(key),
                event.worker,
                now - max(0.0, event.duration),
                now,
                ok,
            )
        )

    def _code(self, key: str, settled: int) -> int:
        name = key_group(key)
        number = self._number.get(name)
        if number is None:
            number = self._numbered(name)
        code = self._keys[key] = number * 4 + settled
        return code

    def _numbered(self, name: str) -> int:
        """A number for group ``name``, made now (with the group, if it is new)."""
        number = self._number[name] = len(self._order)
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Group()
        self._order.append(group)
        self._names.append(name)
        return number

    def _count_new(self, state: SchedulerState, keys: Iterable[str]) -> None:
        tasks = state.tasks
        for key in keys:
            ts = tasks.get(key)
            if ts is None or key in self._keys:
                continue
            settled = _DONE if ts.state == MEMORY else _FAILED if ts.state == ERRED else _RAN
            group = self._order[self._code(key, settled) >> 2]
            group.states[ts.state] = group.states.get(ts.state, 0) + 1
            if settled == _DONE:
                group.done += 1
            elif settled == _FAILED:
                group.failed += 1

    @property
    def stream_seq(self) -> int:
        """The number of the last stream item made (they only go up)."""
        return self._stream_seq

    def _trim(self) -> None:
        """Past ``KEPT_GROUPS``, drop the groups longest finished (no live task)."""
        finished = sorted(
            (g.touched, name) for name, g in self.groups.items() if not any(g.states.values())
        )
        for _, name in finished[: len(self.groups) - KEPT_GROUPS]:
            del self.groups[name]
            del self._number[name]
        if len(self._order) > 2 * KEPT_GROUPS:
            # Number the groups kept afresh: the dropped ones' numbers are free again.
            old_names = self._names
            self._order = list(self.groups.values())
            self._names = list(self.groups)
            self._number = {name: i for i, name in enumerate(self._names)}
            number = self._number
            self._keys = {
                key: number[old_names[code >> 2]] * 4 + (code & 3)
                for key, code in self._keys.items()
            }


# ------------------------------------------------------------------ messages


@dataclass
class Cursor:
    """What one viewer has been sent: the last stream item and event numbers, and the
    runs the recorder had skipped by then."""

    stream: int = 0
    events: int = 0
    skipped: int = 0


def _workers(state: SchedulerState) -> list[dict[str, Any]]:
    out = []
    for ws in state.workers.values():
        m = ws.metrics
        out.append(
            {
                "address": ws.address,
                "name": ws.name,
                "status": "paused" if ws.paused and ws.status == "running" else ws.status,
                "nthreads": ws.nthreads,
                "processing": len(ws.processing),
                "executing": m.get("executing", 0),
                "nkeys": len(ws.has_what),
                "memory": max(0, ws.nbytes),
                "spilled": m.get("spilled", 0),
                "rss": m.get("rss", 0),
                "memory_limit": ws.memory_limit,
                "cpu": m.get("cpu", 0),
                "transferred": m.get("sent", 0) + m.get("received", 0),
                "last_seen": round(max(0.0, state._now - ws.last_seen), 3),
            }
        )
    out.sort(key=lambda w: (str(w["name"]), str(w["address"])))
    return out


def _groups(recorder: Recorder) -> tuple[list[dict[str, Any]], int, dict[str, int]]:
    """The most recently active groups' rows, how many were left out, and the tasks by
    state over all groups."""
    totals = dict.fromkeys(_STATES, 0)
    for group in recorder.groups.values():
        for state, n in group.states.items():
            if state in totals:
                totals[state] += n
    ranked = sorted(recorder.groups.items(), key=lambda item: -item[1].touched)
    rows = [group.row(name) for name, group in ranked[:MAX_GROUPS]]
    return rows, max(0, len(ranked) - MAX_GROUPS), totals


def _stream(recorder: Recorder, after: int, limit: int, offset: float) -> tuple[list[Any], int]:
    # The newest first, only as many as are new and may go (not the whole deque).
    wanted = min(max(0, recorder.stream_seq - after), limit)
    new = [r for r in itertools.islice(reversed(recorder.stream), wanted) if r.seq > after]
    # Those past the limit, and those that fell out of the recorder before this message.
    dropped = max(0, recorder.stream_seq - after - len(new))
    items = [
        {
            "key": r.key,
            "group": r.group,
            "worker": r.worker,
            "start": r.start + offset,
            "stop": r.stop + offset,
            "ok": r.ok,
        }
        for r in reversed(new)
    ]
    return items, dropped


def _events(state: SchedulerState, after: int, limit: int, offset: float) -> list[Any]:
    new = [e for e in state.events if e["seq"] > after][-limit:]
    return [{**e, "time": e["time"] + offset} for e in new]


def message(
    state: SchedulerState,
    recorder: Recorder,
    cursor: Cursor,
    scheduler: dict[str, Any],
    now: float,
    offset: float,
    first: bool,
) -> dict[str, Any]:
    """The next message for a viewer: a snapshot (``first``) or a delta since ``cursor``
    (advanced). ``now``: wall-clock seconds; ``offset``: wall minus the core's clock."""
    recorder.catch_up(state)
    groups, more, totals = _groups(recorder)
    stream, dropped = _stream(
        recorder, cursor.stream, FIRST_STREAM if first else MAX_STREAM, offset
    )
    events = _events(state, cursor.events, FIRST_EVENTS if first else len(state.events), offset)
    dropped += recorder.skipped - cursor.skipped
    cursor.stream = recorder.stream_seq
    cursor.skipped = recorder.skipped
    if state.events:
        cursor.events = state.events[-1]["seq"]
    return {
        "version": 1,
        "now": now,
        "scheduler": {
            **scheduler,
            "recovering": state.recovering,
            "clients": client_count(state),
        },
        "workers": _workers(state),
        "tasks": totals,
        "groups": groups,
        "groups_more": more,
        "counts": dict(state.counts),
        "stream": stream,
        "stream_dropped": 0 if first else dropped,
        "events": events,
    }
