"""A stage's own exceptions: retried up to ``retries`` times, then the job fails with
the user's exception."""

from __future__ import annotations

from pathlib import Path

import pytest

from regrow import Client
from regrow.pipeline import run_pipeline

from . import tasks
from .helpers import TIMEOUT, numeric_pipeline
from .tasks import LABELS, StageError


def test_fails_once_then_succeeds(client: Client, tmp_path: Path) -> None:
    inputs = tasks.numeric_inputs(60)
    marker = tmp_path / "failed-once"
    params = {"fail": (str(marker), 17)}  # the task holding key 17 fails its first attempt
    result = run_pipeline(client, numeric_pipeline(params), inputs, input_batch=5, retries=2)
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)
    assert marker.exists()
    square, shift, final = result.progress
    assert (square.total, square.done, square.failed, square.restarted) == (12, 12, 1, 0)
    # Its consumers (every stage-1 task may have consumed it, so all of them) restarted
    # if they existed when it failed; the job's totals are unchanged.
    assert (shift.total, shift.done, shift.failed) == (LABELS, LABELS, 0)
    assert (final.total, final.done, final.failed) == (1, 1, 0)
    failures = [msg for _, msg in result.history if "failed (StageError" in msg]
    assert len(failures) == 1, result.history
    assert "square[3]" in failures[0]  # input batch 3 holds keys 15..19


def test_always_fails(client: Client) -> None:
    inputs = tasks.numeric_inputs(60)
    params = {"fail": (None, 42)}
    result = run_pipeline(client, numeric_pipeline(params), inputs, input_batch=5, retries=2)
    with pytest.raises(StageError, match="record 42 is poison") as info:
        result.gather(timeout=TIMEOUT)
    notes = getattr(info.value, "__notes__", [])
    assert any("failed 3 time(s); retries=2" in n for n in notes), notes
    assert result.done()
    failures = [msg for _, msg in result.history if "square[8]" in msg]
    # Two failures that restart it, then the third that ends the job.
    assert len([m for m in failures if "restarting" in m]) == 2, failures
    assert any("failed 3 times" in m for m in failures), failures
    assert result.progress[0].failed == 2
    # Iterating the failed job raises too, every time.
    with pytest.raises(StageError):
        list(result)
    with pytest.raises(StageError):
        result.wait(timeout=1)


def test_retries_zero(client: Client, tmp_path: Path) -> None:
    """With retries=0 even a failure that would go away on retry ends the job."""
    inputs = tasks.numeric_inputs(20)
    params = {"fail": (str(tmp_path / "once"), 3)}
    result = run_pipeline(client, numeric_pipeline(params), inputs, input_batch=5, retries=0)
    with pytest.raises(StageError, match="first attempt"):
        result.gather(timeout=TIMEOUT)
