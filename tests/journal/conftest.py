"""Fixtures for the journal tests: clusters of real processes, each closed at the end
of its test whatever happened (most tests SIGKILL a scheduler)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from regrow import Client, LocalCluster

MakeCluster = Callable[..., tuple[LocalCluster, Client]]


@pytest.fixture
def make_cluster() -> Iterator[MakeCluster]:
    """``make_cluster(**LocalCluster keywords) -> (cluster, client)``; both closed at
    teardown. Defaults: 2 workers of 1 thread, quiet logs; the client is not the default."""
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
