"""Running a pipeline on the cluster: concurrent stages, restarts, progress.

A pipeline *task* (Disco's word) is a chain of regrow tasks ("steps"): ``init``,
one ``process`` step per input it consumes, and ``done``. Each step returns the
task's state and the records it wrote, so a consumer can take a producer's records
batch by batch, while the producer still runs. The driver (a thread in the client
process) routes each batch to the tasks of the next stage as soon as it exists,
in whatever order batches arrive.

The failure rule (the seed's): when a task fails, every task that could have
consumed its outputs is failed and restarted, running or finished, and so on
down the stages; each restarted task consumes the re-run outputs. A task fails
when its code raises (it is retried up to ``retries`` times, then the job fails
with that exception) or when a worker dies while running one of its steps (the
driver hears of it from the scheduler and restarts it the same way; this does not
count against ``retries``). Finished outputs lost with a worker are recomputed by
backtracking to the steps that made them (regrow's lineage), or not at all when
the stage persists them to files that survived. The rule itself (what restarts,
what a restarted task consumes again, when a task can no longer restart) is
:mod:`regrow.pipeline.plan`, pure; the runner describes its tasks to it and carries
out its answers.

Final records are handed out only once the task that wrote them can no longer be
restarted, so every record appears exactly once.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from regrow.client.futures import Future, as_completed
from regrow.errors import explain
from regrow.pipeline import plan
from regrow.pipeline import stages as st
from regrow.pipeline.stages import Files, Pipeline, Record

if TYPE_CHECKING:
    from regrow.client.client import Client

logger = logging.getLogger("regrow.pipeline")

_DONE = object()
# At most this many arrived inputs go into one step of a task.
STEP_INPUTS = 64


@dataclass
class _Batch:
    """A batch of records one producer task wrote under one label."""

    producer: _Run | None  # None for the job's own inputs
    label: Hashable
    data: Any  # a Future of the records, or a plain value (persisted path, job input)
    worker: str = ""


@dataclass(eq=False)
class _Run:
    """One attempt of one pipeline task."""

    stage: int
    group: Hashable
    attempt: int
    inputs: list[_Batch] = field(default_factory=list)  # everything routed to it, in order
    pending: deque[_Batch] = field(default_factory=deque)
    consumed: int = 0
    state: Future | None = None  # the last finished step
    in_flight: Future | None = None
    steps: list[Future] = field(default_factory=list)
    outputs: list[_Batch] = field(default_factory=list)
    unrouted: int = 0
    done_submitted: bool = False
    finished: bool = False
    stale: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0

    def __repr__(self) -> str:
        return f"<task stage={self.stage} group={self.group!r} attempt={self.attempt}>"

    @property
    def ref(self) -> plan.Attempt:
        return plan.Attempt(self.stage, self.group, self.attempt)


class _TaskView(Mapping[Hashable, plan.Task]):
    """One stage's current tasks as the restart policy sees them (read on demand)."""

    def __init__(self, runs: dict[Hashable, _Run]) -> None:
        self._runs = runs

    def __getitem__(self, group: Hashable) -> plan.Task:
        run = self._runs[group]
        inputs = tuple(b.producer.ref if b.producer is not None else None for b in run.inputs)
        return plan.Task(run.attempt, inputs, run.finished)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


@dataclass
class StageProgress:
    name: str
    total: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    restarted: int = 0
    finished: bool = False


class PipelineError(RuntimeError):
    """The job failed: a task kept raising past its retries (the cause is chained)."""


