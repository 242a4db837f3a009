"""Functions the executor suite runs on workers (imported there by reference)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from regrow.testing import wait_until

from .tasks import GATE_TIMEOUT


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: Any) -> MyObject:
    return MyObject()


def started_and_gated(value: Any, gate: str, marker_dir: str) -> Any:
    """Leave a file named after ``value`` in ``marker_dir``, then wait for ``gate``."""
    Path(marker_dir, f"started-{value}").touch()
    wait_until(lambda: os.path.exists(gate), timeout=GATE_TIMEOUT, what=f"gate {gate}")
    return value


def pid(_: Any = None) -> int:
    return os.getpid()
