"""Worker resources in the scheduler core: a task that needs some runs only on a worker
with that much free, takes it while it runs, and gives it back when it stops, however
it stops."""

from __future__ import annotations

from regrow.core import commands as cmd
from regrow.core import events as ev

from .core_sim import Harness, spec


def computes(out: list[cmd.Command]) -> list[tuple[str, str]]:
    return [(c.key, c.worker) for c in out if isinstance(c, cmd.Compute)]


def gpu_worker(h: Harness, address: str, gpus: float, nthreads: int = 4) -> None:
    h.handle(
        ev.WorkerAdded(worker=address, nthreads=nthreads, resources={"GPU": gpus} if gpus else None)
    )


def test_tasks_needing_a_resource_run_only_where_it_is_free() -> None:
    h = Harness()
    gpu_worker(h, "cpu", 0)
    gpu_worker(h, "gpu", 1)
    tasks = [spec(f"t{i}", resources={"GPU": 1}) for i in range(3)]
    out = h.submit("c", tasks, wanted=[t.key for t in tasks])
    # One GPU: one task at a time on "gpu", none on "cpu", the others queued.
    assert computes(out) == [("t0", "gpu")]
    assert h.task_state("t1") == "queued" and h.task_state("t2") == "queued"
    assert h.state.workers["gpu"].used == {"GPU": 1.0}
    h.finish("t0")
    assert h.processing_on("t1") == "gpu"
    h.finish("t1")
    h.finish(h.state.tasks["t2"].key)
    assert h.state.workers["gpu"].used == {}
    # A plain task still goes anywhere.
    out = h.submit("c", [spec("plain")], wanted=["plain"])
    assert computes(out)


def test_a_resource_comes_back_when_its_worker_dies_or_the_task_errs() -> None:
    h = Harness(allowed_failures=5)
    gpu_worker(h, "a", 2)
    gpu_worker(h, "b", 2)
    tasks = [spec(f"t{i}", resources={"GPU": 2}) for i in range(2)]
    h.submit("c", tasks, wanted=["t0", "t1"])
    where = h.processing_on("t0")
    h.remove_worker(where)
    # Both now need the one worker left: one runs, one waits.
    left = "b" if where == "a" else "a"
    running = [k for k in ("t0", "t1") if h.task_state(k) == "processing"]
    assert len(running) == 1 and h.processing_on(running[0]) == left
    assert h.state.workers[left].used == {"GPU": 2.0}
    h.handle(
        ev.TaskErred(
            worker=left,
            key=running[0],
            run_id=h.run_id(running[0]),
            exception=b"",
            traceback=b"",
            text="boom",
        )
    )
    other = "t1" if running[0] == "t0" else "t0"
    assert h.processing_on(other) == left
    assert h.state.workers[left].used == {"GPU": 2.0}


def test_a_task_needing_more_than_any_worker_has_waits() -> None:
    h = Harness()
    gpu_worker(h, "gpu", 1)
    out = h.submit("c", [spec("big", resources={"GPU": 4})], wanted=["big"])
    assert computes(out) == [] and h.task_state("big") == "queued"
    # A worker that has enough joins: it runs there.
    out = h.handle(ev.WorkerAdded(worker="big-gpu", nthreads=1, resources={"GPU": 8}))
    assert computes(out) == [("big", "big-gpu")]