class PipelineResult:
    """The records of a running job: iterate them as they become final, or ``gather()``."""

    def __init__(self, runner: _Runner) -> None:
        self._runner = runner

    def __iter__(self) -> Iterator[Record]:
        while True:
            item = self._runner.results.get()
            if item is _DONE:
                self._runner.results.put(_DONE)
                if self._runner.error is not None:
                    raise self._runner.error
                return
            yield from item

    def gather(self, timeout: float | None = None) -> list[Record]:
        self.wait(timeout)
        return list(self)

    def wait(self, timeout: float | None = None) -> None:
        if not self._runner.finished.wait(timeout):
            raise TimeoutError(f"pipeline not finished within {timeout} s")
        if self._runner.error is not None:
            raise self._runner.error

    def done(self) -> bool:
        return self._runner.finished.is_set()

    @property
    def progress(self) -> list[StageProgress]:
        return [StageProgress(**vars(p)) for p in self._runner.progress]

    @property
    def history(self) -> list[tuple[float, str]]:
        """What happened, in order: stage starts and ends, failures, restarts."""
        return list(self._runner.history)

    def show_progress(self, console: Any = None, refresh: float = 0.1) -> None:
        """Draw each stage's progress in the terminal until the job ends (blocks)."""
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table

        def table() -> Table:
            t = Table(title=f"pipeline {self._runner.job}")
            for col in ("stage", "tasks done", "running", "failed", "restarted", ""):
                t.add_column(col)
            for p in self.progress:
                t.add_row(
                    p.name,
                    f"{p.done}/{p.total}",
                    str(p.running),
                    str(p.failed),
                    str(p.restarted),
                    "finished" if p.finished else "",
                )
            return t

        with Live(table(), console=console or Console(), refresh_per_second=10) as live:
            while not self._runner.finished.wait(refresh):
                live.update(table())
            live.update(table())

    def task_times(self) -> list[tuple[str, Hashable, float, float]]:
        """(stage, group, started, finished) of every task attempt that finished."""
        return list(self._runner.times)


