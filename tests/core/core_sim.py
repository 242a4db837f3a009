"""Helpers for driving the pure scheduler core in tests: no IO, no clock.

``Harness`` wraps ``SchedulerState(validate=True)`` with short-hands for the events a
shell would feed it. ``SimCluster`` goes further: it plays the workers and clients,
carrying out the commands the core returns, so whole runs can be simulated (and checked
against the core's own bookkeeping) in microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.scheduler_state import ERRED, MEMORY, SchedulerState

C = TypeVar("C", bound=cmd.Command)


def spec(key: str, *deps: str, **kwargs: Any) -> ev.TaskSpec:
    """A task spec with a dummy (non-None) run_spec unless one is given."""
    kwargs.setdefault("run_spec", ("run", key))
    return ev.TaskSpec(key=key, dependencies=tuple(deps), **kwargs)


def chain(n: int, prefix: str = "t") -> list[ev.TaskSpec]:
    """t0 <- t1 <- ... <- t{n-1}: each task depends on the previous one."""
    return [spec(f"{prefix}0")] + [spec(f"{prefix}{i}", f"{prefix}{i - 1}") for i in range(1, n)]


def of_type(commands: Iterable[cmd.Command], kind: type[C]) -> list[C]:
    return [c for c in commands if isinstance(c, kind)]


def computes(commands: Iterable[cmd.Command]) -> dict[str, str]:
    """key -> worker of every Compute among ``commands`` (the last one wins)."""
    return {c.key: c.worker for c in of_type(commands, cmd.Compute)}


def freed(commands: Iterable[cmd.Command]) -> set[tuple[str, str]]:
    """(worker, key) pairs of every FreeKeys among ``commands``."""
    return {(c.worker, k) for c in of_type(commands, cmd.FreeKeys) for k in c.keys}


def reports(commands: Iterable[cmd.Command], kind: type[C], client: str | None = None) -> list[C]:
    out = of_type(commands, kind)
    if client is not None:
        out = [c for c in out if getattr(c, "client", None) == client]
    return out


def reported_keys(
    commands: Iterable[cmd.Command], kind: type[cmd.Command], client: str | None = None
) -> set[str]:
    return {getattr(c, "key", "") for c in reports(commands, kind, client)}


class Harness:
    """A validating SchedulerState plus short-hands for feeding it events."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("validate", True)
        self.state = SchedulerState(**settings)
        # Every (start, finish) task transition this run made (see test_transitions).
        self.transitions: set[tuple[str, str]] = set()
        self.state.on_transition = lambda ts, start, finish: self.transitions.add((start, finish))
        self.history: list[cmd.Command] = []
        # Informational client events (worker joined/lost...) and log lines, kept apart.
        self.client_events: list[cmd.ReportEvent] = []
        self.logs: list[cmd.Log] = []
        self._sid = 0

    def handle(self, *events: ev.Event) -> list[cmd.Command]:
        """The commands for ``events``, without the informational ReportEvents and Logs."""
        out = []
        for c in self.state.handle(*events):
            if isinstance(c, cmd.ReportEvent):
                self.client_events.append(c)
            elif isinstance(c, cmd.Log):
                self.logs.append(c)
            else:
                out.append(c)
        self.history.extend(out)
        return out

    def sid(self) -> str:
        self._sid += 1
        return f"s{self._sid}"

    # ------------------------------------------------------------- events
    def add_worker(self, address: str, nthreads: int = 1, name: str = "") -> list[cmd.Command]:
        return self.handle(
            ev.WorkerAdded(worker=address, nthreads=nthreads, name=name, stimulus_id=self.sid())
        )

    def remove_worker(
        self, address: str, graceful: bool = False, started: bool = True
    ) -> list[cmd.Command]:
        """Remove a worker; with ``started`` its tasks had begun running (as with real
        threads free), so a death counts against them."""
        ws = self.state.workers.get(address)
        if started and ws is not None and ws.processing:
            self.handle(ev.TasksStarted(worker=address, keys=tuple(t.key for t in ws.processing)))
        return self.handle(
            ev.WorkerRemoved(
                worker=address, graceful=graceful, reason="test", stimulus_id=self.sid()
            )
        )

    def submit(
        self, client: str, tasks: Sequence[ev.TaskSpec], wanted: Sequence[str] | None = None
    ) -> list[cmd.Command]:
        if wanted is None:
            wanted = [tasks[-1].key]
        return self.handle(
            ev.TasksSubmitted(
                client=client, tasks=tuple(tasks), wanted=tuple(wanted), stimulus_id=self.sid()
            )
        )

    def run_id(self, key: str) -> int:
        """The run the scheduler counts for ``key`` now (what its worker would echo)."""
        ts = self.state.tasks.get(key)
        return 0 if ts is None else ts.run_id

    def finish(
        self,
        key: str,
        nbytes: int = 8,
        worker: str | None = None,
        duration: float = 0.0,
        run_id: int | None = None,
        inline: bytes | None = None,
    ) -> list[cmd.Command]:
        """``inline``: the result itself, as a worker sends a small one."""
        if worker is None:
            worker = self.processing_on(key)
        return self.handle(
            ev.TaskFinished(
                worker=worker,
                key=key,
                run_id=self.run_id(key) if run_id is None else run_id,
                nbytes=nbytes,
                type_name="int",
                duration=duration,
                inline=inline,
                stimulus_id=self.sid(),
            )
        )

    def err(
        self,
        key: str,
        exception: bytes = b"exc",
        worker: str | None = None,
        run_id: int | None = None,
    ) -> list[cmd.Command]:
        if worker is None:
            worker = self.processing_on(key)
        return self.handle(
            ev.TaskErred(
                worker=worker,
                key=key,
                run_id=self.run_id(key) if run_id is None else run_id,
                exception=exception,
                traceback=b"tb-" + key.encode(),
                text=f"{key} failed",
                stimulus_id=self.sid(),
            )
        )

    def release(self, client: str, *keys: str) -> list[cmd.Command]:
        return self.handle(ev.KeysReleased(client=client, keys=keys, stimulus_id=self.sid()))

    def desire(self, client: str, *keys: str) -> list[cmd.Command]:
        return self.handle(ev.KeysDesired(client=client, keys=keys, stimulus_id=self.sid()))

    def cancel(self, client: str, *keys: str, force: bool = False) -> list[cmd.Command]:
        return self.handle(
            ev.KeysCancelled(client=client, keys=keys, force=force, stimulus_id=self.sid())
        )

    def tick(self, now: float = 0.0) -> list[cmd.Command]:
        return self.handle(ev.Ticked(now=now, stimulus_id=self.sid()))

    # ------------------------------------------------------------ queries
    def processing_on(self, key: str) -> str:
        ts = self.state.tasks[key]
        assert ts.processing_on is not None, f"{ts!r} is not processing"
        return ts.processing_on.address

    def task_state(self, key: str) -> str:
        ts = self.state.tasks.get(key)
        return "forgotten" if ts is None else ts.state

    def holders(self, key: str) -> set[str]:
        return {ws.address for ws in self.state.tasks[key].who_has}

    def processing(self, worker: str) -> list[str]:
        return [ts.key for ts in self.state.workers[worker].processing]

    def run_to_completion(self, limit: int = 100_000) -> None:
        """Finish whatever is processing, in order, until nothing is."""
        for _ in range(limit):
            running = [
                (ts.key, ws.address) for ws in self.state.workers.values() for ts in ws.processing
            ]
            if not running:
                return
            key, worker = running[0]
            self.finish(key, worker=worker)
        raise AssertionError("the cluster never went quiet")


