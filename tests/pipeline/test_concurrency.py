"""Stages run concurrently: a stage-1 task consumes stage-0 outputs while stage 0 still
runs; a barrier stage (``concurrent=False``) starts only once the stage before it has
finished."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from regrow import Client
from regrow.pipeline import Pipeline, Stage, group_all, group_label, run_pipeline, split
from regrow.testing import wait_until

from . import tasks
from .helpers import TIMEOUT, Gate

# A task held at a gate occupies its worker's only thread. With the default
# worker_saturation (8 tasks per thread) the scheduler also hands that worker tasks
# that then wait behind the gate, and work stealing does not always move them to the
# idle worker: it asks for the most recently assigned task, which can be the one
# running (the worker runs its tasks by priority), is refused, and asks again for the
# same one. Gated tests would then hang until the gate opens. One task per thread
# keeps everything else on the free worker; worker_queue_seconds=0 keeps it one
# however short the tasks are (else the queue deepens for short tasks, and a worker
# hands up to 3 of them to its thread's queue ahead, where none can be stolen).
CLUSTER_SETTINGS = {"worker_saturation": 1.0, "worker_queue_seconds": 0.0}

N_INPUTS = 40
BATCH = 5  # 8 stage-0 tasks
GATED_KEY = N_INPUTS - 1  # in the last input batch


def pipeline(log: Path, gate: Gate, concurrent: bool) -> Pipeline:
    return Pipeline(
        [
            (
                split,
                Stage(
                    "square",
                    process=tasks.square,
                    params={"log": str(log), "gate": gate.spec(GATED_KEY), "sleep": 0.05},
                ),
            ),
            (
                group_label,
                Stage(
                    "shift",
                    init=tasks.shift_init,
                    process=tasks.shift,
                    done=tasks.shift_done,
                    concurrent=concurrent,
                    params={"log": str(log)},
                ),
            ),
            (
                group_all,
                Stage("final", init=tasks.final_init, process=tasks.final, done=tasks.final_done),
            ),
        ]
    )


def test_next_stage_starts_before_previous_finishes(
    client: Client, tmp_path: Path, gates: Callable[[], Gate]
) -> None:
    log = tmp_path / "log"
    log.mkdir()
    gate = gates()
    inputs = tasks.numeric_inputs(N_INPUTS)
    result = run_pipeline(client, pipeline(log, gate, concurrent=True), inputs, input_batch=BATCH)
    # One stage-0 task is held at its gate; stage 1 must consume the others' outputs
    # meanwhile. (Were stage 1 a barrier, this would time out.)
    gate.wait_started()
    wait_until(
        lambda: any(e["stage"] == "shift" for e in tasks.read_events(log)),
        timeout=30,
        what="a stage-1 process() call while a stage-0 task is held",
    )
    square = result.progress[0]
    assert not square.finished and square.done < square.total
    gate.open()
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)

    events = tasks.read_events(log)
    first_shift = min(e["start"] for e in events if e["stage"] == "shift")
    last_square = max(e["end"] for e in events if e["stage"] == "square")
    assert first_shift < last_square
    # The driver's own times say the same: a stage-1 task started before stage 0's last
    # task finished.
    times = result.task_times()
    assert min(t[2] for t in times if t[0] == "shift") < max(
        t[3] for t in times if t[0] == "square"
    )
    stage0_done = [t for t, msg in result.history if msg.startswith("stage square finished")]
    assert len(stage0_done) == 1
    assert first_shift < stage0_done[0]


def test_barrier_waits_for_previous_stage(
    client: Client, tmp_path: Path, gates: Callable[[], Gate]
) -> None:
    log = tmp_path / "log"
    log.mkdir()
    gate = gates()
    inputs = tasks.numeric_inputs(N_INPUTS)
    result = run_pipeline(client, pipeline(log, gate, concurrent=False), inputs, input_batch=BATCH)
    gate.wait_started()
    n_square = N_INPUTS // BATCH
    # Every stage-0 task but the gated one finishes...
    wait_until(
        lambda: result.progress[0].done == n_square - 1,
        timeout=30,
        what="all stage-0 tasks but the gated one done",
    )
    # ... and still no stage-1 task has started, nor called process().
    assert result.progress[1].running == 0 and result.progress[1].done == 0
    assert not [e for e in tasks.read_events(log) if e["stage"] == "shift"]
    gate.open()
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)

    events = tasks.read_events(log)
    first_shift = min(e["start"] for e in events if e["stage"] == "shift")
    last_square = max(e["end"] for e in events if e["stage"] == "square")
    assert first_shift > last_square
    times = result.task_times()
    assert min(t[2] for t in times if t[0] == "shift") >= max(
        t[3] for t in times if t[0] == "square"
    )
    # Stage 1 is a barrier; stage 2 is not, so it may overlap stage 1.
    stage0_done = [t for t, msg in result.history if msg.startswith("stage square finished")]
    assert len(stage0_done) == 1
    assert first_shift > stage0_done[0]
