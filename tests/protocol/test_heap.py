"""protocol.heap: freed memory kept warm up to a budget, and given back.

Each check runs in a child interpreter: mallopt changes the whole process's malloc."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from regrow.protocol import heap

needs_glibc = pytest.mark.skipif(not heap._MALLINFO2, reason="glibc 2.33+ malloc is not here")

MB = 1 << 20

CHILD = """
import json, sys
from regrow.protocol import heap
budget = int(sys.argv[1])
out = {"warm": heap.keep_warm(budget), "budget": heap.budget}
value = bytes(100 << 20)  # made on the main thread: the main arena
del value
out["after_free"] = heap.free_bytes()
out["tidied"] = heap.tidy()
out["after_tidy"] = heap.free_bytes()
out["gave_back"] = heap.give_back()
out["after_give_back"] = heap.free_bytes()
print(json.dumps(out))
"""


def _child(budget: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(budget)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


@needs_glibc
def test_a_freed_large_value_is_kept_within_the_budget_and_given_back() -> None:
    got = _child(256 * MB)
    assert got["warm"] and got["budget"] == 256 * MB
    assert got["after_free"] >= 100 * MB  # its pages stay in malloc's heap, to reuse
    assert not got["tidied"] and got["after_tidy"] >= 100 * MB  # within the budget
    assert got["gave_back"] and got["after_give_back"] < 100 * MB


@needs_glibc
def test_past_the_budget_a_value_is_mapped_and_unmapped_as_before() -> None:
    got = _child(50 * MB)
    assert got["warm"]
    assert got["after_free"] < 50 * MB  # 100 MB > the budget: mmap'd, and gone when freed


def test_no_budget_changes_nothing() -> None:
    before = heap.budget
    assert heap.keep_warm(0) is False
    assert heap.budget == before
