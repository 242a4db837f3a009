"""A worker process SIGKILLed mid-job: the task whose step it was running fails and
restarts with every task that could have consumed its outputs; the output is still
exactly the serial one (no record lost, none twice). With a persisted stage, outputs
whose files survive are not recomputed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from regrow import Client
from regrow.pipeline import Pipeline, Stage, group_all, group_label, run_pipeline, split
from regrow.testing import wait_until

from . import tasks
from .helpers import TIMEOUT, Gate, kill_worker, wait_for_workers
from .tasks import LABELS

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

N_INPUTS = 60
BATCH = 5  # 12 stage-0 tasks


@pytest.fixture(autouse=True)
def two_workers(client: Client) -> Iterator[None]:
    """Each test starts, and leaves the cluster, with 2 live workers."""
    wait_for_workers(client, 2)
    yield
    wait_for_workers(client, 2)


def pipeline(
    square: dict[str, Any] | None = None,
    shift: dict[str, Any] | None = None,
    persist: str | None = None,
) -> Pipeline:
    return Pipeline(
        [
            (split, Stage("square", process=tasks.square, params=square, persist=persist)),
            (
                group_label,
                Stage(
                    "shift",
                    init=tasks.shift_init,
                    process=tasks.shift,
                    done=tasks.shift_done,
                    params=shift,
                ),
            ),
            (
                group_all,
                Stage("final", init=tasks.final_init, process=tasks.final, done=tasks.final_done),
            ),
        ]
    )


def died(result: Any, task: str) -> list[str]:
    return [m for _, m in result.history if f"task {task} failed (its worker died)" in m]


def test_kill_during_stage_0(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    inputs = tasks.numeric_inputs(N_INPUTS)
    # The stage-0 task of input batch 6 (keys 30..34) blocks; the others run on the
    # other worker meanwhile.
    square = {"gate": gate.spec(32), "sleep": 0.05}
    result = run_pipeline(client, pipeline(square=square), inputs, input_batch=BATCH)
    pid = gate.wait_started()
    wait_until(lambda: result.progress[0].done >= 3, timeout=30, what="3 stage-0 tasks done")
    before = result.progress
    assert before[0].done < before[0].total and not before[0].finished
    assert before[1].total >= 1  # stage-1 tasks exist: they consumed finished outputs
    kill_worker(client, pid)  # while it runs square[6]'s step
    gate.open()
    records = list(result)  # as they become final
    assert sorted(records) == tasks.numeric_expected(inputs)

    assert died(result, "square[6]"), result.history
    square_p, shift_p, final_p = result.progress
    assert square_p.failed >= 1
    # Every stage-1 task that existed could have consumed square[6]'s outputs: restarted.
    assert shift_p.restarted >= 1
    assert (square_p.done, shift_p.done, final_p.done) == (12, LABELS, 1)
    assert (square_p.total, shift_p.total, final_p.total) == (12, LABELS, 1)
    wait_for_workers(client, 2, not_pid=pid)


def test_kill_during_stage_1(client: Client, gates: Callable[[], Gate]) -> None:
    gate = gates()
    inputs = tasks.numeric_inputs(N_INPUTS)
    # shift[1]'s done() blocks, after stage 0 has finished; shift[0] and shift[2] finish.
    result = run_pipeline(client, pipeline(shift={"gate": gate.spec(1)}), inputs, input_batch=BATCH)
    pid = gate.wait_started()
    wait_until(lambda: result.progress[1].done >= 2, timeout=30, what="2 stage-1 tasks done")
    assert result.progress[0].finished and not result.progress[1].finished
    kill_worker(client, pid)  # while it runs shift[1]'s done step
    gate.open()
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)

    assert died(result, "shift[1]"), result.history
    square_p, shift_p, final_p = result.progress
    # Only downstream of shift[1] restarts: not stage 0 (its lost outputs are recomputed
    # by lineage), not the other stage-1 tasks (they never consume shift[1]'s outputs).
    assert (square_p.failed, square_p.restarted) == (0, 0)
    assert shift_p.failed >= 1 and shift_p.restarted == 0
    assert final_p.restarted >= 1  # final had consumed shift[0] and shift[2]: it restarts
    assert (square_p.done, shift_p.done, final_p.done) == (12, LABELS, 1)
    wait_for_workers(client, 2, not_pid=pid)


# ---------------------------------------------------------------- persistence
def persisted_records(directory: Path) -> list[Any]:
    import pickle

    out: list[Any] = []
    for path in directory.glob("*.pkl"):
        with open(path, "rb") as f:
            out.extend(pickle.load(f))
    return out


def square_outputs(inputs: list[tuple[int, int]]) -> list[Any]:
    return sorted((("rec", k), v * v) for k, v in inputs)


def test_persist(client: Client, tmp_path: Path) -> None:
    store = tmp_path / "p"
    inputs = tasks.numeric_inputs(N_INPUTS)
    result = run_pipeline(client, pipeline(persist=str(store)), inputs, input_batch=BATCH)
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)
    # The files hold stage 0's outputs, each record once; no temporary file is left.
    assert sorted(persisted_records(store)) == square_outputs(inputs)
    assert not list(store.glob("*.tmp"))


def test_persist_survives_worker_loss(
    client: Client, tmp_path: Path, gates: Callable[[], Gate]
) -> None:
    store = tmp_path / "p"
    log = tmp_path / "log"
    log.mkdir()
    gate = gates()
    inputs = tasks.numeric_inputs(N_INPUTS)
    square = {"log": str(log), "sleep": 0.05}
    result = run_pipeline(
        client,
        pipeline(square=square, shift={"gate": gate.spec(1)}, persist=str(store)),
        inputs,
        input_batch=BATCH,
    )
    pid = gate.wait_started()
    wait_until(lambda: result.progress[1].done >= 2, timeout=30, what="2 stage-1 tasks done")
    assert result.progress[0].finished
    # The victim ran stage-0 steps: their results were in its memory.
    assert any(e["pid"] == pid for e in tasks.read_events(log) if e["stage"] == "square")
    files = set(store.glob("*.pkl"))
    assert sorted(persisted_records(store)) == square_outputs(inputs)
    kill_worker(client, pid)
    gate.open()
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)

    assert died(result, "shift[1]"), result.history
    square_p = result.progress[0]
    assert (square_p.done, square_p.failed, square_p.restarted) == (12, 0, 0)
    # Nothing of stage 0 ran again, even once the cluster is idle: the files made the
    # results it lost with the worker unnecessary.
    wait_until(lambda: cluster_idle(client), timeout=30, what="the cluster idle")
    assert len(tasks.read_events(log)) == N_INPUTS // BATCH
    assert set(store.glob("*.pkl")) == files
    wait_for_workers(client, 2, not_pid=pid)


def cluster_idle(client: Client) -> bool:
    states = client.scheduler_info()["tasks"]
    return not any(states.get(s) for s in ("released", "waiting", "queued", "processing"))
