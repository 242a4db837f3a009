"""Random runs of the worker core, driven the way a real shell and scheduler would.

Hypothesis plays the scheduler (compute orders with random dependencies and holders,
frees, steals, interrupts, replica requests, state drops, a lost and regained
connection), the task threads and transfers (outcomes only for the Executes and Gathers
actually outstanding: success, failure, refusal, partial transfers), clients putting
data and the memory monitor. After every step the core's own invariants run
(``validate=True``) and its picture is compared with the shell's (``check_shell``): the
runs in the threads, the transfers under way, and nothing left standing that could move.
The ``drain`` rule answers everything until the worker is idle: every task must then be
gone and every order still wanted must have been answered exactly once.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from regrow.core import worker_events as ev
from regrow.core import worker_instructions as ins
from regrow.core.worker_state import CANCELLED, EXECUTING, ORPHANED, READY, RERUN, THREADED, WAITING

from .worker_sim import WorkerSim, compute, kinds, of_type

TASKS = ("t0", "t1", "t2", "t3")
DEPS = ("d0", "d1", "d2")
HOLDERS = ("h0", "h1", "h2")
MEMORY_LIMIT = 1000  # target 600, pause 800

# Mostly someone holds a dependency; now and then nobody does.
holders: st.SearchStrategy[list[str]] = st.one_of(
    st.lists(st.sampled_from(HOLDERS), unique=True, min_size=1, max_size=3), st.just([])
)
# What a scheduler says to the worker only while connected.
REPORTS = (
    ins.SendStarted,
    ins.SendFinished,
    ins.SendErred,
    ins.SendDependencyMissing,
    ins.SendStealResponse,
)


class WorkerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w = WorkerSim()
        self.connected = True
        self.run_ids = itertools.count(1)
        # The scheduler's orders not yet answered: key -> run id.
        self.wanted: dict[str, int] = {}
        # The keys the shell's data store holds.
        self.store: set[str] = set()

    # ------------------------------------------------------------ helpers
    def handle(self, *events: ev.WorkerEvent) -> list[ins.Instruction]:
        out = self.w.handle(*events)
        for i in out:
            match i:
                case ins.StoreData():
                    self.store.add(i.key)
                case ins.DeleteData():
                    assert set(i.keys) <= self.store, (i, self.store)
                    self.store.difference_update(i.keys)
            if not self.connected:
                assert not isinstance(i, REPORTS), (i, "while the scheduler is lost")
            match i:
                case ins.SendFinished() | ins.SendErred():
                    # An answer to the order the scheduler still waits for, and only once.
                    assert self.wanted.pop(i.key, None) == i.run_id, (i, self.wanted)
                case ins.SendDependencyMissing():
                    assert i.key in self.wanted, (i, self.wanted)
                    del self.wanted[i.key]
                case ins.SendStealResponse() if i.stolen:
                    self.wanted.pop(i.key, None)
        return out

    def _task_key(self, data: st.DataObject) -> str:
        """A task key, most often one the worker has a task for (races need them)."""
        live = sorted(k for k in self.w.state.tasks if k in TASKS)
        live_one: bool = bool(live) and data.draw(st.booleans(), label="live?")
        if live_one:
            return data.draw(st.sampled_from(live), label="key")
        return data.draw(st.sampled_from(TASKS), label="key")

    def _finish(self, key: str, attempt: int, ok: bool, duration: float, seal: bool) -> None:
        """A thread is done with run ``attempt`` of ``key``; what becomes of the outcome
        depends on the state the task was in."""
        del self.w.executing[(key, attempt)]
        before = self.w.state.tasks[key].state
        held = key in self.w.state.data
        sealed = object() if seal and ok else None
        error = ValueError(key)
        event: ev.WorkerEvent
        if ok:
            event = ev.ExecuteSucceeded(
                key=key,
                attempt=attempt,
                value=key,
                nbytes=10,
                type_name="str",
                duration=duration,
                sealed=sealed,
            )
        else:
            event = ev.ExecuteFailed(key=key, attempt=attempt, error=error, duration=duration)
        out = self.handle(event)
        stored = [i for i in out if isinstance(i, ins.StoreData) and i.key == key]
        told = [i for i in out if isinstance(i, ins.SendFinished | ins.SendErred) and i.key == key]
        discarded = of_type(out, ins.DiscardResult)
        # A sealed copy is kept with the result or let go: exactly once.
        if sealed is not None:
            keeps = [i for i in stored if i.sealed is sealed]
            assert len(keeps) + len([d for d in discarded if d.sealed is sealed]) == 1, out
        else:
            assert not discarded, out
        if before == CANCELLED:
            assert not stored and not told, (before, out)
        elif before == ORPHANED:
            assert not told, (before, out)  # nobody to tell: kept for a restored scheduler
            assert len(stored) == (ok and not held), (before, held, out)
        elif before == EXECUTING:
            assert len(stored) == ok, (before, out)
            [report] = told
            if ok:
                assert isinstance(report, ins.SendFinished) and report.nbytes == 10
            else:
                assert isinstance(report, ins.SendErred) and report.error is error
        else:
            assert before == RERUN, before
            if ok:
                assert len(stored) == 1 and kinds(told) == ["SendFinished"], out
            else:  # run anew for the new order, unless the result is here already
                assert not stored and not of_type(out, ins.SendErred), out
                ts = self.w.state.tasks.get(key)
                if ts is None:  # served by the result here, or a dependency has no holder
                    assert kinds(out) in (["SendFinished"], ["SendDependencyMissing"]), out
                else:
                    assert ts.state in (WAITING, READY, EXECUTING), ts
                    assert ts.attempt != attempt or ts.state != EXECUTING, ts

    def _gathered(self, gather: ins.Gather, got: list[str], refuse: bool) -> None:
        self.w.gathering.remove(gather)
        self.store.update(got)  # the shell stores what came before it tells the core
        self.handle(
            ev.GatherFinished(
                holder=gather.holder,
                keys=gather.keys,
                got={k: (5, "bytes") for k in got},
                refusal=TypeError("cannot unpickle") if refuse else None,
            )
        )

    # -------------------------------------------------------------- setup
    @initialize(
        nthreads=st.integers(1, 2),
        max_gathers=st.integers(1, 3),
        nanny=st.booleans(),
        memory=st.booleans(),
        short=st.booleans(),
    )
    def setup(
        self, nthreads: int, max_gathers: int, nanny: bool, memory: bool, short: bool
    ) -> None:
        self.w = WorkerSim(
            nthreads=nthreads,
            max_gathers=max_gathers,
            has_nanny=nanny,
            memory_limit=MEMORY_LIMIT if memory else 0,
        )
        if short:  # as if many short tasks had run: they go ahead to the threads
            self.w.state.avg_duration = 0.0

    # ------------------------------------------------- scheduler's orders
    def _order(self, data: st.DataObject) -> None:
        self._order_key(data, self._task_key(data))

    def _order_key(self, data: st.DataObject, key: str) -> None:
        deps = data.draw(
            st.dictionaries(st.sampled_from(DEPS + TASKS), holders, max_size=2), label="deps"
        )
        # A dependency is in memory somewhere: never a task under way here, nor itself.
        deps = {d: h for d, h in deps.items() if d != key and d not in self.w.state.tasks}
        inline = data.draw(st.booleans(), label="inline") and bool(deps)
        run_id = next(self.run_ids)
        self.wanted[key] = run_id
        self.handle(
            compute(
                key,
                deps,
                run_id=run_id,
                priority=(data.draw(st.integers(0, 3), label="priority"),),
                inline=(min(deps),) if inline else (),
            )
        )

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), n=st.integers(1, 3))
    def order(self, data: st.DataObject, n: int) -> None:
        for _ in range(n):
            self._order(data)

    @precondition(lambda self: self.connected)
    @rule(data=st.data())
    def order_one(self, data: st.DataObject) -> None:
        """The same as order: a second rule, so that orders come more often."""
        self._order(data)

    @precondition(
        lambda self: (
            self.connected and any(ts.state in THREADED for ts in self.w.state.tasks.values())
        )
    )
    @rule(data=st.data(), twice=st.booleans())
    def cancel_and_resubmit(self, data: st.DataObject, twice: bool) -> None:
        """A client cancels a running task and submits it again (the thread runs on)."""
        running = sorted(k for k, ts in self.w.state.tasks.items() if ts.state in THREADED)
        key = data.draw(st.sampled_from(running), label="running")
        for _ in range(1 + twice):
            self.wanted.pop(key, None)
            self.handle(ev.KeysFreed(keys=(key,)))
            self._order_key(data, key)

    @precondition(lambda self: self.connected)
    @rule(data=st.data(), keys=st.lists(st.sampled_from(TASKS + DEPS), max_size=2, unique=True))
    def free(self, data: st.DataObject, keys: list[str]) -> None:
        keys = [self._task_key(data), *keys]
        for key in keys:
            self.wanted.pop(key, None)
        self.handle(ev.KeysFreed(keys=tuple(keys)))

    @precondition(lambda self: self.connected)
    @rule(data=st.data())
    def steal(self, data: st.DataObject) -> None:
        key = self._task_key(data)
        ts = self.w.state.tasks.get(key)
        # Only a task that has not gone to the threads can be given away.
        stolen = ts is not None and ts.state in (WAITING, READY)
        out = self.handle(ev.StealRequested(key=key))
        assert out[-1] == ins.SendStealResponse(key=key, stolen=stolen), out

    @precondition(lambda self: self.connected)
    @rule(data=st.data())
    def interrupt(self, data: st.DataObject) -> None:
        key = self._task_key(data)
        self.wanted.pop(key, None)
        self.handle(ev.InterruptRequested(key=key))

    @precondition(lambda self: self.connected)
    @rule(who_has=st.dictionaries(st.sampled_from(DEPS), holders, min_size=1, max_size=2))
    def replicas(self, who_has: dict[str, list[str]]) -> None:
        self.handle(ev.ReplicasRequested(who_has=who_has))

    @precondition(lambda self: self.connected and (self.w.state.tasks or self.w.state.data))
    @rule()
    def drop_state(self) -> None:
        self.wanted.clear()
        self.handle(ev.StateDropped())

    @precondition(lambda self: self.connected and self.w.state.tasks)
    @rule()
    def lose_scheduler(self) -> None:
        self.wanted.clear()
        self.connected = False
        self.handle(ev.SchedulerLost())

    @precondition(lambda self: not self.connected)
    @rule(data=st.data(), drop=st.booleans(), resend=st.booleans())
    def reconnect(self, data: st.DataObject, drop: bool, resend: bool) -> None:
        self.connected = True
        self.handle(ev.SchedulerReconnected(drop=drop))
        if resend:  # a scheduler restored from its journal orders again what ran here
            for key in sorted(self.w.state.tasks):
                self._order_key(data, key)

    # --------------------------------------------- clients, memory monitor
    @rule(key=st.sampled_from(DEPS))
    def put(self, key: str) -> None:
        self.store.add(key)
        self.handle(ev.DataPut(data={key: (3, "int")}))

    @precondition(lambda self: self.w.state.memory_limit)
    @rule(rss=st.sampled_from([100, 600, 700, 900]), after_spill=st.booleans())
    def memory(self, rss: int, after_spill: bool) -> None:
        paused = self.w.state.paused
        out = self.handle(ev.MemorySampled(rss=rss, after_spill=after_spill))
        target, pause = MEMORY_LIMIT * 0.6, MEMORY_LIMIT * 0.8
        if rss > target and not after_spill:
            assert out == [ins.Spill(nbytes=rss - int(target))], out
            assert self.w.state.paused == paused
            return
        # Pause above the pause fraction; once paused, resume only below the target.
        assert self.w.state.paused == (rss > target if paused else rss > pause), (paused, rss)
        told = of_type(out, ins.SendPaused)
        if self.w.state.paused != paused:
            assert told == [ins.SendPaused(paused=not paused)] and out[0] == told[0], out
        else:
            assert not told, out

    # ------------------------------------------ threads and transfers
    @precondition(lambda self: self.w.executing)
    @rule(
        data=st.data(),
        ok=st.booleans(),
        duration=st.sampled_from([0.0, 0.001, 2.0]),
        seal=st.booleans(),
    )
    def finish(self, data: st.DataObject, ok: bool, duration: float, seal: bool) -> None:
        key, attempt = data.draw(st.sampled_from(sorted(self.w.executing)), label="run")
        self._finish(key, attempt, ok, duration, seal)

    @precondition(lambda self: self.w.executing)
    @rule(data=st.data(), ok=st.booleans())
    def finish_more(self, data: st.DataObject, ok: bool) -> None:
        """The same as finish, short: so that threads come back more often."""
        key, attempt = data.draw(st.sampled_from(sorted(self.w.executing)), label="run")
        self._finish(key, attempt, ok, 0.0, False)

    @precondition(lambda self: self.w.gathering)
    @rule(data=st.data(), refuse=st.booleans())
    def gathered(self, data: st.DataObject, refuse: bool) -> None:
        gather = data.draw(st.sampled_from(self.w.gathering), label="gather")
        got = data.draw(st.lists(st.sampled_from(gather.keys), unique=True), label="got")
        self._gathered(gather, got, refuse and len(got) < len(gather.keys))

    @precondition(lambda self: self.w.gathering)
    @rule(data=st.data())
    def gathered_more(self, data: st.DataObject) -> None:
        """A transfer that ends with everything, or a refusal (so that both come often)."""
        gather = data.draw(st.sampled_from(self.w.gathering), label="gather")
        refuse = data.draw(st.booleans(), label="refuse")
        self._gathered(gather, [] if refuse else list(gather.keys), refuse)

    @precondition(lambda self: self.w.interrupts)
    @rule(data=st.data(), started=st.booleans())
    def interrupt_deadline(self, data: st.DataObject, started: bool) -> None:
        key, attempt = data.draw(st.sampled_from(self.w.interrupts), label="interrupt")
        self.w.interrupts.remove((key, attempt))
        # A thread can have begun it only while the run is out.
        started = started and (key, attempt) in self.w.executing
        out = self.handle(ev.InterruptDeadlinePassed(key=key, attempt=attempt, started=started))
        assert all(isinstance(i, ins.ExitForNanny | ins.LogWarning) for i in out), out
        if out:
            assert started
            assert isinstance(
                out[0], ins.ExitForNanny if self.w.state.has_nanny else ins.LogWarning
            )

    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        """Answer everything until the worker is idle: then nothing may be left."""
        self._drain(lambda: data.draw(st.booleans(), label="ok"))

    def _drain(self, ok: object) -> None:
        assert callable(ok)
        for _ in range(1000):
            if self.w.state.paused:
                self.handle(ev.MemorySampled(rss=0))
            elif self.w.executing:
                key, attempt = sorted(self.w.executing)[0]
                self._finish(key, attempt, ok(), 0.001, False)
            elif self.w.gathering:
                gather = self.w.gathering[0]
                self._gathered(gather, list(gather.keys) if ok() else [], False)
            else:
                break
        else:
            raise AssertionError("the worker never went idle")
        s = self.w.state
        assert not s.tasks, {k: ts.state for k, ts in s.tasks.items()}
        assert not s.fetches and s.gathers == 0 and s.in_threads == 0
        assert not self.wanted, f"orders never answered: {self.wanted}"

    # --------------------------------------------------------- invariants
    @invariant()
    def consistent(self) -> None:
        self.w.check_shell()
        assert set(self.w.state.data) == self.store, (self.w.state.data, self.store)

    def teardown(self) -> None:
        if not self.connected:
            self.connected = True
            self.handle(ev.SchedulerReconnected())
        self._drain(lambda: True)


WorkerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_worker_state_machine = WorkerMachine.TestCase
