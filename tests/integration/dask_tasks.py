"""Functions that dask graphs in the tests run on workers (imported there by reference)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class PartitionError(Exception):
    """Raised by one partition on purpose."""


def fail_on(value: Any, bad: Any) -> Any:
    if value == bad:
        raise PartitionError(f"bad partition {value!r}")
    return value


def flaky(value: Any, marker: str) -> Any:
    """Fails the first time it runs anywhere (a marker file remembers), then succeeds."""
    if not os.path.exists(marker):
        Path(marker).touch()
        raise PartitionError("first try fails")
    return value


def worker_pid(value: Any) -> int:
    return os.getpid()