class _Runner:
    def __init__(
        self,
        client: Client,
        pipeline: Pipeline,
        inputs: Any,
        retries: int,
        input_batch: int,
    ) -> None:
        self.client = client
        self.pipeline = pipeline
        self.stages = [stage for _, stage in pipeline.stages]
        self.groupings = [grouping for grouping, _ in pipeline.stages]
        self.retries = retries
        self.job = uuid.uuid4().hex[:8]
        self.runs: list[dict[Hashable, _Run]] = [{} for _ in self.stages]
        self.tasks = [_TaskView(runs) for runs in self.runs]  # for the restart policy
        self.all_runs: list[_Run] = []  # every attempt, restarted ones too
        self.failures: dict[tuple[int, Hashable], int] = {}
        self.progress = [StageProgress(s.name) for s in self.stages]
        self.history: list[tuple[float, str]] = []
        self.times: list[tuple[str, Hashable, float, float]] = []
        self.results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self.watch = as_completed()
        # future key -> (kind of step, its task, what the handler needs)
        self.actions: dict[str, tuple[str, _Run, Any]] = {}
        self.released: set[int] = set()
        self.keys = itertools.count()
        self.stage_complete = [False for _ in self.stages]
        self.inputs_routed = False
        self.job_inputs = self._inputs(inputs, input_batch)
        self.interrupted: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.watch.timeout = 0.1

    # ------------------------------------------------------------------ inputs
    def _inputs(self, inputs: Any, batch: int) -> list[_Batch]:
        if isinstance(inputs, Files):
            return [_Batch(None, 0, f"file://{p}") for p in inputs.paths]
        items = list(inputs)
        if items and all(isinstance(x, Future) for x in items):
            return [_Batch(None, 0, f) for f in items]
        if any(isinstance(x, Future) for x in items):
            raise TypeError("inputs mix Futures and plain records; pass one kind")
        return [_Batch(None, 0, items[i : i + batch]) for i in range(0, len(items), batch)]

    # ----------------------------------------------------------------- events
    def note(self, message: str) -> None:
        self.history.append((time.time(), message))
        self.client._record_event("pipeline", message)

    def _on_interrupt(self, key: str, worker: str) -> None:
        # Runs in the client's IO thread: hand over to the driver thread.
        if key in self.actions:
            self.interrupted.put(key)

    def run(self) -> None:
        self.client._interrupt_listeners.append(self._on_interrupt)
        try:
            self._start()
            while not self.finished.is_set():
                self._step()
                self._take_interrupts()
        except BaseException as exc:
            self.error = exc
            self.note(f"job {self.job} failed: {explain(exc)}")
            self._cancel_everything()
            # The driver's frames in its traceback hold Futures: keep the lines, not them.
            traceback.clear_frames(exc.__traceback__)
        finally:
            self.client._interrupt_listeners.remove(self._on_interrupt)
            self._let_go()
            self.results.put(_DONE)
            self.finished.set()

    def _let_go(self) -> None:
        """The job is over: drop every Future it holds, so that the cluster frees its
        results now, not whenever the PipelineResult and the cycles between tasks and
        their batches are garbage-collected (the records handed out are plain values)."""
        for run in self.all_runs:
            run.inputs.clear()
            run.pending.clear()
            run.outputs.clear()
            run.steps.clear()
            run.state = run.in_flight = None
        self.all_runs.clear()
        self.actions.clear()
        self.job_inputs = []
        self.watch = as_completed()

    def _start(self) -> None:
        grouping = self.groupings[0]
        for i, batch in enumerate(self.job_inputs):
            group: Hashable = i if grouping == st.SPLIT else 0
            self._route(0, group, batch, advance=False)
        # Now that each task of the first stage has all its inputs, it can take them
        # in as few steps as can be.
        self.inputs_routed = True
        for run in list(self.runs[0].values()):
            self._advance(run)
        self.note(f"job {self.job}: {len(self.job_inputs)} input(s), {len(self.stages)} stage(s)")
        self._check_complete()

    def _step(self) -> None:
        try:
            future = next(self.watch)
        except TimeoutError:
            return  # a turn to look at interruptions
        except StopIteration:
            if not self.finished.is_set():
                raise RuntimeError(
                    "pipeline driver has nothing to wait for but is not done: "
                    + "; ".join(
                        f"{r!r} finished={r.finished} done_submitted={r.done_submitted} "
                        f"pending={len(r.pending)} state={r.state is not None} "
                        f"unrouted={r.unrouted}"
                        for runs in self.runs
                        for r in runs.values()
                        if not r.finished
                    )
                    + f" complete={self.stage_complete} actions={list(self.actions.items())[:5]}"
                    + f" watch={self.watch.count()}"
                ) from None
            return
        # The scheduler reports a step interrupted by a worker's death before the step's
        # rerun elsewhere finishes: act on that first, or the rerun's result would hide
        # that the task failed (and whether it restarts would depend on timing).
        self._take_interrupts()
        action = self.actions.pop(future.key, None)
        if action is None:
            return
        kind, run, extra = action
        if run.stale:
            return
        if future.status == "error":
            self._failed(run, future.exception())
            return
        if future.status in ("lost", "pending"):
            # Finished, then lost with a worker before we looked: wait for its recompute.
            self.actions[future.key] = action
            self.watch.add(future)
            return
        if future.status != "finished":
            return
        if kind == "step":
            self._step_done(run, future, extra)
        elif kind == "labels":
            self._labels_done(run, future, extra)
        elif kind == "take":
            self._take_done(run, future, extra)

    # --------------------------------------------------------------- routing
    def _consumer_group(self, stage: int, batch: _Batch) -> Hashable:
        grouping = self.groupings[stage]
        if grouping == st.SPLIT:
            return (batch.producer.group, batch.producer.stage) if batch.producer else 0
        if grouping == st.GROUP_LABEL:
            return batch.label
        if grouping == st.GROUP_ALL:
            return 0
        if grouping == st.GROUP_NODE:
            return batch.worker
        return (batch.worker, batch.label)

    def _route(self, stage: int, group: Hashable, batch: _Batch, advance: bool = True) -> None:
        run = self.runs[stage].get(group)
        if run is None:
            run = self._new_run(stage, group, 0)
        run.inputs.append(batch)
        run.pending.append(batch)
        if advance:
            self._advance(run)

    def _new_run(self, stage: int, group: Hashable, attempt: int) -> _Run:
        run = _Run(stage, group, attempt)
        self.runs[stage][group] = run
        self.all_runs.append(run)
        self.progress[stage].total += attempt == 0
        return run

    def _ready_to_consume(self, run: _Run) -> bool:
        if self.stages[run.stage].concurrent or run.stage == 0:
            return True
        return self.stage_complete[run.stage - 1]

    def _submit(self, kind: str, run: _Run, extra: Any, fn: Any, *args: Any) -> Future:
        name = self.stages[run.stage].name
        # Named for what it runs too: the scheduler learns durations by group
        # (pipeline-<stage>-take and -last are not alike).
        what = fn.__name__.removesuffix("_step")
        key = f"pipeline-{self.job}-{name}-{what}-{next(self.keys)}"
        future = self.client.submit(fn, *args, key=key, pure=False)
        self.actions[future.key] = (kind, run, extra)
        self.watch.add(future)
        return future

    def _advance(self, run: _Run) -> None:
        if run.stale or run.in_flight is not None or run.finished:
            return
        stage = self.stages[run.stage]
        first = run.state is None
        if first:
            if not self._ready_to_consume(run):
                return
            if not run.started_at:
                run.started_at = time.time()
                self.progress[run.stage].running += 1
        if run.pending and self._ready_to_consume(run) and (not first or self._last(run)):
            # Everything that has arrived goes into one step: process() still runs once per
            # input, but the state makes one trip instead of one per input.
            batches = [run.pending.popleft() for _ in range(min(STEP_INPUTS, len(run.pending)))]
            run.consumed += len(batches)
            inputs = [(b.label, b.data) for b in batches]
            if not run.pending and self._inputs_complete(run):
                # Its last inputs: process them and finish in the same task (with its
                # init, if they are its first), so the state stays where it was made (a
                # word count's Counter of 20,000 words moved to another worker for its
                # "done" in half of the runs: 7 ms each), in one task instead of three.
                run.done_submitted = True
                prev = None if first else run.state
                run.in_flight = self._submit("step", run, "done", st.last_step, stage, prev, inputs)
            else:
                run.in_flight = self._submit(
                    "step", run, "process", st.process_step, stage, run.state, inputs
                )
        elif first:
            run.in_flight = self._submit("step", run, "init", st.init_step, stage)
        elif not run.pending and not run.done_submitted and self._inputs_complete(run):
            run.done_submitted = True
            run.in_flight = self._submit("step", run, "done", st.done_step, stage, run.state)
        else:
            return
        run.steps.append(run.in_flight)

    def _last(self, run: _Run) -> bool:
        """Every input ``run`` will get is pending, few enough for one step."""
        return len(run.pending) <= STEP_INPUTS and self._inputs_complete(run)

    def _inputs_complete(self, run: _Run) -> bool:
        """No more input can reach this task: its producers' stage has finished (or, in
        the first stage, the job's inputs have all been routed)."""
        return self.inputs_routed if run.stage == 0 else self.stage_complete[run.stage - 1]

    def _step_done(self, run: _Run, future: Future, which: str) -> None:
        run.in_flight = None
        run.state = future
        if which == "done":
            run.finished_at = time.time()
        nxt = run.stage + 1
        persisted = self.stages[run.stage].persist is not None
        if nxt == len(self.stages):
            # Last stage: its records are the job's output, read when they become final.
            run.outputs.append(_Batch(run, st.ALL_LABELS, future))
        elif self.groupings[nxt] in (st.GROUP_LABEL, st.GROUP_NODE_LABEL):
            # Each label goes its own way: learn the labels, then route them one by one.
            run.unrouted += 1
            self._submit("labels", run, future, st.labels_of, future)
        elif persisted:
            # Only the file paths travel, by value: no lineage back to this step.
            run.unrouted += 1
            self._submit("take", run, (st.ALL_LABELS, True, future), st.outputs_of, future)
        else:
            self._route_batch(run, _Batch(run, st.ALL_LABELS, future), future)
        self._after_routing(run)

    def _labels_done(self, run: _Run, future: Future, step: Future) -> None:
        labels = future.result()
        persisted = self.stages[run.stage].persist is not None
        for label in labels:
            run.unrouted += 1
            take = self._submit("take", run, (label, persisted, step), st.take, step, label)
            if not persisted:
                # The records stay on the worker; consumers get them by Future.
                self._take_done(run, take, (label, False, step), fetch=False)
        run.unrouted -= 1
        self._after_routing(run)

    def _take_done(
        self, run: _Run, future: Future, extra: tuple[Hashable, bool, Future], fetch: bool = True
    ) -> None:
        label, persisted, step = extra
        if not fetch:
            data: Any = future
        elif persisted:
            data = future.result()  # small paths: consumers need no lineage back to us
        else:
            return  # already routed when submitted
        run.unrouted -= 1
        self._route_batch(run, _Batch(run, label, data), step)
        self._after_routing(run)

    def _route_batch(self, run: _Run, batch: _Batch, step: Future) -> None:
        nxt = run.stage + 1
        if self.groupings[nxt] in (st.GROUP_NODE, st.GROUP_NODE_LABEL):
            # Where the (finished) step that wrote the records is held; not where the take
            # future is: it may not have run yet, and then nobody holds it.
            holders = self.client.who_has([step]).get(step.key) or [""]
            batch.worker = holders[0]
        run.outputs.append(batch)
        self._route(nxt, self._consumer_group(nxt, batch), batch)

    def _after_routing(self, run: _Run) -> None:
        if run.unrouted == 0 and run.in_flight is None:
            if run.done_submitted and not run.finished:
                run.finished = True
                if self.stages[run.stage].persist is not None and run.stage + 1 < len(self.stages):
                    # Its outputs went on as file paths: let go of its steps, or the
                    # scheduler recomputes them (rewriting the files) when a worker
                    # holding them dies, though nothing needs them any more.
                    run.steps = []
                    run.state = None
                progress = self.progress[run.stage]
                progress.running -= 1
                progress.done += 1
                self.times.append((self.stages[run.stage].name, run.group, run.started_at,
                                   run.finished_at))  # fmt: skip
                self._check_complete()
            else:
                self._advance(run)

    def _check_complete(self) -> None:
        changed = True
        while changed:
            changed = False
            for i, runs in enumerate(self.runs):
                if self.stage_complete[i] or (i > 0 and not self.stage_complete[i - 1]):
                    continue
                if all(r.finished for r in runs.values()):
                    self.stage_complete[i] = True
                    self.progress[i].finished = True
                    self.note(f"stage {self.stages[i].name} finished ({len(runs)} task(s))")
                    changed = True
                    if i + 1 < len(self.runs):
                        for r in list(self.runs[i + 1].values()):
                            self._advance(r)
        self._release_final()
        if all(self.stage_complete):
            self.finished.set()

    def _release_final(self) -> None:
        """Hand out the last stage's records of tasks that can no longer be restarted."""
        last = len(self.stages) - 1
        for group, run in self.runs[last].items():
            if (
                run.finished  # cheap, and settled() is False for an unfinished task anyway
                and id(run) not in self.released
                and plan.settled(self.groupings, self.tasks, (last, group), self.stage_complete)
            ):
                self.released.add(id(run))
                records: list[Record] = []
                for batch in run.outputs:
                    value = batch.data.result() if isinstance(batch.data, Future) else batch.data
                    for _, part in st.unpack_input(batch.label, value):
                        records.extend(part)
                self.results.put(records)

    # --------------------------------------------------------------- failure
    def _failed(self, run: _Run, exc: BaseException | None) -> None:
        """``run``'s code raised ``exc``: run it again, or fail the job past its retries."""
        key = (run.stage, run.group)
        name = self.stages[run.stage].name
        self.failures[key] = self.failures.get(key, 0) + 1
        if plan.out_of_retries(self.failures[key], self.retries):
            self.note(f"task {name}[{run.group!r}] failed {self.failures[key]} times: {exc!r}")
            if exc is None:
                raise PipelineError(f"task {name}[{run.group!r}] failed")
            # The job fails with the user's own exception (remote traceback attached).
            exc.add_note(
                f"pipeline task {name}[{run.group!r}] failed {self.failures[key]} time(s); "
                f"retries={self.retries}"
            )
            raise exc
        self._restart_failed([run], explain(exc) if exc is not None else "it failed")

    def _restart_failed(self, failed: list[_Run], why: str) -> None:
        """Restart the tasks ``failed`` and whatever the policy takes along with them."""
        for run in failed:
            self.progress[run.stage].failed += 1
            name = self.stages[run.stage].name
            self.note(f"task {name}[{run.group!r}] failed ({why}); restarting it and its consumers")
        decision = plan.plan_restart(
            self.groupings,
            self.tasks,
            [(run.stage, run.group) for run in failed],
            self.stage_complete,
        )
        victims = [self.runs[r.task.stage][r.task.group] for r in decision.restarts]
        for run in failed:
            # The cluster's timeline shows it (the dashboard, every client's get_events).
            self.client.log_event(
                "pipeline",
                {
                    "action": "pipeline-restarted",
                    "text": f"job {self.job}: task {self.stages[run.stage].name}"
                    f"[{run.group!r}] failed ({why}); restarted with "
                    f"{len(victims) - len(failed)} consumer(s)",
                    "job": str(self.job),
                    "stage": self.stages[run.stage].name,
                    "task": repr(run.group),
                    "why": why,
                    "consumers": len(victims) - len(failed),
                },
            )
        for victim in victims:
            victim.stale = True
        self.stage_complete[:] = decision.complete
        for progress, complete in zip(self.progress, decision.complete, strict=True):
            progress.finished = complete
        fresh = [self._restart(v, r) for v, r in zip(victims, decision.restarts, strict=True)]
        for run in fresh:
            self._advance(run)

    def _restart(self, run: _Run, restart: plan.Restart) -> _Run:
        """Cancel what ``run`` (stale now) has in flight; its next attempt, not started."""
        doomed = set()
        for f in run.steps:
            doomed.add(f)
        for b in run.outputs:
            if isinstance(b.data, Future):
                doomed.add(b.data)
        live = [f for f in doomed if not f.done()]
        if live:
            self.client.cancel(live)
        progress = self.progress[run.stage]
        if run.finished:
            progress.done -= 1
        elif run.state is not None or run.in_flight is not None:
            progress.running -= 1
        if not restart.failed:
            progress.restarted += 1
        fresh = self._new_run(run.stage, run.group, run.attempt + 1)
        # It consumes again every input that is still valid: batches of producers that
        # are themselves restarting come again from their new attempts.
        for i in restart.keep:
            fresh.inputs.append(run.inputs[i])
            fresh.pending.append(run.inputs[i])
        return fresh

    def _take_interrupts(self) -> None:
        keys = set()
        while not self.interrupted.empty():
            keys.add(self.interrupted.get())
        if keys:
            self.worker_lost(keys)

    def worker_lost(self, keys: set[str]) -> None:
        """Steps that were running on a dead worker: their tasks fail (the seed's rule),
        together. A worker's death does not count against ``retries``."""
        failed: dict[_Run, None] = {}
        for key in keys:
            action = self.actions.get(key)
            if action is not None and action[0] == "step" and not action[1].stale:
                failed[action[1]] = None
        if failed:
            self._restart_failed(sorted(failed, key=lambda run: run.stage), "its worker died")

    def _cancel_everything(self) -> None:
        live: list[Future] = []
        for runs in self.runs:
            for run in runs.values():
                live.extend(f for f in run.steps if not f.done())
        if live:
            try:
                self.client.cancel(live)
            except Exception:
                logger.exception("could not cancel the failed job's tasks")


def run_pipeline(
    client: Client,
    pipeline: Pipeline | Iterable[tuple[str, st.Stage]],
    inputs: Any,
    *,
    retries: int = 2,
    input_batch: int = 1000,
) -> PipelineResult:
    """Start ``pipeline`` on ``inputs``; returns at once with a ``PipelineResult``.

    ``inputs``: a ``Files([...])`` (each file one input, its lines the records), a list
    of Futures already on the cluster (each value one input), or any iterable of
    records (cut into inputs of ``input_batch`` records). ``retries``: how many times a
    task whose code raises is run again before the job fails with that exception.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline(list(pipeline))
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative int, got {retries!r}")
    if not isinstance(input_batch, int) or input_batch < 1:
        # A negative one would cut the records into no inputs at all: an empty result.
        raise ValueError(f"input_batch must be a positive int, got {input_batch!r}")
    runner = _Runner(client, pipeline, inputs, retries, input_batch)
    thread = threading.Thread(target=runner.run, name=f"regrow-pipeline-{runner.job}", daemon=True)
    thread.start()
    return PipelineResult(runner)
