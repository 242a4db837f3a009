from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .cluster import Cluster


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``start(**settings)``: a scheduler (settings as REGROW_* variables) and one worker,
    both started with the ``regrow`` CLI and stopped by PID at teardown."""
    made: list[Cluster] = []

    def make(**settings: object) -> Cluster:
        d = tmp_path / f"cluster{len(made)}"
        d.mkdir()
        c = Cluster(d, settings)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
