"""Code that clients send: ``upload_file``, worker and scheduler plugins
(``register_plugin``), ``run_on_scheduler`` and the scheduler's opt-in
(``--allow-scheduler-code``), on real clusters."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import regrow
from conftest import MakeCluster
from regrow.testing import wait_until


def _module(tmp_path: Path, text: str) -> tuple[Path, str]:
    name = f"regrow_upload_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path, name


def test_upload_file_reaches_current_and_later_workers(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    path, name = _module(tmp_path, "VALUE = 42\n")
    cluster, client = make_cluster(n_workers=1)
    client.upload_file(path)

    def read() -> int:
        import importlib

        return int(importlib.import_module(name).VALUE)

    assert client.submit(read, pure=False).result(timeout=30) == 42
    # A worker that joins later gets it before any task.
    before = set(client.scheduler_info()["workers"])
    cluster.scale(2)
    wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=60, what="worker")
    [new] = set(client.scheduler_info()["workers"]) - before
    assert client.submit(read, workers=[new], pure=False).result(timeout=30) == 42
    # Uploaded again, changed: imported again.
    path.write_text("VALUE = 43\n")
    client.upload_file(path)
    assert set(client.run(read).values()) == {43}


def test_upload_file_that_does_not_import_says_why(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    path, _ = _module(tmp_path, "def broken(:\n")
    _, client = make_cluster(n_workers=1)
    with pytest.raises(RuntimeError, match="SyntaxError"):
        client.upload_file(path)
    with pytest.raises(ValueError, match=r"\.py, \.zip or \.egg"):
        client.upload_file(tmp_path / "data.csv")


class Recorder(regrow.WorkerPlugin):
    name = "recorder"

    def setup(self, worker: Any) -> None:
        self.worker = worker.address
        self.moves: list[tuple[str, str, str]] = []

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        self.moves.append((key, start, finish))


def _moves() -> list[tuple[str, str, str]]:
    return list(regrow.get_worker().extras.plugins["recorder"].moves)


def test_a_worker_plugin_sees_every_task(make_cluster: MakeCluster) -> None:
    cluster, client = make_cluster(n_workers=2)
    client.register_plugin(Recorder())
    futures = client.map(lambda x: x + 1, range(40))
    assert client.gather(futures) == list(range(1, 41))
    seen = [m for moves in client.run(_moves).values() for m in moves]
    finished = {k for k, _, f in seen if f == "memory"}
    assert finished == {f.key for f in futures}
    # A worker that joins later sets it up too.
    cluster.scale(3)
    wait_until(lambda: len(client.scheduler_info()["workers"]) == 3, timeout=60, what="worker")
    assert all(isinstance(m, list) for m in client.run(_moves).values())
    with pytest.raises(TypeError, match="WorkerPlugin, NannyPlugin or SchedulerPlugin"):
        client.register_plugin(object())


class Counting(regrow.SchedulerPlugin):
    name = "counting"

    def start(self, scheduler: Any) -> None:
        self.finished: set[str] = set()

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "memory":
            self.finished.add(key)


def test_scheduler_code_is_refused_without_the_opt_in(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    with pytest.raises(PermissionError, match="--allow-scheduler-code"):
        client.run_on_scheduler(lambda: 1)
    with pytest.raises(RuntimeError, match="--allow-scheduler-code"):
        client.register_plugin(Counting())


def test_scheduler_code_runs_with_the_opt_in(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1, allow_scheduler_code=True)
    assert client.run_on_scheduler(lambda x, y=0: x + y, 2, y=3) == 5
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.state.workers)) == 1
    with pytest.raises(ZeroDivisionError):
        client.run_on_scheduler(lambda: 1 / 0)
    client.register_plugin(Counting())
    futures = client.map(lambda x: x * 2, range(25))
    client.gather(futures)

    def finished(dask_scheduler: Any) -> set[str]:
        return set(dask_scheduler.plugins["counting"].finished)

    assert client.run_on_scheduler(finished) == {f.key for f in futures}


class Environ(regrow.NannyPlugin):
    """As dask.distributed's Environ: variables for the worker processes, which the
    nannies start again."""

    restart = True

    def __init__(self, marks: str, **environ: str) -> None:
        self.marks = marks
        self.environ = environ

    async def setup(self, nanny: Any) -> None:
        nanny.env.update(self.environ)
        Path(self.marks, f"setup-{nanny.address.rsplit(':', 1)[1]}").touch()

    def teardown(self, nanny: Any) -> None:
        Path(self.marks, f"teardown-{nanny.address.rsplit(':', 1)[1]}").touch()


class Broken(regrow.NannyPlugin):
    def setup(self, nanny: Any) -> None:
        raise OSError("no such package: not-a-package")


def _env() -> str:
    import os

    return os.environ.get("PLUGIN_TEST_VALUE", "")


def test_a_nanny_plugin_reaches_every_nanny_and_restarts_workers(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, client = make_cluster(n_workers=2)
    before = {w["pid"] for w in client.scheduler_info()["workers"].values()}
    assert set(client.run(_env).values()) == {""}
    client.register_plugin(Environ(str(tmp_path), PLUGIN_TEST_VALUE="on"))

    # restart = True: each worker process was started again, with the variable.
    def fresh() -> bool:
        pids = {w["pid"] for w in client.scheduler_info()["workers"].values()}  # one snapshot
        return len(pids) == 2 and not pids & before

    wait_until(fresh, timeout=60, what="fresh workers")
    assert set(client.run(_env).values()) == {"on"}
    assert len(list(tmp_path.glob("setup-*"))) == 2
    # A nanny that joins later sets it up before it starts its worker.
    cluster.scale(3)
    wait_until(lambda: len(client.scheduler_info()["workers"]) == 3, timeout=60, what="worker")
    assert set(client.run(_env).values()) == {"on"}
    assert len(list(tmp_path.glob("setup-*"))) == 3
    with pytest.raises(RuntimeError, match="setup failed: OSError: no such package"):
        client.register_plugin(Broken())
    client.close()
    cluster.close()
    assert len(list(tmp_path.glob("teardown-*"))) == 3
