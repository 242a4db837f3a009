from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from regrow import Client, LocalCluster
from regrow.testing import MakeCluster, children_of, wait_until

# Schedulers the tests start serve no dashboard unless a test asks (on port 0): none
# binds 8787, and none pays for aiohttp it does not use.
os.environ["REGROW_DASHBOARD_ADDRESS"] = ""
# No config file of the machine's (~/.config/regrow, ./regrow.yaml) changes the tests.
os.environ["REGROW_CONFIG"] = ""


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """One real 2-worker cluster (separate processes on loopback) shared by a session."""
    with LocalCluster(n_workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c
        # Every test leaves the cluster as it found it: its keys freed everywhere.
    wait_until(lambda: _cluster_empty(cluster), timeout=10, what="cluster forgets the test's keys")


def _cluster_empty(cluster: LocalCluster) -> bool:
    with Client(cluster, set_as_default=False) as probe:
        info = probe.scheduler_info()
    return not info["tasks"] and all(w["nkeys"] == 0 for w in info["workers"].values())


@pytest.fixture(autouse=True, scope="session")
def _no_orphans() -> Iterator[None]:
    before = {p.pid for p in children_of(os.getpid())}
    yield
    wait_until(
        lambda: not [p for p in children_of(os.getpid()) if p.pid not in before],
        timeout=15,
        what="every process the tests started has exited",
    )


@pytest.fixture
def make_cluster() -> Iterator[MakeCluster]:
    """``make_cluster(**LocalCluster keywords) -> (cluster, client)``, for tests that kill,
    freeze or starve their cluster: each test gets its own, both closed at teardown whatever
    happened. Defaults: 2 workers of 1 thread, quiet logs; the client is not the default."""
    made: list[tuple[LocalCluster, Client]] = []

    def make(**kwargs: Any) -> tuple[LocalCluster, Client]:
        kwargs.setdefault("n_workers", 2)
        kwargs.setdefault("threads_per_worker", 1)
        kwargs.setdefault("log_level", "ERROR")
        cluster = LocalCluster(**kwargs)
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        made.append((cluster, client))
        return cluster, client

    yield make
    for cluster, client in reversed(made):
        with contextlib.suppress(Exception):
            client.close()
        cluster.close()
