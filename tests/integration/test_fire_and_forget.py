"""fire_and_forget on a real cluster: tasks run to the end after their futures are gone
and their client has closed, then the scheduler lets them go."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from regrow import Client, LocalCluster, fire_and_forget
from regrow.testing import MakeCluster, wait_until

from .tasks import Gate, gated, touch


def _cluster_empty(cluster: LocalCluster, clients: int = 1) -> bool:
    """The scheduler holds no task, no worker holds a result, and it counts ``clients``
    clients, the asking one with them (not its own fire-and-forget pseudo-client)."""
    with Client(cluster, set_as_default=False) as probe:
        info = probe.scheduler_info()
        held = probe.has_what()
    return (
        not info["tasks"]
        and all(w["nkeys"] == 0 for w in info["workers"].values())
        and not any(held.values())
        and info["clients"] == clients
    )


def fire_a_gated_chain_and_leave(client: Client, tmp_path: Path) -> tuple[Path, Gate]:
    """A chain (gated, then a file written) fired and forgotten, its first task held
    back by the gate until the client is gone: the file it will write, and the gate."""
    out = tmp_path / "written"
    gate = Gate(tmp_path, 0)
    first = client.submit(gated, "payload", *gate.args)
    last = client.submit(touch, str(out), first)
    fire_and_forget(last)
    gate.wait_started()
    del first, last
    gc.collect()
    client.close()
    return out, gate


def test_a_fired_task_runs_after_its_client_closed_then_is_released(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, client = make_cluster()
    out, gate = fire_a_gated_chain_and_leave(client, tmp_path)
    assert not out.exists()
    gate.open()
    with Client(cluster, set_as_default=False) as second:
        wait_until(out.exists, timeout=30, what="the fired task writes its file")
        assert second.status == "running"
    wait_until(lambda: _cluster_empty(cluster), timeout=30, what="the scheduler lets it go")


def test_fired_tasks_that_err_or_are_nested_in_containers_are_let_go(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster, client = make_cluster()

    def touch_then_fail(path: str) -> None:
        Path(path).touch()
        raise RuntimeError("fired and failed")

    paths = [tmp_path / f"f{i}" for i in range(4)]
    futures = {
        "failing": client.submit(touch_then_fail, str(paths[0])),
        "nested": [client.submit(touch, str(paths[1])), (client.submit(touch, str(paths[2])),)],
        "other": 5,  # not a future: skipped, as dask does
    }
    fire_and_forget(futures)
    fire_and_forget(client.submit(touch, str(paths[3])))  # a single future
    del futures
    gc.collect()
    wait_until(lambda: all(p.exists() for p in paths), timeout=30, what="all four ran")
    wait_until(lambda: _cluster_empty(cluster, 2), timeout=30, what="the scheduler lets them go")
    client.close()


def test_a_fired_future_still_held_keeps_its_result(client: Client, tmp_path: Path) -> None:
    f = client.submit(touch, str(tmp_path / "kept"), 42)
    fire_and_forget([f])
    assert f.result(timeout=30) == 42
    assert client.who_has(f)[f.key]  # the client still holds it: not freed


def test_fire_and_forget_checks_its_argument(cluster: LocalCluster, client: Client) -> None:
    with pytest.raises(TypeError, match=r"fire_and_forget\(\) takes a Future.*got int"):
        fire_and_forget(5)
    with pytest.raises(TypeError, match="got str"):
        fire_and_forget("key")
    fire_and_forget([])  # nothing to do
    f = client.submit(pow, 2, 5)
    f.release()
    with pytest.raises(ValueError, match="released"):
        fire_and_forget(f)
    # The scheduler's own pseudo-client: no client may take its name.
    with pytest.raises(OSError, match="'fire-and-forget' is reserved"):
        Client(cluster, name="fire-and-forget", set_as_default=False)


def test_fire_and_forget_a_persisted_dask_collection(client: Client, tmp_path: Path) -> None:
    dask = pytest.importorskip("dask")
    gate = Gate(tmp_path, 0)
    persisted = client.persist([dask.delayed(gated)(i, *gate.args) for i in range(3)])
    keys = {str(d.key) for d in persisted}
    fire_and_forget(persisted)
    del persisted
    gc.collect()
    # No client holds them now: the scheduler's own wish keeps them (running or queued,
    # none finished: the gate is shut).
    tasks = client.scheduler_info()["tasks"]
    assert sum(tasks.values()) >= 3, tasks
    assert not any(keys & set(held) for held in client.has_what().values())
    gate.open()
    wait_until(lambda: not client.scheduler_info()["tasks"], timeout=30, what="done, then let go")
    assert not any(keys & set(held) for held in client.has_what().values())


def test_a_fired_task_survives_a_scheduler_restart(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """The wish is journaled: a scheduler killed while the fired task waits, its client
    gone, comes back still wanting it, runs it to the end and then lets it go."""
    # client_grace: how long the restarted scheduler waits for absent clients (the
    # probe below) before it lets their keys go; 10 s by default.
    cluster, client = make_cluster(journal=tmp_path / "j.db", client_grace=1.0)
    out, gate = fire_a_gated_chain_and_leave(client, tmp_path)
    with Client(cluster, set_as_default=False) as probe:
        wait_until(lambda: probe.scheduler_info()["clients"] == 1, what="the client is gone")
        # A journaled scheduler acknowledges a scatter once it is written, with all that
        # came before: the wish, and the client's goodbye (nobody else wants the task).
        probe.scatter([0])
    cluster.restart_scheduler_process()
    gate.open()
    with Client(cluster, set_as_default=False) as second:
        wait_until(out.exists, timeout=60, what="the fired task writes its file")
        assert second.status == "running"
    wait_until(lambda: _cluster_empty(cluster), timeout=60, what="the scheduler lets it go")
