"""Malformed pipelines and arguments fail at once, with errors that say what is wrong
(nothing is submitted to the cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from regrow import Client
from regrow.pipeline import GROUPINGS, Pipeline, Stage, run_pipeline, split

from . import tasks


def stage(name: str = "s") -> Stage:
    return Stage(name, process=tasks.identity)


def test_unknown_grouping() -> None:
    with pytest.raises(ValueError, match=r"unknown grouping 'group_by_color'.*group_label"):
        Pipeline([("group_by_color", stage())])


def test_non_stage_entry() -> None:
    with pytest.raises(TypeError, match="expected a Stage, got function"):
        Pipeline([(split, tasks.identity)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"\(grouping, Stage\) pairs"):
        Pipeline([stage()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"\(grouping, Stage\) pairs"):
        Pipeline([(split, stage(), "extra")])  # type: ignore[list-item]


def test_empty_pipeline() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Pipeline([])


def test_duplicate_stage_names() -> None:
    with pytest.raises(ValueError, match="two stages are named 's'"):
        Pipeline([(split, stage()), (split, stage())])


@pytest.mark.parametrize("process", [None, 42, "identity"])
def test_non_callable_process(process: Any) -> None:
    with pytest.raises(TypeError, match="stage 'bad': process must be callable"):
        Stage("bad", process=process)


def test_non_callable_done() -> None:
    with pytest.raises(TypeError, match="stage 'bad': done must be callable"):
        Stage("bad", process=tasks.identity, done=42)  # type: ignore[arg-type]


def test_run_pipeline_validates(client: Client) -> None:
    """run_pipeline takes a plain list of pairs too, checked the same way; bad
    arguments raise before anything runs."""
    with pytest.raises(ValueError, match="unknown grouping"):
        run_pipeline(client, [("nope", stage())], [(1, 1)])
    with pytest.raises(ValueError, match="at least one"):
        run_pipeline(client, [], [(1, 1)])
    with pytest.raises(TypeError, match="expected a Stage"):
        run_pipeline(client, [(split, "not a stage")], [(1, 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="retries must be a non-negative int"):
        run_pipeline(client, [(split, stage())], [(1, 1)], retries=-1)
    future = client.scatter([(1, 1)])
    with pytest.raises(TypeError, match="mix Futures and plain records"):
        run_pipeline(client, [(split, stage())], [future[0], [(2, 2)]])
    assert client.scheduler_info()["tasks"].get("processing", 0) == 0


def test_groupings_exported() -> None:
    assert set(GROUPINGS) == {"split", "group_label", "group_all", "group_node", "group_node_label"}


@pytest.mark.parametrize("input_batch", [0, -5, 2.5, None])
def test_bad_input_batch(client: Client, input_batch: Any) -> None:
    # -5 used to cut the records into no inputs at all: a job with an empty result.
    with pytest.raises(ValueError, match="input_batch must be a positive int"):
        run_pipeline(client, [(split, stage())], [(1, 1)], input_batch=input_batch)
