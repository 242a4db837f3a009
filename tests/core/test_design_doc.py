"""docs/design.md shows both cores' transition tables as the code has them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from regrow.core import transitions, worker_state

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def _tables(text: str) -> list[dict[tuple[str, str], str]]:
    """Every markdown table of the form | from | to | when |, in order."""
    tables: list[dict[tuple[str, str], str]] = []
    current: dict[tuple[str, str], str] | None = None
    for line in text.splitlines():
        if line.startswith("| from | to | when |"):
            current = {}
            tables.append(current)
            continue
        if current is None:
            continue
        row = re.fullmatch(r"\| (\w+) \| (\w+) \| (.+) \|", line)
        if row:
            current[(row[1], row[2])] = row[3]
        elif not line.startswith("|---"):
            current = None
    return tables


@pytest.mark.skipif(not DESIGN.exists(), reason="docs/ not beside the tests")
def test_the_design_doc_tables_are_the_code() -> None:
    tables = _tables(DESIGN.read_text())
    assert tables == [transitions.TRANSITIONS, worker_state.TRANSITIONS]


def test_the_table_reader_reads_tables() -> None:
    text = "x\n| from | to | when |\n|---|---|---|\n| a | b | why |\n\n| c | d | no |\n"
    assert _tables(text) == [{("a", "b"): "why"}]
