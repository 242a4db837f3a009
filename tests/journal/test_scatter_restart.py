"""A scatter while the journaled scheduler restarts (found by the chaos soak): the
data is on the workers, and the scheduler dies before the client hears that it
registered it. The scatter goes on with the scheduler that comes back from the
journal, whether the dead one had never seen the registration or had registered and
journaled it: its futures finish, and nothing is left behind on a worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

from regrow import Client
from regrow.deploy import LocalCluster
from regrow.errors import CommClosedError
from regrow.protocol.comm import Connection
from regrow.protocol.messages import ScatteredMsg
from regrow.scheduler.journal import Journal
from regrow.testing import MakeCluster, wait_until

DATA = [f"value-{i}-" * 200 for i in range(10)]  # ~2 KB each, held by workers only


def _stored() -> list[str]:
    """The keys the worker running this holds (for client.run)."""
    from regrow import get_worker

    return sorted(get_worker().data)


def _nothing_left(client: Client) -> bool:
    info = client.scheduler_info()
    stored = client.run(_stored)
    return not info["tasks"] and not any(stored.values())


def _journaled(journal: Path, keys: set[str]) -> bool:
    j = Journal(journal)
    try:
        return keys <= {row.key for row in j.load().tasks}
    finally:
        j.close()


def _kill(cluster: LocalCluster) -> None:
    """SIGKILL the scheduler and wait until it is gone (blocking the client's loop, so
    that the client learns of it only by the connection it loses)."""
    assert cluster.scheduler_proc is not None
    proc = psutil.Process(cluster.scheduler_proc.pid)
    proc.kill()

    def dead() -> bool:
        # The cluster's watcher thread may reap it between the two questions.
        try:
            return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(dead, timeout=10, what="the scheduler is dead")


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("registered", [False, True], ids=["unseen", "journaled"])
def test_scatter_survives_a_scheduler_restart(
    make_cluster: MakeCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registered: bool,
    replicas: int,
) -> None:
    journal = tmp_path / "j.db"
    cluster, client = make_cluster(n_workers=3, journal=journal)
    real = Connection.request
    kills: list[ScatteredMsg] = []

    async def request(self: Connection, msg: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(msg, ScatteredMsg) or kills:
            return await real(self, msg, *args, **kwargs)
        kills.append(msg)
        if not registered:
            _kill(cluster)  # the registration goes to a dead scheduler
            return await real(self, msg, *args, **kwargs)
        await real(self, msg, *args, **kwargs)
        wait_until(
            lambda: _journaled(journal, {e.key for e in msg.keys}),
            timeout=10,
            what="the scatter journaled",
        )
        _kill(cluster)
        # Registered and journaled; the acknowledgement died with the connection.
        raise CommClosedError("the scheduler died before its answer arrived")

    monkeypatch.setattr(Connection, "request", request)
    futures = client.scatter(DATA, replicas=replicas, hash=False, timeout=30)
    assert kills, "the scatter's registration was not intercepted"
    wait_until(lambda: cluster.scheduler_restarts >= 1, timeout=10, what="a new scheduler")
    assert [f.status for f in futures] == ["finished"] * len(DATA)
    assert all(client.who_has(futures).values())
    assert client.gather(futures, timeout=30) == DATA
    assert client.gather(client.map(len, futures), timeout=30) == [len(d) for d in DATA]
    futures.clear()
    wait_until(lambda: _nothing_left(client), timeout=10, what="nothing left on the workers")
