"""validate_state notices a corrupted state (so validate=True in these tests means something)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from regrow.core.invariants import InvariantError, validate_state
from regrow.core.scheduler_state import EMPTY, MEMORY, SchedulerState

from .core_sim import Harness, spec


def cluster() -> Harness:
    h = Harness()
    h.add_worker("w1")
    h.add_worker("w2")
    h.submit("cl", [spec("a", workers=("w1",)), spec("b", "a"), spec("c")], ["b", "c"])
    h.finish("a")
    return h


def corrupt_memory_without_holder(st: SchedulerState) -> None:
    ts = st.tasks["a"]
    for ws in ts.who_has:
        ws.has_what.discard(ts)
    ts.who_has = EMPTY


def corrupt_processing_nowhere(st: SchedulerState) -> None:
    ts = st.tasks["b"]
    assert ts.processing_on is not None
    ts.processing_on.processing.pop(ts)


def corrupt_leak(st: SchedulerState) -> None:
    st.tasks["a"].waiters = EMPTY


def corrupt_forgotten_client_want(st: SchedulerState) -> None:
    st.tasks.pop("c")


def corrupt_queue_count(st: SchedulerState) -> None:
    st._queued_count += 1


def corrupt_free_slots(st: SchedulerState) -> None:
    st.free.pop(st.workers["w2"], None)
    st.free[st.workers["w1"]] = None
    for ws in st.workers.values():
        ws.slots = 1 if ws.address == "w1" else 100


def corrupt_released_but_held(st: SchedulerState) -> None:
    st.tasks["a"].state = "released"


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_memory_without_holder,
        corrupt_processing_nowhere,
        corrupt_leak,
        corrupt_forgotten_client_want,
        corrupt_queue_count,
        corrupt_free_slots,
        corrupt_released_but_held,
    ],
)
def test_validate_state_catches(corrupt: Callable[[SchedulerState], None]) -> None:
    h = cluster()
    validate_state(h.state)
    assert h.state.tasks["a"].state == MEMORY
    corrupt(h.state)
    with pytest.raises(InvariantError):
        validate_state(h.state)