# ---------------------------------------------------------------- simulation
@dataclass
class SimWorker:
    address: str
    name: str
    nthreads: int
    running: dict[str, cmd.Compute] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)
    steals: set[str] = field(default_factory=set)
    # Copies the scheduler asked for (AcquireReplicas) and not yet fetched: key -> holders.
    acquire: dict[str, list[str]] = field(default_factory=dict)
    # Keys the scheduler thinks this worker holds but it silently lost (found out on fetch).
    lost: set[str] = field(default_factory=set)


class SimCluster:
    """Plays the workers and clients around a core, carrying out its commands.

    Workers run what they are told (``Compute``), drop what they are told (``FreeKeys``),
    fetch inputs from whichever live worker holds them (reporting ``ReplicasAdded``, or
    ``DependencyMissing`` when nobody does) and answer steal requests. Clients keep the
    last report about each key they hold a future for.
    """

    def __init__(self, inline_upto: int = 0, **settings: Any) -> None:
        """Results of at most ``inline_upto`` bytes go to the scheduler with their news,
        as a real worker sends small ones (``Settings.inline_result_bytes``)."""
        settings.setdefault("validate", True)
        self.state = SchedulerState(**settings)
        # Every (start, finish) task transition this run made (see test_transitions).
        self.transitions: set[tuple[str, str]] = set()
        self.state.on_transition = lambda ts, start, finish: self.transitions.add((start, finish))
        self.inline_upto = inline_upto
        self.workers: dict[str, SimWorker] = {}
        # client -> keys it holds futures for
        self.wants: dict[str, set[str]] = {}
        # (client, key) -> last report: "memory" / "erred" / "lost"
        self.last_report: dict[tuple[str, str], str] = {}
        self.specs: dict[str, ev.TaskSpec] = {}
        # Retirement requests answered: request -> the workers that retired.
        self.retired: dict[str, tuple[str, ...]] = {}
        self._retirements = 0
        self.now = 0.0  # the simulated clock: each tick is a second
        self.steps = 0

    # ------------------------------------------------------------ plumbing
    def handle(self, *events: ev.Event) -> list[cmd.Command]:
        self.steps += 1
        out = self.state.handle(*events)
        for c in out:
            self._apply(c)
        return out

    def _apply(self, c: cmd.Command) -> None:
        match c:
            case cmd.Compute():
                w = self.workers.get(c.worker)
                assert w is not None, f"{c} sent to a worker that is gone"
                assert c.key not in w.data, f"{c} for a key the worker holds"
                for dep, holders in c.who_has.items():
                    assert holders or dep in (c.inline or {}), f"{c}: nobody has input {dep!r}"
                    for h in holders:
                        assert h in self.workers, f"{c}: {dep!r} said to be on dead {h}"
                others = [o.address for o in self.workers.values() if c.key in o.running]
                assert not others, f"{c}, but {others} already run it"
                w.running[c.key] = c
            case cmd.FreeKeys():
                w = self.workers.get(c.worker)
                assert w is not None, f"{c} sent to a worker that is gone"
                for key in c.keys:
                    w.running.pop(key, None)
                    w.data.pop(key, None)
                    w.steals.discard(key)
                    w.lost.discard(key)
                    w.acquire.pop(key, None)
            case cmd.Interrupt():
                w = self.workers.get(c.worker)
                assert w is not None, f"{c} sent to a worker that is gone"
                w.running.pop(c.key, None)
                w.steals.discard(c.key)
            case cmd.AcquireReplicas():
                w = self.workers.get(c.worker)
                assert w is not None, f"{c} sent to a worker that is gone"
                w.acquire.update(c.who_has)
            case cmd.ReportEvent() | cmd.Log():
                pass
            case cmd.AcceptWorker():
                w = self.workers.get(c.worker)
                assert w is not None, f"{c} for a worker that did not register"
                if c.drop:
                    w.data.clear()
                    w.lost.clear()
            case cmd.CloseWorker() | cmd.CloseWorkerConnection():
                # The core removed it already; the process goes, with all it held.
                assert c.worker not in self.state.workers, f"{c} for a worker still there"
                self.workers.pop(c.worker, None)
            case cmd.ReportRetired():
                self.retired[c.request] = c.workers
            case cmd.ReportInterrupted():
                assert c.key in self.wants.get(c.client, set()), f"{c} for a key it let go"
            case cmd.Steal():
                w = self.workers.get(c.worker)
                assert w is not None and c.key in w.running, f"{c} for a task it does not run"
                w.steals.add(c.key)
            case cmd.ReportInMemory():
                ts = self.state.tasks.get(c.key)
                assert ts is not None and ts.state == MEMORY, f"{c} but the task is {ts!r}"
                self._report(c.client, c.key, "memory")
            case cmd.ReportErred():
                self._report(c.client, c.key, "erred")
            case cmd.ReportLost():
                self._report(c.client, c.key, "lost")
            case cmd.ReportCancelled():
                self.wants.get(c.client, set()).discard(c.key)
                self.last_report.pop((c.client, c.key), None)
            case _:
                raise AssertionError(f"unknown command {c!r}")

    def _report(self, client: str, key: str, what: str) -> None:
        assert key in self.wants.get(client, set()), f"{client} told {what} of {key!r} it let go"
        self.last_report[(client, key)] = what

    def _want(self, client: str, keys: Iterable[str]) -> None:
        self.wants.setdefault(client, set()).update(keys)

    # ------------------------------------------------------------- actions
    def add_worker(self, address: str, nthreads: int = 1, name: str = "") -> None:
        assert address not in self.workers
        self.workers[address] = SimWorker(address, name or address, nthreads)
        self.handle(ev.WorkerAdded(worker=address, name=name, nthreads=nthreads))

    def remove_worker(self, address: str, graceful: bool = False) -> None:
        del self.workers[address]
        ws = self.state.workers.get(address)
        if ws is not None and ws.processing:
            self.handle(ev.TasksStarted(worker=address, keys=tuple(t.key for t in ws.processing)))
        self.handle(ev.WorkerRemoved(worker=address, graceful=graceful, reason="sim"))

    def retire(self, workers: Sequence[str]) -> None:
        """Ask the core to retire these workers (it closes them when their data is safe)."""
        self._retirements += 1
        request = f"retire-{self._retirements}"
        self.handle(ev.RetireWorkersRequested(request=request, workers=tuple(workers)))

    def closure(self, key: str) -> list[ev.TaskSpec]:
        """``key``'s spec after those of its (submitted, not scattered) inputs."""
        out: list[ev.TaskSpec] = []
        seen: set[str] = set()

        def visit(k: str) -> None:
            if k in seen or k not in self.specs:
                return
            seen.add(k)
            for d in self.specs[k].dependencies:
                visit(d)
            out.append(self.specs[k])

        visit(key)
        return out

    def submit(self, client: str, tasks: Sequence[ev.TaskSpec], wanted: Sequence[str]) -> None:
        for t in tasks:
            self.specs.setdefault(t.key, t)
        self._want(client, wanted)
        self.handle(ev.TasksSubmitted(client=client, tasks=tuple(tasks), wanted=tuple(wanted)))

    def scatter(
        self, client: str, key: str, nbytes: int, workers: Sequence[str], replicas: int = 1
    ) -> None:
        for w in workers:
            self.workers[w].data[key] = nbytes
        self._want(client, [key])
        item = ev.ScatteredKey(key=key, nbytes=nbytes, type_name="bytes", workers=tuple(workers))
        self.handle(ev.DataScattered(client=client, keys=(item,), replicas=replicas))

    def desire(self, client: str, keys: Sequence[str]) -> None:
        self._want(client, keys)
        self.handle(ev.KeysDesired(client=client, keys=tuple(keys)))

    def release(self, client: str, keys: Sequence[str]) -> None:
        for k in keys:
            self.wants.get(client, set()).discard(k)
            self.last_report.pop((client, k), None)
        self.handle(ev.KeysReleased(client=client, keys=tuple(keys)))

    def cancel(self, client: str, keys: Sequence[str], force: bool) -> None:
        self.handle(ev.KeysCancelled(client=client, keys=tuple(keys), force=force))

    def disconnect(self, client: str) -> None:
        for k in self.wants.pop(client, set()):
            self.last_report.pop((client, k), None)
        self.handle(ev.ClientDisconnected(client=client))

    def tick(self) -> None:
        """A second passes: every worker has sent a heartbeat (so nobody times out), and
        deadlines (an overdue copy for a retiring worker) can pass."""
        self.now += 1.0
        for address in sorted(self.workers):
            self.handle(ev.HeartbeatReceived(worker=address, now=self.now))
        self.handle(ev.Ticked(now=self.now))

    def pause(self, worker: str, paused: bool) -> None:
        self.handle(ev.WorkerPaused(worker=worker, paused=paused))

    def restart(self) -> None:
        # The shell restarts every worker process: all their data and work is gone.
        for w in self.workers.values():
            w.running.clear()
            w.data.clear()
            w.steals.clear()
            w.acquire.clear()
            w.lost.clear()
        self.handle(ev.RestartRequested())

    def lose_silently(self, worker: str, key: str) -> None:
        """The worker loses a result without telling anyone (found out when fetched)."""
        w = self.workers[worker]
        del w.data[key]
        w.lost.add(key)

    def pending_acquisitions(self) -> list[str]:
        return sorted(w.address for w in self.workers.values() if w.acquire)

    def acquire(self, worker: str) -> None:
        """The worker fetches the copies it was asked for (those it can find)."""
        w = self.workers[worker]
        orders, w.acquire = w.acquire, {}
        got: list[str] = []
        for key in sorted(orders):
            if key in w.data:
                continue
            source = next((o for o in self.workers.values() if o is not w and key in o.data), None)
            if source is not None:
                w.data[key] = source.data[key]
                w.lost.discard(key)
                got.append(key)
        if got:
            self.handle(ev.ReplicasAdded(worker=worker, keys=tuple(got)))

    def running(self) -> list[tuple[str, str]]:
        """(worker, key) of every task some worker is running, in a stable order."""
        return sorted((w.address, k) for w in self.workers.values() for k in w.running)

    def pending_steals(self) -> list[tuple[str, str]]:
        return sorted((w.address, k) for w in self.workers.values() for k in w.steals)

    def answer_steal(self, worker: str, key: str, give_up: bool) -> None:
        w = self.workers[worker]
        w.steals.discard(key)
        if give_up:
            w.running.pop(key, None)
        self.handle(ev.StealAnswered(worker=worker, key=key, stolen=give_up))

    def _fetch_inputs(self, w: SimWorker, compute: cmd.Compute) -> bool:
        """Gather the task's inputs onto ``w``; False (and the event sent) if one is missing."""
        fetched: list[str] = []
        for dep in sorted(compute.who_has):
            if dep in w.data or dep in (compute.inline or {}):
                continue
            source = next((o for o in self.workers.values() if o is not w and dep in o.data), None)
            if source is None:
                # Tell about what it did fetch, then give up on the task.
                if fetched:
                    self.handle(ev.ReplicasAdded(worker=w.address, keys=tuple(fetched)))
                del w.running[compute.key]
                w.steals.discard(compute.key)
                holders = tuple(compute.who_has[dep])
                self.handle(
                    ev.DependencyMissing(
                        worker=w.address, key=compute.key, dependency=dep, holders=holders
                    )
                )
                # The scheduler now knows those holders lack it.
                dts = self.state.tasks.get(dep)
                for h in holders:
                    hw = self.workers.get(h)
                    if hw is not None and (
                        dts is None or h not in {ws.address for ws in dts.who_has}
                    ):
                        hw.lost.discard(dep)
                return False
            w.data[dep] = source.data[dep]
            w.lost.discard(dep)
            fetched.append(dep)
        if fetched:
            self.handle(ev.ReplicasAdded(worker=w.address, keys=tuple(fetched)))
        return True

    def finish(self, worker: str, key: str, nbytes: int = 10) -> None:
        w = self.workers[worker]
        if not self._fetch_inputs(w, w.running[key]):
            return
        if key not in w.running:  # the replicas report made the scheduler drop it
            return
        compute = w.running.pop(key)
        w.steals.discard(key)
        w.data[key] = nbytes
        self.handle(
            ev.TaskFinished(
                worker=worker,
                key=key,
                run_id=compute.run_id,
                nbytes=nbytes,
                type_name="int",
                inline=f"v:{key}".encode() if nbytes <= self.inline_upto else None,
            )
        )

    def err(self, worker: str, key: str) -> None:
        w = self.workers[worker]
        compute = w.running.pop(key)
        w.steals.discard(key)
        self.handle(
            ev.TaskErred(
                worker=worker,
                key=key,
                run_id=compute.run_id,
                exception=b"E:" + key.encode(),
                traceback=b"",
                text=key,
            )
        )

    # -------------------------------------------------------------- checks
    def check_consistent(self) -> None:
        """The core's picture of the cluster is the cluster as the simulation played it."""
        st = self.state
        assert set(st.workers) == set(self.workers)
        for address, w in self.workers.items():
            ws = st.workers[address]
            assert {ts.key for ts in ws.processing} == set(w.running), address
            assert not (w.lost & set(w.data)), address
            assert {ts.key for ts in ws.has_what} == set(w.data) | w.lost, address
        for client, keys in self.wants.items():
            cs = st.clients.get(client)
            have = {ts.key for ts in cs.wants} if cs is not None else set()
            assert have == keys, f"{client}: core thinks it wants {have}, it wants {keys}"
        for (client, key), what in self.last_report.items():
            ts = st.tasks.get(key)
            assert ts is not None, f"{client} holds a future for forgotten {key!r}"
            if what == "memory":
                # Reported in memory: still there, or being recomputed after a loss
                # (which the client is told about with ReportLost).
                assert ts.state == MEMORY, f"{client} told {key} is in memory; {ts!r}"
            elif what == "erred":
                assert ts.state == ERRED, f"{client} told {key} erred; {ts!r}"

    def settle(self, limit: int = 20_000) -> None:
        """Let every worker finish its work (refusing steals) until nothing runs."""
        ticked = False
        for _ in range(limit):
            steals = self.pending_steals()
            if steals:
                self.answer_steal(*steals[0], give_up=False)
                continue
            acquisitions = self.pending_acquisitions()
            if acquisitions:
                ticked = False  # a retiring worker may be free to go on the next tick
                self.acquire(acquisitions[0])
                continue
            running = self.running()
            if running:
                ticked = False
                self.finish(*running[0])
                continue
            if ticked:
                return
            self.tick()  # a last chance for anything queued
            ticked = True
        raise AssertionError("the simulated cluster never went quiet")

    def check_quiescent(self) -> None:
        """Every key a client holds a future for ended in memory or erred, and it was told;
        no retirement is left under way."""
        st = self.state
        assert not st.retirements, f"retirements never finished: {st.retirements}"
        for client, keys in self.wants.items():
            for key in keys:
                ts = st.tasks.get(key)
                assert ts is not None, f"{client} wants {key}, which was forgotten"
                assert ts.state in (MEMORY, ERRED), f"{client} wants {ts!r} (stuck)"
                expected = "memory" if ts.state == MEMORY else "erred"
                got = self.last_report.get((client, key))
                assert got == expected, f"{client} was last told {got!r} of {ts!r}"
        assert not st._queued_count
        for ts in st.tasks.values():
            assert ts.state in (MEMORY, ERRED, "released"), f"{ts!r} stuck"
