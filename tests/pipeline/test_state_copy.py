"""A task's state is copied before ``process`` or ``done`` may change it, so that a step
run again starts from the state as it was: shallowly where it is built of atoms only,
deeply otherwise."""

from __future__ import annotations

import collections
from typing import Any

import pytest

from regrow.pipeline.stages import (
    Stage,
    StepResult,
    copy_state,
    done_step,
    init_step,
    last_step,
    process_step,
)


@pytest.mark.parametrize(
    "state",
    [
        collections.Counter({"a": 1, "b": 2}),
        {"a": 1.5, 2: None, (1, 2)[0]: b"x"},
        collections.defaultdict(int, {"a": 3}),
        collections.OrderedDict(a=1),
        [1, "two", 3.0],
        {1, 2, 3},
    ],
    ids=["counter", "dict", "defaultdict", "ordered", "list", "set"],
)
def test_a_state_of_atoms_is_copied_as_its_own_type(state: Any) -> None:
    out = copy_state(state)
    assert out == state and type(out) is type(state) and out is not state
    if isinstance(state, collections.defaultdict):
        assert out.default_factory is state.default_factory


@pytest.mark.parametrize(
    "state",
    [
        {"a": [1, 2]},
        collections.defaultdict(list, {"a": [1]}),
        [[1], [2]],
        {("k", 1): {"inner": 1}},
    ],
)
def test_a_state_holding_containers_is_copied_deeply(state: Any) -> None:
    out = copy_state(state)
    assert out == state
    first = next(iter(out.values())) if isinstance(out, dict) else out[0]
    original = next(iter(state.values())) if isinstance(state, dict) else state[0]
    assert first is not original


def test_atoms_are_their_own_copy() -> None:
    for value in (None, 3, "s", b"b", 2.5):
        assert copy_state(value) is value


def _count(interface: Any, state: Any, label: Any, records: Any) -> None:
    for word in records:
        state[word] += 1
    if "boom" in records:
        raise RuntimeError("boom")


def test_a_failed_step_leaves_the_state_it_started_from() -> None:
    stage = Stage("count", process=_count)
    prev = StepResult(collections.Counter({"a": 1}), {})
    with pytest.raises(RuntimeError):
        process_step(stage, prev, [(0, ["a", "boom"])])
    assert prev.state == {"a": 1}
    assert process_step(stage, prev, [(0, ["a"])]).state == {"a": 2}
    assert done_step(Stage("count", process=_count), prev).state is None
    assert prev.state == {"a": 1}


def _init_log(interface: Any, params: Any) -> list[str]:
    interface.output("x").add("init", 0)
    return []


def _process_log(interface: Any, state: Any, label: Any, records: Any) -> None:
    for r in records:
        state.append(r)
        interface.output("x").add("process", r)


def _done_log(interface: Any, state: Any) -> None:
    interface.output("x").add("done", list(state))


LOGGING = Stage("log", init=_init_log, process=_process_log, done=_done_log)


def test_last_step_is_process_then_done_in_one() -> None:
    """What the separate steps would have written, in the same order, as one step's."""
    start = init_step(LOGGING)
    processed = process_step(LOGGING, start, [(0, [1, 2])])
    apart = processed.outputs["x"] + done_step(LOGGING, processed).outputs["x"]
    together = last_step(LOGGING, start, [(0, [1, 2])])
    assert together.outputs == {"x": [("process", 1), ("process", 2), ("done", [1, 2])]}
    assert together.outputs["x"] == apart
    assert start.state == []  # the state it started from is left as it was
    # Its first inputs being its last: init too, in the same step.
    assert last_step(LOGGING, None, [(0, [7])]).outputs == {
        "x": [("init", 0), ("process", 7), ("done", [7])]
    }
