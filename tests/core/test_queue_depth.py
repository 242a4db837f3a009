"""How many tasks a worker holds per thread: ``worker_saturation``, or more where tasks
are short (about ``queue_seconds`` of work by the mean duration, at most MAX_DEPTH), so
that each message carries several tasks. The depth follows the mean only when it is off
by 2x or more."""

from __future__ import annotations

from regrow.core.scheduler_state import MAX_DEPTH

from .core_sim import Harness, spec


def _many(h: Harness, n: int, prefix: str = "t") -> list[str]:
    keys = [f"{prefix}{i}" for i in range(n)]
    h.submit("c", [spec(k) for k in keys], keys)
    return keys


def _rounds(
    h: Harness, rounds: int, duration: float, workers: tuple[str, ...] = ("w1",), each: int = 0
) -> None:
    """``rounds`` times, each worker finishes what it holds (its first ``each``, if
    given), each task having taken ``duration``."""
    for _ in range(rounds):
        for w in workers:
            held = list(h.processing(w))
            for key in held[:each] if each else held:
                h.finish(key, duration=duration)


def test_short_tasks_deepen_each_workers_queue() -> None:
    h = Harness(worker_saturation=2.0, queue_seconds=0.002)
    h.add_worker("w1", nthreads=2)
    keys = _many(h, 500)
    assert len(h.processing("w1")) == 4  # 2 threads x 2 before any duration is known
    _rounds(h, 5, 0.000_05)  # 50 us each (40 fill 2 ms): the mean moves from 1 ms
    # Deeper now, by 2x steps at least, and the worker filled at once.
    assert h.state.depth >= 4.0
    assert len(h.processing("w1")) == h.state.workers["w1"].slots >= 8
    while h.processing("w1"):
        for key in list(h.processing("w1")):
            h.finish(key, duration=0.000_05)
    ideal = min(MAX_DEPTH, 0.002 / h.state.avg_duration)
    assert h.state.depth / 2 < ideal < 2 * h.state.depth
    assert all(h.task_state(k) in ("memory", "forgotten") for k in keys if k in h.state.tasks)


def test_the_depth_never_passes_its_cap_nor_falls_below_the_saturation() -> None:
    h = Harness(worker_saturation=2.0, queue_seconds=10.0)
    h.add_worker("w1")
    _many(h, 1_000)
    _rounds(h, 60, 0.000_001)
    assert h.state.depth == MAX_DEPTH
    assert h.state.workers["w1"].slots == MAX_DEPTH
    slow = Harness(worker_saturation=2.0, queue_seconds=0.002)
    slow.add_worker("w1")
    _many(slow, 20)
    _rounds(slow, 3, 1.0)  # long tasks: the saturation, no more
    assert slow.state.depth == 2.0 and slow.state.workers["w1"].slots == 2


def test_long_tasks_after_short_ones_make_the_queue_shallow_again() -> None:
    h = Harness(worker_saturation=1.0, queue_seconds=0.002)
    h.add_worker("w1")
    h.add_worker("w2")
    _many(h, 1_500)
    _rounds(h, 12, 0.000_02, ("w1", "w2"))
    assert h.state.depth >= 32 and h.state._queued_count
    _rounds(h, 30, 0.5, ("w1", "w2"), each=1)
    assert h.state.depth == 1.0
    # Every worker's slots follow (the core's own invariants check the free set).
    assert {ws.slots for ws in h.state.workers.values()} == {1}


def test_a_mean_that_wanders_within_2x_changes_nothing() -> None:
    h = Harness(worker_saturation=1.0, queue_seconds=0.002)
    h.add_worker("w1")
    _many(h, 3_000)
    _rounds(h, 30, 0.000_1)  # ideal: 20 per thread
    depth = h.state.depth
    assert 10 < depth <= 40
    for duration in (0.000_08, 0.000_12, 0.000_09, 0.000_11) * 10:
        _rounds(h, 1, duration, each=2)
    assert h.state.depth == depth


def test_off_by_default_in_the_core() -> None:
    h = Harness(worker_saturation=2.0)
    h.add_worker("w1")
    _many(h, 100)
    _rounds(h, 10, 0.000_001)
    assert h.state.depth == 2.0 and len(h.processing("w1")) == 2
