"""A reason never ends in an empty string: exceptions that say nothing (a bare
``TimeoutError()``, ``ValueError()``) are named by their type, in a task's error, a
refused request and the one-line errors of the command line."""

from __future__ import annotations

import pytest

from conftest import MakeCluster
from regrow.errors import explain, reason
from regrow.protocol.comm import error_reply


def test_explain_and_reason_never_end_empty() -> None:
    assert explain(TimeoutError()) == "TimeoutError"
    assert explain(ValueError("bad x")) == "ValueError: bad x"
    assert explain(KeyError("")) == "KeyError: ''"
    assert reason(OSError()) == "OSError"
    assert reason(RuntimeError("  ")) == "RuntimeError"
    assert error_reply(TimeoutError()).error == "TimeoutError"


def _silent() -> None:
    raise ValueError()


def test_a_task_error_without_a_message_is_named(make_cluster: MakeCluster) -> None:
    _, client = make_cluster(n_workers=1)
    future = client.submit(_silent)
    with pytest.raises(ValueError):
        future.result(timeout=30)
    # What the worker reported, as the client keeps it (and KilledWorker would say).
    assert future._state.text == "ValueError"
