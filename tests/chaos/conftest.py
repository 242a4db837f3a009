"""Fixtures for the chaos tests: each test gets clusters of its own (real processes),
closed at the end whatever happened, since most tests kill, freeze or starve workers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from regrow import Client, LocalCluster

from .helpers import MakeCluster


@pytest.fixture
def make_cluster() -> Iterator[MakeCluster]:
    """``make_cluster(**LocalCluster kwargs) -> (cluster, client)``; both closed at teardown.

    Defaults: 2 workers with 1 thread each, quiet logs. The client is not made the
    default client, so nothing outlives the test by accident.
    """
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
