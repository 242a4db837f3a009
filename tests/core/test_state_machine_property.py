"""Random runs of a simulated cluster around the scheduler core.

Hypothesis drives a ``SimCluster`` (simulated workers and clients that carry out the
core's commands) through random submissions, results, errors, worker arrivals and
deaths, releases, cancellations, steals and ticks. After every step the core's own
invariants run (``validate=True``) and the core's picture of the cluster is compared
with the simulation's. At the end the cluster is run until quiet: every key a client
still holds a future for must be in memory or erred, and the client must have been told.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from regrow.core import events as ev

from .core_sim import SimCluster

NAMES = ("n0", "n1", "n2", "n3", "n4")
CLIENTS = ("c0", "c1", "c2")


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = SimCluster()
        self.generation = 0
        self.counter = 0

    # ------------------------------------------------------------- helpers
    def _fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def _alive_names(self) -> set[str]:
        return {w.name for w in self.sim.workers.values()}

    def _closure(self, key: str) -> list[ev.TaskSpec]:
        return self.sim.closure(key)

    # --------------------------------------------------------------- setup
    @initialize(
        saturation=st.sampled_from([4.0, 1.0, 0.5]),
        allowed_failures=st.integers(1, 3),
        nworkers=st.integers(1, 2),
        inline_upto=st.sampled_from([0, 1000]),
        inline_limit=st.sampled_from([2**20, 24]),
    )
    def setup(
        self,
        saturation: float,
        allowed_failures: int,
        nworkers: int,
        inline_upto: int,
        inline_limit: int,
    ) -> None:
        self.sim = SimCluster(
            worker_saturation=saturation,
            allowed_failures=allowed_failures,
            inline_upto=inline_upto,
            inline_limit=inline_limit,
        )
        for name in NAMES[:nworkers]:
            self.add_worker(name, 1)

    # --------------------------------------------------------------- rules
    @rule(name=st.sampled_from(NAMES), nthreads=st.integers(1, 2))
    def add_worker(self, name: str, nthreads: int) -> None:
        if name in self._alive_names():
            return
        self.generation += 1
        self.sim.add_worker(f"tcp://{name}:{self.generation}", nthreads=nthreads, name=name)

    @precondition(lambda self: self.sim.running())
    @rule(name=st.sampled_from(NAMES), nthreads=st.integers(1, 3))
    def newcomer(self, name: str, nthreads: int) -> None:
        """A worker joins a busy cluster and time passes: the newcomer may steal."""
        self.add_worker(name, nthreads)
        self.sim.tick()

    @precondition(lambda self: self.sim.workers)
    @rule(data=st.data(), graceful=st.booleans())
    def remove_worker(self, data: st.DataObject, graceful: bool) -> None:
        address = data.draw(st.sampled_from(sorted(self.sim.workers)))
        self.sim.remove_worker(address, graceful=graceful)

    @precondition(lambda self: self.sim.workers)
    @rule(data=st.data())
    def retire(self, data: st.DataObject) -> None:
        """Graceful retirement: the core copies what only they hold, then closes them."""
        workers = data.draw(st.lists(st.sampled_from(sorted(self.sim.workers)), min_size=1))
        self.sim.retire(workers)

    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def submit(self, client: str, data: st.DataObject) -> None:
        """A random DAG of new tasks, possibly on top of keys the client holds."""
        held = sorted(self.sim.wants.get(client, set()))
        tasks: list[ev.TaskSpec] = []
        new_keys: list[str] = []
        for _ in range(data.draw(st.integers(1, 6), label="n")):
            key = self._fresh("k")
            pool = held + new_keys
            deps = (
                data.draw(st.lists(st.sampled_from(pool), max_size=3, unique=True), "deps")
                if pool
                else []
            )
            restricted = data.draw(st.sampled_from([None, None, None, ("n0",), ("n1", "n2")]))
            tasks.append(
                ev.TaskSpec(
                    key=key,
                    dependencies=tuple(deps),
                    run_spec=("run", key),
                    priority=data.draw(st.integers(-1, 1), label="priority"),
                    retries=data.draw(st.integers(0, 1), label="retries"),
                    workers=restricted,
                )
            )
            new_keys.append(key)
        wanted = data.draw(st.lists(st.sampled_from(new_keys), min_size=1, unique=True), "wanted")
        self.sim.submit(client, tasks, wanted)

    @precondition(lambda self: self.sim.specs)
    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def resubmit(self, client: str, data: st.DataObject) -> None:
        """Submit a graph that was submitted before (pure keys: the work is shared)."""
        key = data.draw(st.sampled_from(sorted(self.sim.specs)))
        self.sim.submit(client, self._closure(key), [key])

    @precondition(lambda self: self.sim.workers)
    @rule(client=st.sampled_from(CLIENTS), data=st.data(), replicas=st.integers(1, 2))
    def scatter(self, client: str, data: st.DataObject, replicas: int) -> None:
        workers = data.draw(st.lists(st.sampled_from(sorted(self.sim.workers)), unique=True))
        self.sim.scatter(client, self._fresh("s"), 5, workers, replicas=replicas)

    def _work(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            running = self.sim.running()
            if not running or data.draw(st.integers(0, 3), label="tick?") == 0:
                self.sim.tick()
                continue
            worker, key = data.draw(st.sampled_from(running))
            self.sim.finish(worker, key, nbytes=data.draw(st.integers(1, 10**7)))

    @rule(data=st.data(), count=st.integers(1, 4))
    def work(self, data: st.DataObject, count: int) -> None:
        """Some running tasks finish (fetching their inputs first), or time passes."""
        self._work(data, count)

    @precondition(lambda self: self.sim.running())
    @rule(data=st.data(), count=st.integers(1, 4))
    def more_work(self, data: st.DataObject, count: int) -> None:
        """The same as work: a second rule, so that work is done more often."""
        self._work(data, count)

    @precondition(lambda self: self.sim.running())
    @rule(data=st.data())
    def err(self, data: st.DataObject) -> None:
        worker, key = data.draw(st.sampled_from(self.sim.running()))
        self.sim.err(worker, key)

    @precondition(lambda self: self.sim.wants)
    @rule(data=st.data(), how=st.sampled_from(["release", "cancel", "force", "disconnect"]))
    def let_go(self, data: st.DataObject, how: str) -> None:
        """A client releases or cancels some of its keys, or goes away."""
        client = data.draw(st.sampled_from(sorted(self.sim.wants)))
        held = sorted(self.sim.wants[client])
        if how == "disconnect" or not held:
            self.sim.disconnect(client)
            return
        keys = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=2, unique=True))
        if how == "release":
            self.sim.release(client, keys)
        else:
            self.sim.cancel(client, keys, force=how == "force")

    @precondition(lambda self: self.sim.state.tasks)
    @rule(client=st.sampled_from(CLIENTS), data=st.data(), force=st.booleans())
    def cancel_any(self, client: str, data: st.DataObject, force: bool) -> None:
        """Cancel keys the client may not even hold (an input of its work, say)."""
        keys = data.draw(st.lists(st.sampled_from(sorted(self.sim.state.tasks)), min_size=1))
        self.sim.cancel(client, keys[:2], force)

    @precondition(lambda self: len(self.sim.wants) > 0)
    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def desire(self, client: str, data: st.DataObject) -> None:
        """A future passed from another client."""
        others = sorted({k for c, ks in self.sim.wants.items() if c != client for k in ks})
        if others:
            self.sim.desire(client, [data.draw(st.sampled_from(others))])

    @precondition(lambda self: self.sim.pending_steals())
    @rule(data=st.data(), give_up=st.booleans())
    def answer_steal(self, data: st.DataObject, give_up: bool) -> None:
        worker, key = data.draw(st.sampled_from(self.sim.pending_steals()))
        self.sim.answer_steal(worker, key, give_up)

    @precondition(lambda self: self.sim.pending_acquisitions())
    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        self.sim.acquire(data.draw(st.sampled_from(self.sim.pending_acquisitions())))

    @precondition(lambda self: self.sim.workers)
    @rule(data=st.data(), paused=st.booleans())
    def pause(self, data: st.DataObject, paused: bool) -> None:
        self.sim.pause(data.draw(st.sampled_from(sorted(self.sim.workers))), paused)

    @precondition(lambda self: any(w.data for w in self.sim.workers.values()))
    @rule(data=st.data())
    def lose_silently(self, data: st.DataObject) -> None:
        held = sorted((w.address, k) for w in self.sim.workers.values() for k in w.data)
        self.sim.lose_silently(*data.draw(st.sampled_from(held)))

    # ---------------------------------------------------------- invariants
    @invariant()
    def consistent(self) -> None:
        self.sim.check_consistent()

    def teardown(self) -> None:
        # Bring every worker a restriction may name, unpause everyone, and run until quiet
        # (again, if retirements under way took workers away meanwhile).
        for _ in range(30):
            for name in NAMES:
                self.add_worker(name, 1)
            for address in sorted(self.sim.workers):
                self.sim.pause(address, False)
            self.sim.settle()
            if not self.sim.state.retirements:
                break
        for name in NAMES:
            self.add_worker(name, 1)
        self.sim.settle()
        self.sim.check_consistent()
        self.sim.check_quiescent()


CoreMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_core_state_machine = CoreMachine.TestCase
