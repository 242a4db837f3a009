"""Helpers for driving the pure worker core in tests: no IO, no clock, no threads.

``WorkerSim`` wraps ``WorkerState(validate=True)`` and plays the worker shell's part:
it remembers the ``Execute`` and ``Gather`` instructions still outstanding (as the task
threads and transfers would) and builds the outcome events for exactly those, carrying
the ``attempt`` of the Execute or the holder and keys of the Gather, as the shell does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from regrow.core import worker_events as ev
from regrow.core import worker_instructions as ins
from regrow.core.worker_state import AHEAD, SHORT_TASK, THREADED, WorkerState

InsT = TypeVar("InsT", bound=ins.Instruction)


def of_type(out: Iterable[ins.Instruction], kind: type[InsT]) -> list[InsT]:
    return [i for i in out if isinstance(i, kind)]


def kinds(out: Iterable[ins.Instruction]) -> list[str]:
    """The instructions' class names, in order: for compact assertions."""
    return [type(i).__name__ for i in out]


def check_started_first(out: Sequence[ins.Instruction]) -> None:
    """The runs a batch hands to the threads are announced first, all in one SendStarted."""
    runs = [n for n, i in enumerate(out) if isinstance(i, ins.Execute)]
    started = [n for n, i in enumerate(out) if isinstance(i, ins.SendStarted)]
    if not runs:
        assert not started, out
        return
    assert len(started) == 1 and started[0] < runs[0], out
    announced = out[started[0]]
    assert isinstance(announced, ins.SendStarted)
    assert announced.keys == tuple(x.key for x in of_type(out, ins.Execute)), out


def compute(
    key: str,
    deps: Mapping[str, Sequence[str]] | None = None,
    *,
    run_id: int = 1,
    priority: tuple[int, ...] = (0,),
    inline: tuple[str, ...] = (),
    run_spec: object = None,
) -> ev.ComputeRequested:
    """A compute order; ``deps`` maps each dependency to its holders."""
    return ev.ComputeRequested(
        key=key,
        run_id=run_id,
        priority=priority,
        who_has={d: list(h) for d, h in (deps or {}).items()},
        inline=inline,
        run_spec=run_spec if run_spec is not None else ("run", key),
        stimulus_id=f"compute-{key}",
    )


class WorkerSim:
    """A validating WorkerState plus the bookkeeping of a shell that carries it out."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("nthreads", 1)
        settings.setdefault("validate", True)
        self.state = WorkerState(**settings)
        # Runs handed to the threads and not yet back: (key, attempt) -> Execute.
        self.executing: dict[tuple[str, int], ins.Execute] = {}
        # Transfers under way, in the order they went out.
        self.gathering: list[ins.Gather] = []
        # Interrupts whose grace has not yet passed: (key, attempt).
        self.interrupts: list[tuple[str, int]] = []
        self.history: list[ins.Instruction] = []

    # ------------------------------------------------------------- core
    def handle(self, *events: ev.WorkerEvent) -> list[ins.Instruction]:
        out = self.state.handle(*events)
        check_started_first(out)
        if of_type(out, ins.Execute):
            # Runs go out only up to the threads' limit (with the short ones ahead).
            assert self.state.in_threads <= self.limit(), (self.state.in_threads, out)
        for i in out:
            if isinstance(i, ins.Execute):
                assert (i.key, i.attempt) not in self.executing, i
                self.executing[(i.key, i.attempt)] = i
            elif isinstance(i, ins.Gather):
                self.gathering.append(i)
            elif isinstance(i, ins.InterruptThread):
                self.interrupts.append((i.key, i.attempt))
        self.history.extend(out)
        return out

    # --------------------------------------------------- thread outcomes
    def run_of(self, key: str) -> ins.Execute:
        runs = [x for (k, _), x in self.executing.items() if k == key]
        assert len(runs) == 1, (key, runs)
        return runs[0]

    def succeed(
        self,
        key: str,
        *,
        nbytes: int = 8,
        duration: float = 1.0,
        sealed: object = None,
        value: object = "value",
    ) -> list[ins.Instruction]:
        run = self.executing.pop((key, self.run_of(key).attempt))
        return self.handle(
            ev.ExecuteSucceeded(
                key=key,
                attempt=run.attempt,
                value=value,
                nbytes=nbytes,
                type_name=type(value).__name__,
                duration=duration,
                sealed=sealed,
                stimulus_id=f"execute-{key}",
            )
        )

    def fail(
        self, key: str, error: BaseException | None = None, *, duration: float = 1.0
    ) -> list[ins.Instruction]:
        run = self.executing.pop((key, self.run_of(key).attempt))
        return self.handle(
            ev.ExecuteFailed(
                key=key,
                attempt=run.attempt,
                error=error if error is not None else ValueError(key),
                duration=duration,
                stimulus_id=f"execute-{key}",
            )
        )

    # ------------------------------------------------- transfer outcomes
    def gather_to(self, holder: str) -> ins.Gather:
        found = [g for g in self.gathering if g.holder == holder]
        assert found, (holder, self.gathering)
        return found[0]

    def gathered(
        self,
        holder: str,
        got: Iterable[str] | None = None,
        *,
        refusal: BaseException | None = None,
        nbytes: int = 8,
    ) -> list[ins.Instruction]:
        """The oldest transfer from ``holder`` ended with ``got`` (default: every key)."""
        gather = self.gather_to(holder)
        self.gathering.remove(gather)
        keys = gather.keys if got is None else tuple(got)
        assert set(keys) <= set(gather.keys), (keys, gather)
        return self.handle(
            ev.GatherFinished(
                holder=holder,
                keys=gather.keys,
                got={k: (nbytes, "bytes") for k in keys},
                refusal=refusal,
                stimulus_id=f"gathered-{holder}",
            )
        )

    # ------------------------------------------------------------ checks
    def limit(self) -> int:
        """How many runs the threads may hold at once now."""
        ahead = AHEAD if self.state.avg_duration < SHORT_TASK else 0
        return self.state.nthreads * (1 + ahead)

    def check_shell(self) -> None:
        """The core's picture agrees with what the shell has under way, and nothing that
        could move is left standing."""
        s = self.state
        s.check()
        assert s.in_threads == len(self.executing), (s.in_threads, self.executing)
        assert s.gathers == len(self.gathering), (s.gathers, self.gathering)
        threaded = {(ts.key, ts.attempt) for ts in s.tasks.values() if ts.state in THREADED}
        # Every run the threads hold is one the core knows of (its outcome would raise
        # otherwise), and every task the core thinks a thread holds has its run out.
        assert threaded == set(self.executing), (threaded, set(self.executing))
        for fs in s.fetches.values():
            if fs.holder:
                assert any(g.holder == fs.holder and fs.key in g.keys for g in self.gathering), (
                    fs,
                    self.gathering,
                )
            else:
                # Queued only while every transfer slot is taken, or paused, or every
                # holder left to try is already sending to us.
                busy = {g.holder for g in self.gathering}
                untried = [h for h in fs.who_has if h not in fs.tried]
                assert s.gathers >= s.max_gathers or s.paused or all(h in busy for h in untried), (
                    fs,
                    s.gathers,
                    s.paused,
                    busy,
                )
        for ts in s.tasks.values():
            if ts.state == "waiting":
                assert all(dep in s.fetches for dep in ts.missing), ts
            elif ts.state == "ready":
                # Stuck READY only while paused or with every thread slot taken.
                assert s.paused or s.in_threads >= self.limit(), (ts, s.in_threads)
