"""The restart policy on its own (regrow.pipeline.plan): plain data in, plain data out,
no cluster. Tasks are written ``{group: task(inputs..., finished=...)}`` per stage; an
input is the producing attempt ``a(stage, group, attempt)``, or None for a job input."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from regrow.pipeline import group_all, group_label, group_node, group_node_label, split
from regrow.pipeline.plan import (
    Attempt,
    Restart,
    RestartPlan,
    Task,
    TaskKey,
    out_of_retries,
    plan_restart,
    settled,
)

a = Attempt
JOB = None  # a job input


def task(*inputs: Attempt | None, attempt: int = 0, finished: bool = False) -> Task:
    return Task(attempt, tuple(inputs), finished)


def restarted(p: RestartPlan) -> list[TaskKey]:
    return [(r.task.stage, r.task.group) for r in p.restarts]


def by_key(p: RestartPlan) -> dict[TaskKey, Restart]:
    return {(r.task.stage, r.task.group): r for r in p.restarts}


# A three-stage job: split (2 inputs each), group_label, group_all.
GROUPINGS = [split, group_label, group_all]


def running_job() -> list[dict[Hashable, Task]]:
    """Stage 0 half done; stage 1 has consumed some of it; stage 2 some of stage 1."""
    return [
        {
            0: task(JOB, JOB, finished=True),
            1: task(JOB, JOB),
            2: task(JOB),
        },
        {
            "x": task(a(0, 0, 0), a(0, 1, 0), finished=False),
            "y": task(a(0, 0, 0)),
        },
        {0: task(a(1, "x", 0))},
    ]


# ------------------------------------------------------------------ the cases
def test_first_stage_fails_before_anything_consumed_it() -> None:
    tasks: list[dict[Hashable, Task]] = [{0: task(JOB), 1: task(JOB)}, {}, {}]
    p = plan_restart(GROUPINGS, tasks, [(0, 1)], [False, False, False])
    assert p.restarts == (Restart(a(0, 1, 0), failed=True, keep=(0,)),)
    assert p.complete == (False, False, False)


def test_first_stage_fails_every_non_split_consumer_restarts_transitively() -> None:
    p = plan_restart(GROUPINGS, running_job(), [(0, 2)], [False, False, False])
    # Stage 1 is grouped by label: the next attempt of 0/2 may write any label, so every
    # stage-1 task restarts though none got a batch of 0/2 yet; then all of stage 2.
    assert restarted(p) == [(0, 2), (1, "x"), (1, "y"), (2, 0)]
    assert [r.failed for r in p.restarts] == [True, False, False, False]
    # 0/2 keeps its job input; stage 1 keeps the batches of stage-0 tasks that are not
    # restarting; stage 2 loses everything it had (its producers all restart).
    keep = {key: r.keep for key, r in by_key(p).items()}
    assert keep == {(0, 2): (0,), (1, "x"): (0, 1), (1, "y"): (0,), (2, 0): ()}


def test_restarted_consumers_drop_the_failed_producers_batches() -> None:
    p = plan_restart(GROUPINGS, running_job(), [(0, 0)], [False, False, False])
    assert restarted(p) == [(0, 0), (1, "x"), (1, "y"), (2, 0)]
    assert by_key(p)[(1, "x")].keep == (1,)  # 0/1's batch stays, 0/0's comes again
    assert by_key(p)[(1, "y")].keep == ()


def test_last_stage_fails_restarts_only_itself() -> None:
    p = plan_restart(GROUPINGS, running_job(), [(2, 0)], [False, False, False])
    assert p.restarts == (Restart(a(2, 0, 0), failed=True, keep=(0,)),)


def test_single_stage_job() -> None:
    tasks: list[dict[Hashable, Task]] = [{0: task(JOB, finished=True), 1: task(JOB)}]
    p = plan_restart([split], tasks, [(0, 1)], [False])
    assert p.restarts == (Restart(a(0, 1, 0), failed=True, keep=(0,)),)


def test_split_consumers_only_those_that_got_its_outputs() -> None:
    groupings = [split, split, split]
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True), 1: task(JOB, finished=True), 2: task(JOB)},
        {(0, 0): task(a(0, 0, 0), a(0, 0, 0)), (1, 0): task(a(0, 1, 0), finished=True)},
        {((0, 0), 1): task(a(1, (0, 0), 0)), ((1, 0), 1): task(a(1, (1, 0), 0))},
    ]
    p = plan_restart(groupings, tasks, [(0, 0)], [False, False, False])
    assert restarted(p) == [(0, 0), (1, (0, 0)), (2, ((0, 0), 1))]
    assert by_key(p)[(1, (0, 0))].keep == ()
    # A split stage whose producers are still running: nothing downstream of 0/2 exists.
    p = plan_restart(groupings, tasks, [(0, 2)], [False, False, False])
    assert restarted(p) == [(0, 2)]


def test_split_chain_stops_where_a_consumer_has_nothing_of_it() -> None:
    groupings = [split, split, group_all]
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB), 1: task(JOB)},
        {(1, 0): task(a(0, 1, 0))},
        {0: task(a(1, (1, 0), 0))},
    ]
    p = plan_restart(groupings, tasks, [(0, 0)], [False, False, False])
    # No stage-1 task got a batch of 0/0, so nothing below it restarts (the group_all
    # stage only restarts when a stage-1 task does).
    assert restarted(p) == [(0, 0)]


@pytest.mark.parametrize("grouping", [group_label, group_all, group_node, group_node_label])
def test_fan_out_every_task_of_a_non_split_stage_restarts(grouping: str) -> None:
    # One producer whose labels went to three consumers, and one that has nothing of it.
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True)},
        {
            "a": task(a(0, 0, 0), finished=True),
            "b": task(a(0, 0, 0)),
            "c": task(a(0, 0, 0)),
            "d": task(),
        },
    ]
    p = plan_restart([split, grouping], tasks, [(0, 0)], [True, False])
    assert restarted(p) == [(0, 0), (1, "a"), (1, "b"), (1, "c"), (1, "d")]
    assert all(r.keep == () for r in p.restarts[1:])
    assert p.complete == (False, False)


def test_fan_in_one_producer_of_many_fails() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {i: task(JOB, finished=i != 2) for i in range(4)},
        {0: task(a(0, 0, 0), a(0, 1, 0), a(0, 2, 0), a(0, 3, 0), a(0, 1, 0))},
    ]
    p = plan_restart([split, group_all], tasks, [(0, 2)], [False, False])
    assert restarted(p) == [(0, 2), (1, 0)]
    assert by_key(p)[(1, 0)].keep == (0, 1, 3, 4)  # all but 0/2's batch, in order


def test_failure_while_some_consumers_are_done() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True), 1: task(JOB, finished=True)},
        {
            "x": task(a(0, 0, 0), a(0, 1, 0), finished=True),
            "y": task(a(0, 1, 0), finished=True),
            "z": task(a(0, 0, 0)),
        },
        {0: task(a(1, "x", 0), a(1, "y", 0))},
    ]
    # Stage 0 is complete; a worker dies under 0/1 (say, in a late step report).
    p = plan_restart(GROUPINGS, tasks, [(0, 1)], [True, False, False])
    # Finished or not, every stage-1 task restarts: done ones too.
    assert restarted(p) == [(0, 1), (1, "x"), (1, "y"), (1, "z"), (2, 0)]
    assert by_key(p)[(1, "x")].keep == (0,)
    assert p.complete == (False, False, False)


def test_a_middle_stage_fails_after_its_producers_finished() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True)},
        {"x": task(a(0, 0, 0), finished=True), "y": task(a(0, 0, 0))},
        {0: task(a(1, "x", 0), finished=True)},
    ]
    p = plan_restart(GROUPINGS, tasks, [(1, "y")], [True, False, False])
    # Upstream does not restart: a lost finished output is recomputed by lineage.
    # The finished sibling x does not restart: it never consumes y's outputs.
    assert restarted(p) == [(1, "y"), (2, 0)]
    assert p.complete == (True, False, False)  # stage 0 stays complete
    assert by_key(p)[(1, "y")].keep == (0,)
    assert by_key(p)[(2, 0)].keep == (0,)  # x's batch stays


def test_restart_of_a_complete_stage_reopens_it_and_every_later_one() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True)},
        {"x": task(a(0, 0, 0), finished=True)},
        {0: task(a(1, "x", 0), finished=True)},
    ]
    p = plan_restart(GROUPINGS, tasks, [(1, "x")], [True, True, True])
    assert p.complete == (True, False, False)
    p = plan_restart(GROUPINGS, tasks, [(2, 0)], [True, True, True])
    assert p.complete == (True, True, False)


def test_batches_of_an_earlier_attempt_are_dropped() -> None:
    # 0/0 is on attempt 1; the consumer still holds a batch of attempt 0 (stale).
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, attempt=1), 1: task(JOB, finished=True)},
        {0: task(a(0, 0, 0), a(0, 1, 0), a(0, 0, 1), attempt=2)},
    ]
    p = plan_restart([split, group_all], tasks, [(1, 0)], [False, False])
    assert p.restarts == (Restart(a(1, 0, 2), failed=True, keep=(1, 2)),)


def test_split_consumer_of_an_earlier_attempt_only_is_not_taken_along() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, attempt=1)},
        {(0, 0): task(a(0, 0, 0), attempt=1)},  # got nothing of attempt 1 yet
    ]
    p = plan_restart([split, split], tasks, [(0, 0)], [False, False])
    assert restarted(p) == [(0, 0)]


def test_failures_together_are_planned_at_once_in_any_order() -> None:
    job = running_job()
    one = plan_restart(GROUPINGS, job, [(0, 1), (1, "x")], [False, False, False])
    other = plan_restart(GROUPINGS, job, [(1, "x"), (0, 1)], [False, False, False])
    assert set(one.restarts) == set(other.restarts)
    # Each task restarts once; both that failed count as failed (not as restarted).
    assert sorted(restarted(one), key=str) == sorted([(0, 1), (1, "x"), (1, "y"), (2, 0)], key=str)
    assert {key for key, r in by_key(one).items() if r.failed} == {(0, 1), (1, "x")}
    assert [r.task.stage for r in one.restarts] == [0, 1, 1, 2]  # producers first


def test_siblings_failing_together() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True)},
        {"x": task(a(0, 0, 0)), "y": task(a(0, 0, 0)), "z": task(a(0, 0, 0))},
        {0: task(a(1, "z", 0))},
    ]
    p = plan_restart(GROUPINGS, tasks, [(1, "x"), (1, "y")], [True, False, False])
    assert restarted(p) == [(1, "x"), (1, "y"), (2, 0)]
    assert by_key(p)[(2, 0)].keep == (0,)


def test_no_failures_no_restarts() -> None:
    p = plan_restart(GROUPINGS, running_job(), [], [True, False, False])
    assert p == RestartPlan((), (True, False, False))


def test_the_inputs_are_not_changed() -> None:
    job = running_job()
    snapshot = [dict(stage) for stage in job]
    complete = [False, False, False]
    plan_restart(GROUPINGS, job, [(0, 0)], complete)
    assert job == snapshot and complete == [False, False, False]


def test_bad_arguments() -> None:
    with pytest.raises(KeyError, match="no task 9 in stage 0"):
        plan_restart(GROUPINGS, running_job(), [(0, 9)], [False] * 3)
    with pytest.raises(KeyError, match="in stage 3"):
        plan_restart(GROUPINGS, running_job(), [(3, 0)], [False] * 3)
    with pytest.raises(ValueError, match="one of each per stage"):
        plan_restart(GROUPINGS, running_job(), [(0, 0)], [False] * 2)
    with pytest.raises(ValueError, match="unknown grouping 'nope'"):
        plan_restart([split, "nope", group_all], running_job(), [(0, 0)], [False] * 3)


# ------------------------------------------------------------------ retries
@pytest.mark.parametrize(
    ("raised", "retries", "gives_up"),
    [(1, 0, True), (1, 2, False), (2, 2, False), (3, 2, True)],
)
def test_out_of_retries(raised: int, retries: int, gives_up: bool) -> None:
    assert out_of_retries(raised, retries) is gives_up


# ------------------------------------------------------------------ settled
def test_settled_needs_the_task_finished() -> None:
    tasks: list[dict[Hashable, Task]] = [{0: task(JOB), 1: task(JOB, finished=True)}]
    assert not settled([split], tasks, (0, 0), [False])
    assert settled([split], tasks, (0, 1), [False])  # first stage: only itself can fail
    assert not settled([split], tasks, (0, 5), [False])  # no such task


def test_settled_once_the_stage_before_is_complete() -> None:
    tasks = running_job()
    tasks[2][0] = task(a(1, "x", 0), finished=True)
    assert not settled(GROUPINGS, tasks, (2, 0), [False, False, False])
    assert settled(GROUPINGS, tasks, (2, 0), [True, True, False])


def test_settled_up_a_split_chain() -> None:
    groupings = [split, split, split]
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True), 1: task(JOB), 2: task(JOB, attempt=1, finished=True)},
        {
            (0, 0): task(a(0, 0, 0), finished=True),
            (1, 0): task(a(0, 1, 0), finished=True),
            (2, 0): task(a(0, 2, 0), finished=True),  # a batch of an earlier attempt
        },
        {
            ((0, 0), 1): task(a(1, (0, 0), 0), a(1, (0, 0), 0), finished=True),
            ((1, 0), 1): task(a(1, (1, 0), 0), finished=True),
            ((2, 0), 1): task(a(1, (2, 0), 0), finished=True),
        },
    ]
    incomplete = [False, False, False]
    assert settled(groupings, tasks, (2, ((0, 0), 1)), incomplete)
    assert not settled(groupings, tasks, (2, ((1, 0), 1)), incomplete)  # 0/1 still runs
    assert not settled(groupings, tasks, (2, ((2, 0), 1)), incomplete)  # 1/(2, 0) is stale


def test_not_settled_below_a_non_split_stage_still_running() -> None:
    groupings = [split, group_label, split]
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True), 1: task(JOB)},
        {"x": task(a(0, 0, 0), finished=True)},
        {("x", 1): task(a(1, "x", 0), finished=True)},
    ]
    # x finished, but 0/1 may still fail, and x (grouped by label) restarts with it.
    assert not settled(groupings, tasks, (2, ("x", 1)), [False, False, False])
    # The walk up the chain stops at the first non-split stage: settled only once the
    # whole stage before is complete (conservative: stage 0 complete would do here).
    assert not settled(groupings, tasks, (2, ("x", 1)), [True, False, False])
    assert settled(groupings, tasks, (2, ("x", 1)), [True, True, False])


def test_not_settled_with_two_producers() -> None:
    tasks: list[dict[Hashable, Task]] = [
        {0: task(JOB, finished=True), 1: task(JOB, finished=True)},
        {0: task(a(0, 0, 0), a(0, 1, 0), finished=True)},
    ]
    assert not settled([split, split], tasks, (1, 0), [False, False])


# ------------------------------------------------------------------ a model check
@hs.composite
def jobs(
    draw: hs.DrawFn,
) -> tuple[list[str], list[dict[Hashable, Task]], list[TaskKey], list[bool]]:
    n_stages = draw(hs.integers(1, 4))
    groupings = [draw(hs.sampled_from([split, group_label, group_all])) for _ in range(n_stages)]
    tasks: list[dict[Hashable, Task]] = []
    for stage in range(n_stages):
        groups = draw(hs.integers(0 if stage else 1, 4))
        made: dict[Hashable, Task] = {}
        for g in range(groups):
            if stage == 0:
                inputs: list[Attempt | None] = [JOB]
            else:
                before = tasks[stage - 1]
                producers = [a(stage - 1, p, t.attempt) for p, t in before.items()]
                inputs = []
                if producers:
                    inputs = list(draw(hs.lists(hs.sampled_from(producers), max_size=3)))
                if draw(hs.booleans()):
                    inputs.append(a(stage - 1, 0, -1))  # a batch of a stale attempt
            made[g] = Task(draw(hs.integers(0, 2)), tuple(inputs), draw(hs.booleans()))
        tasks.append(made)
    existing = [(s, g) for s in range(n_stages) for g in tasks[s]]
    failed = draw(hs.lists(hs.sampled_from(existing), max_size=3, unique=True))
    done = draw(hs.integers(0, n_stages))
    return groupings, tasks, failed, [i < done for i in range(n_stages)]


def consumers(
    groupings: Sequence[str], tasks: Sequence[Mapping[Hashable, Task]], key: TaskKey
) -> set[TaskKey]:
    stage, group = key
    if stage + 1 == len(groupings):
        return set()
    me = a(stage, group, tasks[stage][group].attempt)
    return {
        (stage + 1, g)
        for g, t in tasks[stage + 1].items()
        if groupings[stage + 1] != split or me in t.inputs
    }


@settings(max_examples=300, deadline=None)
@given(jobs())
def test_plan_matches_the_rule(
    job: tuple[list[str], list[dict[Hashable, Task]], list[TaskKey], list[bool]],
) -> None:
    groupings, tasks, failed, complete = job
    p = plan_restart(groupings, tasks, failed, complete)
    # The closure of the failed tasks under "could have consumed", nothing more.
    closure: set[TaskKey] = set()
    todo = list(failed)
    while todo:
        key = todo.pop()
        if key not in closure:
            closure.add(key)
            todo.extend(consumers(groupings, tasks, key))
    keys = restarted(p)
    assert len(keys) == len(set(keys)) and set(keys) == closure
    assert [r.task.stage for r in p.restarts] == sorted(r.task.stage for r in p.restarts)
    doomed = {r.task for r in p.restarts}
    for r in p.restarts:
        assert r.failed == ((r.task.stage, r.task.group) in failed)
        assert r.task.attempt == tasks[r.task.stage][r.task.group].attempt
        inputs = tasks[r.task.stage][r.task.group].inputs
        for i, producer in enumerate(inputs):
            current = producer is None or (
                tasks[producer.stage].get(producer.group, Task(-2)).attempt == producer.attempt
            )
            assert (i in r.keep) == (current and producer not in doomed)
    first = min((s for s, _ in closure), default=len(complete))
    assert p.complete == tuple(c and i < first for i, c in enumerate(complete))
