"""The coordination core's durability, pure: the rows it gives the journal restore the
same primitives, a change asked again by the same request id is answered once, and a
request asked again while it waits stays one waiter."""

from __future__ import annotations

from typing import Any

from core.core_sim import Harness, of_type, spec
from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.coordination import ANSWERS_KEPT, HOLDER


def ask(
    h: Harness, client: str, request: str, kind: str, name: str, op: str, **kw: Any
) -> list[cmd.Answer]:
    event = ev.Coordinate(
        client=client,
        request=f"{client}/{request}",
        kind=kind,
        name=name,
        op=op,
        now=kw.pop("now", 0.0),
        stimulus_id=h.sid(),
        **kw,
    )
    return of_type(h.handle(event), cmd.Answer)


def restored(h: Harness) -> Harness:
    """A new core, given what a journal would hold of ``h``'s primitives."""
    co = h.state.coordination
    rows = []
    for kind, name in sorted(co.changed):
        row = co.row(kind, name)
        if row is not None:
            rows.append((kind, name, row))
    answers = tuple(
        ev.Answered(a.client, a.request, a.ok, a.payload, a.number, a.error)
        for a in co.answered.values()
    )
    new = Harness()
    new.handle(ev.CoordinationRestored(rows=tuple(rows), answers=answers, stimulus_id="r"))
    return new


def test_a_change_asked_again_is_answered_once() -> None:
    h = Harness()
    first = ask(h, "c", "1", "queue", "q", "put", payload=b"x")
    assert [a.ok for a in first] == [True] and first[0].durable
    again = ask(h, "c", "1", "queue", "q", "put", payload=b"x")
    assert again == first
    assert len(h.state.coordination.queues["q"].items) == 1
    took = ask(h, "c", "2", "queue", "q", "get")
    assert took[0].payload == b"x"
    assert ask(h, "c", "2", "queue", "q", "get") == took  # the same item, not another
    # Reads are not remembered, nor held for the journal.
    size = ask(h, "c", "3", "queue", "q", "qsize")
    assert not size[0].durable and "c/3" not in h.state.coordination.answered
    # Another client's request with the same id is its own.
    assert ask(h, "d", "1", "queue", "q", "put", payload=b"y")[0].ok
    assert len(h.state.coordination.queues["q"].items) == 1


def test_a_waiting_request_asked_again_stays_one_waiter() -> None:
    h = Harness()
    assert ask(h, "c", "get", "queue", "q", "get") == []
    assert ask(h, "c", "get", "queue", "q", "get") == []
    assert len(h.state.coordination.queues["q"].getters) == 1
    ask(h, "p", "put1", "queue", "q", "put", payload=b"a")
    ask(h, "p", "put2", "queue", "q", "put", payload=b"b")
    assert [i.payload for i in h.state.coordination.queues["q"].items] == [b"b"]
    assert not h.state.coordination.waiting


def test_rows_restore_every_primitive() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("c", [spec("f")])
    h.finish("f")
    ask(h, "c", "1", "lock", "l", "acquire", ident="lease-1")
    ask(h, "c", "2", "semaphore", "s", "acquire", ident="s-1", number=3)
    ask(h, "c", "3", "event", "e", "set")
    ask(h, "c", "4", "variable", "v", "set", payload=b"value", keys=("f",))
    ask(h, "c", "5", "queue", "q", "put", payload=b"one", number=2)
    ask(h, "c", "6", "dataset", "d", "publish", payload=b"data", keys=("f",))
    ask(h, "c", "7", "pubsub", "t", "subscribe", ident="sub-1")
    ask(h, "c", "8", "pubsub", "t", "put", payload=b"msg")
    assert h.state.coordination.wants.count((HOLDER, "f", True)) == 1
    new = restored(h)
    co = new.state.coordination
    assert co.semaphores[("lock", "l")].leases == {"lease-1": "c"}
    assert co.semaphores[("semaphore", "s")].max_leases == 3
    assert co.flags["e"].is_set
    assert co.variables["v"].item is not None and co.variables["v"].item.payload == b"value"
    assert [i.payload for i in co.queues["q"].items] == [b"one"] and co.queues["q"].maxsize == 2
    assert co.datasets["d"].keys == ("f",)
    assert list(co.topics["t"]["sub-1"].items) == [b"msg"]
    assert co.held == {"f": 2}
    assert co.clients() == {"c"}
    # The restored lock is held: another lease waits; the holder's release hands it on.
    assert ask(new, "x", "1", "lock", "l", "acquire", ident="lease-2") == []
    granted = ask(new, "c", "9", "lock", "l", "release", ident="lease-1")
    assert {(a.request, a.ok) for a in granted} == {("c/9", True), ("x/1", True)}
    # A change answered before the restart is answered the same after it.
    assert ask(new, "c", "5", "queue", "q", "put", payload=b"one")[0].ok
    assert len(co.queues["q"].items) == 1


def test_a_bad_row_is_reported_and_the_rest_restored() -> None:
    h = Harness()
    h.handle(
        ev.CoordinationRestored(
            rows=(("queue", "bad", {"items": 3}), ("event", "good", {"set": True})),
            answers=(),
            stimulus_id="r",
        )
    )
    assert len(h.logs) == 1 and "queue 'bad'" in h.logs[0].message
    assert h.state.coordination.flags["good"].is_set


def test_answers_kept_are_bounded() -> None:
    h = Harness()
    for i in range(ANSWERS_KEPT + 10):
        ask(h, "c", str(i), "event", "e", "set")
    co = h.state.coordination
    assert len(co.answered) == ANSWERS_KEPT
    assert "c/0" not in co.answered and f"c/{ANSWERS_KEPT + 9}" in co.answered
