from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from regrow import Client

from .tasks import Gate


@pytest.fixture
def gates(client: Client, tmp_path: Path) -> Iterator[Callable[[], Gate]]:
    """Make gates; every gate opens when the test ends (before ``client`` checks the
    cluster is clean), so no worker thread stays blocked for the next test."""
    made: list[Gate] = []

    def make() -> Gate:
        gate = Gate(tmp_path, len(made))
        made.append(gate)
        return gate

    yield make
    for gate in made:
        gate.open()


@pytest.fixture
def workers(client: Client) -> list[str]:
    """The addresses of the session cluster's workers, sorted by name."""
    info = client.scheduler_info()["workers"]
    return sorted(info, key=lambda a: info[a]["name"])
