"""Tasks the deployment tests run on their workers (importable there as ``deploy.tasks``)."""

from __future__ import annotations

import os
import time
import uuid


def gated_double(i: int, gate: str, runs: str) -> int:
    """Wait for the file ``gate`` (at most 60 s), note this run in ``runs``, return 2*i.

    Each run leaves its own file ``runs/<i>-<uuid>``: a task run twice (recomputed)
    leaves two."""
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.01)
    open(os.path.join(runs, f"{i}-{uuid.uuid4().hex}"), "w").close()
    return 2 * i


def double(i: int) -> int:
    return 2 * i


def add(*xs: int) -> int:
    return sum(xs)


def block(i: int, size: int = 1 << 20) -> bytes:
    """``size`` bytes named by ``i``: too big for the scheduler to keep a copy of."""
    return i.to_bytes(4, "big") * (size // 4)
