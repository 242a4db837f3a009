"""The transitions table: every legal move is in it, nothing else moves, all of it is used."""

from __future__ import annotations

import pytest

from regrow.core import events as ev
from regrow.core import scheduler_state
from regrow.core.scheduler_state import InvalidTransition
from regrow.core.transitions import STATES, TRANSITIONS, diagram

from .core_sim import Harness, spec
from .test_random_simulation import Walk

# The table, spelled out: a change to it is a change to this list too.
EXPECTED = {
    ("released", "waiting"),
    ("released", "memory"),
    ("released", "erred"),
    ("released", "forgotten"),
    ("waiting", "queued"),
    ("waiting", "processing"),
    ("waiting", "erred"),
    ("waiting", "released"),
    ("queued", "processing"),
    ("queued", "waiting"),
    ("queued", "released"),
    ("processing", "memory"),
    ("processing", "waiting"),
    ("processing", "released"),
    ("processing", "erred"),
    ("memory", "released"),
    ("erred", "released"),
    ("erred", "forgotten"),
}


def test_the_table() -> None:
    assert set(TRANSITIONS) == EXPECTED
    assert all(start in STATES and finish in STATES for start, finish in TRANSITIONS)
    assert all(description for description in TRANSITIONS.values())
    assert not any(start == "forgotten" for start, _ in TRANSITIONS)
    # Not in it: a queued task's inputs are all in memory, so it never errs while queued;
    # a result in memory is released before anything else happens to it.
    assert ("queued", "erred") not in TRANSITIONS
    assert ("memory", "erred") not in TRANSITIONS
    assert "  released -> waiting, memory, erred, forgotten" in diagram()


def test_the_diagram_in_the_docs_is_the_table() -> None:
    doc = scheduler_state.__doc__ or ""
    drawn = "\n".join("    " + line for line in diagram().splitlines())
    assert drawn in doc


def test_an_illegal_move_raises_with_the_story() -> None:
    h = Harness()
    h.add_worker("w1")
    h.submit("cl", [spec("x")])
    h.finish("x")
    ts = h.state.tasks["x"]
    with pytest.raises(InvalidTransition) as info:
        h.state._set_state(ts, "waiting")
    message = str(info.value)
    assert "memory -> waiting" in message
    # The story: x's transitions so far, each with the stimulus that caused it.
    assert "('x', 'released', 'waiting'" in message
    assert "('x', 'processing', 'memory'" in message
    assert ts.state == "memory"  # nothing moved


def test_every_move_in_the_table_happens_in_simulated_runs() -> None:
    seen: set[tuple[str, str]] = set()
    for seed in range(10):
        walk = Walk(seed)
        walk.run(steps=150)
        seen |= walk.sim.transitions
    assert seen == set(TRANSITIONS), f"never made: {set(TRANSITIONS) - seen}"


def test_transitions_are_recorded_in_order_with_their_stimulus() -> None:
    h = Harness()
    h.add_worker("w1")
    h.handle(ev.TasksSubmitted(client="cl", tasks=(spec("x"),), wanted=("x",), stimulus_id="sub-1"))
    assert h.state.story("x") == [
        ("x", "released", "waiting", "sub-1"),
        ("x", "waiting", "processing", "sub-1"),
    ]
    assert h.transitions == {("released", "waiting"), ("waiting", "processing")}
