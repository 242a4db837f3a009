"""Fixtures for the pipeline tests: one real 2-worker cluster per test module (the
kill tests replace workers, so no module inherits another's), gates opened at the
end of every test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regrow import Client, LocalCluster

from .helpers import Gate

# `from examples import wordcount` needs the repository root on sys.path: pytest puts
# only tests/ there. Before any cluster starts, so its workers inherit it too.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A real cluster (scheduler and 2 worker processes of 1 thread) for one module, with
    the module's ``CLUSTER_SETTINGS`` if it has any."""
    settings = getattr(request.module, "CLUSTER_SETTINGS", {})
    with LocalCluster(n_workers=2, threads_per_worker=1, log_level="ERROR", **settings) as c:
        yield c


@pytest.fixture
def gates(client: Client, tmp_path: Path) -> Iterator[Callable[[], Gate]]:
    """Make gates; all open when the test ends (before ``client`` checks the cluster
    is clean), so no worker thread stays blocked for the next test."""
    made: list[Gate] = []

    def make() -> Gate:
        gate = Gate(tmp_path, len(made))
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.open()
