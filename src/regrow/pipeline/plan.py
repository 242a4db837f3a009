"""The pipeline's restart policy, as pure functions of plain data.

The rule (the seed's): when a task fails, it is restarted with every task that could
have consumed its outputs, transitively, running or finished; each restarted task
consumes again the inputs it had that are still valid, and gets the rest from the new
attempts of its restarted producers. Which tasks could have consumed a task's outputs
depends on the grouping of the next stage:

- ``split``: a consumer takes the outputs of one producer, so only the tasks that
  were routed a batch of the failed attempt;
- any other grouping: the next attempt may write any label, on any worker, so every
  task of the next stage.

A task whose code raised is run again up to ``retries`` times; a task whose worker
died while running one of its steps does not count against that. A task's outputs
are final once nothing can make it restart any more.

Nothing here runs anything: the runner describes its tasks with :class:`Task`, asks,
and carries out the answer (cancelling, resubmitting, accounting).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from regrow.pipeline.stages import GROUPINGS, SPLIT

TaskKey = tuple[int, Hashable]
"""A pipeline task: (stage index, group). Its attempts share the key."""


class Attempt(NamedTuple):
    """One attempt of one pipeline task."""

    stage: int
    group: Hashable
    attempt: int


@dataclass(frozen=True)
class Task:
    """What the rule needs to know of the current attempt of a task."""

    attempt: int
    # The producer of each batch routed to it, in order; None for the job's own inputs.
    inputs: tuple[Attempt | None, ...] = ()
    # All its steps ran and all its outputs were routed.
    finished: bool = False


Tasks = Sequence[Mapping[Hashable, Task]]
"""The current attempt of every task that exists, by stage, then by group."""


@dataclass(frozen=True)
class Restart:
    """Cancel ``task`` and start attempt ``task.attempt + 1`` of it."""

    task: Attempt
    failed: bool  # it failed itself (else it restarts as a consumer of one that did)
    keep: tuple[int, ...]  # its inputs (indices, in order) the next attempt consumes again


@dataclass(frozen=True)
class RestartPlan:
    restarts: tuple[Restart, ...]  # stage by stage: a producer before its consumers
    complete: tuple[bool, ...]  # which stages are still complete afterwards


def plan_restart(
    groupings: Sequence[str],
    tasks: Tasks,
    failed: Collection[TaskKey],
    complete: Sequence[bool],
) -> RestartPlan:
    """What to restart when the current attempts of the tasks ``failed`` fail together.

    ``groupings[i]`` is stage ``i``'s grouping, ``tasks`` the tasks that exist (current
    attempts), ``complete[i]`` whether stage ``i`` has finished (no more input can reach
    stage ``i + 1``). Failures that arrive together (one worker's death interrupting
    several tasks) are planned at once, so the answer does not depend on their order.
    """
    _check_shape(groupings, tasks, complete)
    for stage, group in failed:
        if not 0 <= stage < len(tasks) or group not in tasks[stage]:
            raise KeyError(f"no task {group!r} in stage {stage}")
    failing = dict.fromkeys(failed)  # a set, in the order given
    doomed: list[TaskKey] = []
    doomed_attempts: set[Attempt] = set()
    upstream: set[Attempt] = set()  # the doomed attempts of the stage before
    for stage, grouping in enumerate(groupings):
        hit: list[TaskKey]
        if not upstream:
            hit = [key for key in failing if key[0] == stage]
        elif grouping != SPLIT:
            # Its next attempt may write any label, on any worker: all of them.
            hit = [(stage, group) for group in tasks[stage]]
        else:
            # A split consumer takes one producer's outputs: those that got some.
            hit = [
                (stage, group)
                for group, task in tasks[stage].items()
                if (stage, group) in failing or any(p in upstream for p in task.inputs)
            ]
        upstream = {Attempt(s, g, tasks[s][g].attempt) for s, g in hit}
        doomed.extend(hit)
        doomed_attempts |= upstream

    restarts = []
    for stage, group in doomed:
        task = tasks[stage][group]
        keep = tuple(
            i
            for i, producer in enumerate(task.inputs)
            if producer is None or (_current(tasks, producer) and producer not in doomed_attempts)
        )
        restarts.append(
            Restart(Attempt(stage, group, task.attempt), (stage, group) in failing, keep)
        )

    # A restarted task of a finished stage reopens it, and every stage after it.
    reopen = min((stage for stage, _ in doomed if complete[stage]), default=len(complete))
    return RestartPlan(tuple(restarts), tuple(c and i < reopen for i, c in enumerate(complete)))


def _current(tasks: Tasks, producer: Attempt) -> bool:
    task = tasks[producer.stage].get(producer.group)
    return task is not None and task.attempt == producer.attempt


def out_of_retries(raised: int, retries: int) -> bool:
    """A task whose code has now raised ``raised`` times: does the job fail with it?"""
    return raised > retries


def settled(groupings: Sequence[str], tasks: Tasks, key: TaskKey, complete: Sequence[bool]) -> bool:
    """Can nothing make task ``key`` restart any more (so its outputs are final)?

    It must have finished, and so must everything upstream that could fail and take it
    along: all of the stage before (then every earlier stage is complete too), or, for
    a chain of ``split`` stages, each producer up the chain.
    """
    _check_shape(groupings, tasks, complete)
    stage, group = key
    task = tasks[stage].get(group)
    if task is None or not task.finished:
        return False
    if stage == 0 or complete[stage - 1]:
        return True
    while stage > 0:
        if groupings[stage] != SPLIT:
            return False  # any task of the stage before may fail and restart it
        producers = {p for p in task.inputs if p is not None}
        if len(producers) != 1:
            return False
        (producer,) = producers
        upstream = tasks[producer.stage].get(producer.group)
        if upstream is None or upstream.attempt != producer.attempt or not upstream.finished:
            return False
        stage, task = producer.stage, upstream
    return True


def _check_shape(groupings: Sequence[str], tasks: Tasks, complete: Sequence[bool]) -> None:
    if not len(groupings) == len(tasks) == len(complete):
        raise ValueError(
            f"{len(groupings)} groupings, {len(tasks)} stages of tasks, "
            f"{len(complete)} completeness flags: one of each per stage"
        )
    for grouping in groupings:
        if grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {grouping!r}; use one of {GROUPINGS}")
