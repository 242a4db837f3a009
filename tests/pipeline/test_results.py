"""Pipelines that run without failures give the serial answer: the word-count example,
a 3-stage numeric pipeline, every grouping, and every kind of input."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from regrow import Client
from regrow.pipeline import (
    Files,
    Pipeline,
    Stage,
    group_all,
    group_label,
    group_node,
    group_node_label,
    run_pipeline,
    split,
)
from regrow.testing import wait_until

from . import tasks
from .helpers import TIMEOUT, numeric_pipeline
from .tasks import LABELS


def test_wordcount_example(client: Client) -> None:
    from examples import wordcount

    files = wordcount.stdlib_files(50)
    assert len(files) == 50
    result = run_pipeline(client, wordcount.pipeline(), Files(files))
    records = result.gather(timeout=TIMEOUT)
    words = [w for w, _ in records]
    assert len(words) == len(set(words)), "a word came out of two reduce tasks"
    assert collections.Counter(dict(records)) == wordcount.serial_count(files)
    mapped, reduced = result.progress
    assert (mapped.total, mapped.done, mapped.failed, mapped.restarted) == (50, 50, 0, 0)
    assert reduced.total == reduced.done == wordcount.PARTITIONS
    assert mapped.finished and reduced.finished


def test_three_stages(client: Client) -> None:
    inputs = tasks.numeric_inputs(60)
    result = run_pipeline(client, numeric_pipeline(), inputs, input_batch=5)
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)
    assert [(p.name, p.total, p.done, p.failed, p.restarted) for p in result.progress] == [
        ("square", 12, 12, 0, 0),
        ("shift", LABELS, LABELS, 0, 0),
        ("final", 1, 1, 0, 0),
    ]
    assert len(result.task_times()) == 12 + LABELS + 1
    assert not [msg for _, msg in result.history if "failed" in msg]
    assert result.done()


# ------------------------------------------------------------------ groupings
N_GROUPING_INPUTS = 8


def grouping_pipeline(grouping: str) -> Pipeline:
    return Pipeline(
        [
            (split, Stage("spread", process=tasks.spread, params={"sleep": 0.02})),
            (grouping, Stage("tag", init=tasks.tag_init, process=tasks.tag, done=tasks.tag_done)),
        ]
    )


@pytest.mark.parametrize("grouping", [split, group_label, group_all, group_node, group_node_label])
def test_grouping(client: Client, grouping: str) -> None:
    inputs = [(k, (k * 13) % 29) for k in range(80)]
    result = run_pipeline(
        client, grouping_pipeline(grouping), inputs, input_batch=80 // N_GROUPING_INPUTS
    )
    out = result.gather(timeout=TIMEOUT)
    recs = sorted((key, v) for key, v in out if key[0] == "rec")
    assert recs == sorted((("rec", k), v + 1) for k, v in inputs)
    # One ("task", ...) record per stage-1 task: (labels it saw, records it saw).
    seen = [value for key, value in out if key[0] == "task"]
    spread, tag = result.progress
    assert spread.total == spread.done == N_GROUPING_INPUTS
    assert tag.total == tag.done == len(seen)
    assert sum(n for _, n in seen) == len(inputs)
    labels = {v % LABELS for _, v in inputs}
    assert len(labels) == LABELS
    workers = set(client.scheduler_info()["workers"])
    # The group of each stage-1 task, from the times of the attempts that finished.
    groups = [group for stage, group, _, _ in result.task_times() if stage == "tag"]
    assert len(groups) == len(set(groups)) == len(seen)
    if grouping == split:
        assert len(seen) == N_GROUPING_INPUTS  # one task per producing task
    elif grouping == group_label:
        assert len(seen) == LABELS
        assert sorted(ls for ls, _ in seen) == [[label] for label in sorted(labels)]
    elif grouping == group_all:
        assert seen == [(sorted(labels), len(inputs))]
    elif grouping == group_node:
        # One task per worker holding outputs of stage 0: 1 or 2 workers here.
        assert 1 <= len(seen) <= len(workers)
        assert set(groups) <= workers, groups
    else:
        # One task per (worker, label) with outputs: each sees a single label.
        assert LABELS <= len(seen) <= LABELS * len(workers)
        assert all(len(ls) == 1 for ls, _ in seen)
        assert {g[0] for g in groups} <= workers, groups
        assert {g[1] for g in groups} == labels


# --------------------------------------------------------------------- inputs
def identity_pipeline() -> Pipeline:
    return Pipeline(
        [
            (split, Stage("a", process=tasks.identity)),
            (group_label, Stage("b", process=tasks.identity)),
        ]
    )


def test_inputs_futures(client: Client) -> None:
    batches = [[(f"k{i}-{j}", i * j) for j in range(20)] for i in range(6)]
    futures = client.scatter(batches)
    result = run_pipeline(client, identity_pipeline(), futures)
    got = list(result)  # every record once, as they become final
    assert sorted(got) == sorted(r for batch in batches for r in batch)
    assert result.progress[0].total == 6  # one task per Future (split)


def test_inputs_files(client: Client, tmp_path: Path) -> None:
    paths = []
    lines: list[str] = []
    for i in range(5):
        text = [f"line {i}.{j} " + "x" * j for j in range(30)]
        path = tmp_path / f"in-{i}.txt"
        path.write_text("\n".join(text) + "\n")
        paths.append(path)
        lines += text
    pipeline = Pipeline(
        [
            (split, Stage("lengths", process=tasks.line_lengths)),
            (group_label, Stage("b", process=tasks.identity)),
        ]
    )
    result = run_pipeline(client, pipeline, Files(paths))
    got = list(result)
    assert sorted(got) == sorted((line, len(line)) for line in lines)
    assert result.progress[0].total == 5  # one task per file


def test_inputs_iterable(client: Client) -> None:
    def records() -> Iterator[tuple[int, int]]:
        for k in range(2_500):
            yield k, k % 7

    result = run_pipeline(client, identity_pipeline(), records(), input_batch=1000)
    got = list(result)
    assert sorted(got) == [(k, k % 7) for k in range(2_500)]
    assert len(got) == 2_500
    assert result.progress[0].total == 3  # 1000 + 1000 + 500 records
    # Iterating again after the end yields nothing more, and gather() agrees it is over.
    assert list(result) == []


def test_finished_job_frees_the_cluster(client: Client) -> None:
    """Once a job is over, its intermediate results leave the cluster, though its
    PipelineResult is still alive (what it hands out are plain records)."""
    inputs = tasks.numeric_inputs(60)
    result = run_pipeline(client, numeric_pipeline(), inputs, input_batch=5)
    assert sorted(result.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)

    def empty() -> bool:
        info = client.scheduler_info()
        return not info["tasks"] and all(w["nkeys"] == 0 for w in info["workers"].values())

    wait_until(empty, timeout=10, what="the cluster holds nothing of the finished job")
    assert result.done() and result.progress[2].done == 1


def test_regrow_progress_draws_a_pipelines_stages(client: Client) -> None:
    import io

    from rich.console import Console

    from regrow import progress

    inputs = tasks.numeric_inputs(60)
    job = run_pipeline(client, numeric_pipeline(), inputs, input_batch=5)
    out = io.StringIO()
    progress(job, console=Console(file=out, width=120))
    assert job.done()
    rows = {line.split()[1]: line for line in out.getvalue().splitlines() if "│" in line}
    assert "12/12" in rows["square"] and "finished" in rows["square"]
    assert "1/1" in rows["final"]
    assert sorted(job.gather(timeout=TIMEOUT)) == tasks.numeric_expected(inputs)


def test_a_task_with_all_its_inputs_is_one_step(client: Client) -> None:
    """A task whose first inputs are its last runs init, process and done as one regrow
    task (stages.last_step): its state never moves to another worker."""
    from examples import wordcount

    files = wordcount.stdlib_files(6)
    pipeline = Pipeline(
        [
            (split, Stage("map", process=wordcount.map_words)),
            (
                group_all,
                Stage(
                    "reduce",
                    init=wordcount.reduce_init,
                    process=wordcount.reduce_count,
                    done=wordcount.reduce_emit,
                    concurrent=False,  # it starts once every map task has finished
                ),
            ),
        ]
    )
    before = client.scheduler_info()["counts"].get("finished", 0)
    result = run_pipeline(client, pipeline, Files(files))
    assert collections.Counter(dict(result.gather(timeout=TIMEOUT))) == wordcount.serial_count(
        files
    )
    finished = client.scheduler_info()["counts"]["finished"] - before
    assert finished == len(files) + 1  # one per map task, one for the reduce
