"""A short task runs beside its inputs: one whose group's runs took less time than its
inputs would take to move goes to the worker holding them, free slot or not (as a
dask graph's ``getitem`` of a large tuple, or a pipeline's ``take`` of a step's
outputs). Otherwise placement is by load, as before."""

from __future__ import annotations

from regrow.core import events as ev

from .core_sim import Harness, computes, spec

MB = 1_000_000
BIG = "big-00000001"  # 100 MB on 'a': 0.2 s to move at the core's 500 MB/s


def held_on_a_busy_worker(learnt: float | None, nbytes: int = 100 * MB) -> Harness:
    """'a' holds BIG and runs a long task in its one slot; 'b' is free. With ``learnt``,
    one earlier task of group 'take' (on BIG) took that long."""
    h = Harness(worker_saturation=1.0)
    h.add_worker("a")
    h.add_worker("b")
    h.submit("cl", [spec(BIG, workers=("a",))], wanted=[BIG])
    h.finish(BIG, nbytes=nbytes)
    if learnt is not None:
        h.submit("cl", [spec("take-00000001", BIG)], wanted=["take-00000001"])
        h.finish("take-00000001", worker="a", duration=learnt)
    h.submit("cl", [spec("long-00000001", workers=("a",))], wanted=["long-00000001"])
    assert h.processing("a") == ["long-00000001"]
    assert h.state.workers["a"] not in h.state.free
    return h


def place_a_take(h: Harness) -> str:
    out = h.submit("cl", [spec("take-00000002", BIG)], wanted=["take-00000002"])
    return computes(out)["take-00000002"]


def test_a_short_task_goes_to_its_inputs_busy_worker() -> None:
    h = held_on_a_busy_worker(learnt=20e-6)
    assert place_a_take(h) == "a"
    # It holds no slot: once the long task ends, 'a' takes new work (is free) though
    # it is still processing the take.
    h.finish("long-00000001", duration=1.0)
    assert h.processing("a") == ["take-00000002"]
    assert h.state.workers["a"] in h.state.free


def test_a_task_of_a_group_never_seen_is_placed_by_load() -> None:
    assert place_a_take(held_on_a_busy_worker(learnt=None)) == "b"


def test_a_task_longer_than_moving_its_inputs_is_placed_by_load() -> None:
    assert place_a_take(held_on_a_busy_worker(learnt=1.0)) == "b"


def test_small_inputs_are_moved_for_a_free_worker() -> None:
    assert place_a_take(held_on_a_busy_worker(learnt=20e-6, nbytes=1_000)) == "b"


def test_a_paused_holder_gets_nothing_new() -> None:
    h = held_on_a_busy_worker(learnt=20e-6)
    h.handle(ev.WorkerPaused(worker="a", paused=True, stimulus_id=h.sid()))
    assert place_a_take(h) == "b"


def test_durations_are_learnt_per_group() -> None:
    h = held_on_a_busy_worker(learnt=20e-6)
    out = h.submit("cl", [spec("sum-00000001", BIG)], wanted=["sum-00000001"])
    assert computes(out) == {"sum-00000001": "b"}  # 'sum' is not 'take'
