"""Long seeded random walks of a simulated cluster around the scheduler core.

A complement to the Hypothesis state machine: weighted choices keep a busy cluster
(many tasks in flight, workers joining busy clusters, steals, deaths) for hundreds of
steps. Every step is checked like there (core invariants, core vs simulation), and the
end state like there (every wanted key in memory or erred, and its client told so).
A failure names the seed and the last actions.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from regrow.core import events as ev

from .core_sim import SimCluster

NAMES = ("n0", "n1", "n2", "n3")
CLIENTS = ("c0", "c1")


class Walk:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sim = SimCluster(
            worker_saturation=self.rng.choice([0.5, 1.0, 2.0, 4.0]),
            allowed_failures=self.rng.randint(1, 4),
            # Small results kept by the scheduler: none, all the small ones, or a few
            # (a total that fills up after a handful).
            inline_upto=self.rng.choice([0, 1000]),
            inline_limit=self.rng.choice([2**20, 24]),
        )
        self.generation = 0
        self.counter = 0
        self.actions: list[str] = []
        self.weights: dict[Callable[[], None], float] = {
            self.add_worker: 2,
            self.remove_worker: 1,
            self.submit: 4,
            self.resubmit: 1,
            self.scatter: 0.5,
            self.finish: 10,
            self.err: 1,
            self.tick: 2,
            self.answer_steal: 3,
            self.acquire: 1,
            self.release: 1,
            self.cancel: 0.7,
            self.desire: 0.7,
            self.disconnect: 0.2,
            self.pause: 0.5,
            self.lose_silently: 0.5,
            self.restart: 0.02,
            self.retire: 0.3,
        }
        for _ in range(self.rng.randint(1, 3)):
            self.add_worker()

    def log(self, what: str) -> None:
        self.actions.append(what)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # ------------------------------------------------------------- actions
    def add_worker(self, name: str | None = None) -> None:
        alive = {w.name for w in self.sim.workers.values()}
        free_names = [n for n in NAMES if n not in alive]
        if name is None:
            if not free_names:
                return
            name = self.rng.choice(free_names)
        elif name in alive:
            return
        self.generation += 1
        address = f"tcp://{name}:{self.generation}"
        nthreads = self.rng.randint(1, 3)
        self.log(f"add_worker({address!r}, nthreads={nthreads})")
        self.sim.add_worker(address, nthreads=nthreads, name=name)

    def remove_worker(self) -> None:
        if self.sim.workers:
            address = self.rng.choice(sorted(self.sim.workers))
            graceful = self.rng.random() < 0.3
            self.log(f"remove_worker({address!r}, graceful={graceful})")
            self.sim.remove_worker(address, graceful=graceful)

    def submit(self) -> None:
        client = self.rng.choice(CLIENTS)
        held = sorted(self.sim.wants.get(client, set()))
        tasks: list[ev.TaskSpec] = []
        keys: list[str] = []
        for _ in range(self.rng.randint(1, 8)):
            key = self.fresh("k")
            pool = held + keys
            deps = self.rng.sample(pool, min(len(pool), self.rng.randint(0, 3)))
            restricted = self.rng.choice([None] * 6 + [("n0",), ("n1", "n2")])
            tasks.append(
                ev.TaskSpec(
                    key=key,
                    dependencies=tuple(deps),
                    run_spec=("run", key),
                    priority=self.rng.randint(-1, 1),
                    retries=self.rng.choice([0, 0, 0, 1]),
                    workers=restricted,
                )
            )
            keys.append(key)
        wanted = [k for k in keys if self.rng.random() < 0.4] or [keys[-1]]
        self.log(f"submit({client!r}, {[(t.key, t.dependencies) for t in tasks]}, {wanted})")
        self.sim.submit(client, tasks, wanted)

    def resubmit(self) -> None:
        if not self.sim.specs:
            return
        client = self.rng.choice(CLIENTS)
        key = self.rng.choice(sorted(self.sim.specs))
        order = self.sim.closure(key)
        self.log(f"resubmit({client!r}, {key!r})")
        self.sim.submit(client, order, [key])

    def scatter(self) -> None:
        if not self.sim.workers:
            return
        client = self.rng.choice(CLIENTS)
        alive = sorted(self.sim.workers)
        workers = self.rng.sample(alive, min(len(alive), self.rng.randint(0, 2)))
        key = self.fresh("s")
        replicas = self.rng.randint(1, 2)
        self.log(f"scatter({client!r}, {key!r}, {workers}, replicas={replicas})")
        self.sim.scatter(client, key, 5, workers, replicas=replicas)

    def finish(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            running = self.sim.running()
            if not running:
                return
            worker, key = self.rng.choice(running)
            nbytes = self.rng.choice([1, 1000, 10**6, 10**8])
            self.log(f"finish({worker!r}, {key!r}, {nbytes})")
            self.sim.finish(worker, key, nbytes)

    def err(self) -> None:
        running = self.sim.running()
        if running:
            worker, key = self.rng.choice(running)
            self.log(f"err({worker!r}, {key!r})")
            self.sim.err(worker, key)

    def tick(self) -> None:
        self.log("tick()")
        self.sim.tick()

    def answer_steal(self) -> None:
        steals = self.sim.pending_steals()
        if steals:
            worker, key = self.rng.choice(steals)
            give_up = self.rng.random() < 0.7
            self.log(f"answer_steal({worker!r}, {key!r}, {give_up})")
            self.sim.answer_steal(worker, key, give_up)

    def acquire(self) -> None:
        pending = self.sim.pending_acquisitions()
        if pending:
            worker = self.rng.choice(pending)
            self.log(f"acquire({worker!r})")
            self.sim.acquire(worker)

    def _held(self) -> tuple[str, list[str]] | None:
        clients = sorted(c for c, ks in self.sim.wants.items() if ks)
        if not clients:
            return None
        client = self.rng.choice(clients)
        held = sorted(self.sim.wants[client])
        return client, self.rng.sample(held, min(len(held), self.rng.randint(1, 2)))

    def release(self) -> None:
        picked = self._held()
        if picked:
            self.log(f"release{picked}")
            self.sim.release(*picked)

    def cancel(self) -> None:
        if self.rng.random() < 0.5:
            picked = self._held()
        elif self.sim.state.tasks:
            picked = (self.rng.choice(CLIENTS), [self.rng.choice(sorted(self.sim.state.tasks))])
        else:
            picked = None
        if picked:
            force = self.rng.random() < 0.5
            self.log(f"cancel{picked}, force={force}")
            self.sim.cancel(*picked, force=force)

    def desire(self) -> None:
        client = self.rng.choice(CLIENTS)
        others = sorted({k for c, ks in self.sim.wants.items() if c != client for k in ks})
        if others:
            key = self.rng.choice(others)
            self.log(f"desire({client!r}, {key!r})")
            self.sim.desire(client, [key])

    def disconnect(self) -> None:
        client = self.rng.choice(CLIENTS)
        self.log(f"disconnect({client!r})")
        self.sim.disconnect(client)

    def pause(self) -> None:
        if self.sim.workers:
            worker = self.rng.choice(sorted(self.sim.workers))
            paused = self.rng.random() < 0.5
            self.log(f"pause({worker!r}, {paused})")
            self.sim.pause(worker, paused)

    def lose_silently(self) -> None:
        held = sorted((w.address, k) for w in self.sim.workers.values() for k in w.data)
        if held:
            worker, key = self.rng.choice(held)
            self.log(f"lose_silently({worker!r}, {key!r})")
            self.sim.lose_silently(worker, key)

    def restart(self) -> None:
        self.log("restart()")
        self.sim.restart()

    def retire(self) -> None:
        if self.sim.workers:
            workers = self.rng.sample(sorted(self.sim.workers), min(2, len(self.sim.workers)))
            self.log(f"retire({workers!r})")
            self.sim.retire(workers)

    # ----------------------------------------------------------------- run
    def run(self, steps: int) -> None:
        actions = list(self.weights)
        weights = [self.weights[a] for a in actions]
        for _ in range(steps):
            self.rng.choices(actions, weights)[0]()
            self.sim.check_consistent()
        # Every worker a restriction may name, unpaused, until quiet (again, if retirements
        # under way took workers away meanwhile).
        for _ in range(30):
            for name in NAMES:
                self.add_worker(name)
            for address in sorted(self.sim.workers):
                self.sim.pause(address, False)
            self.log("settle()")
            self.sim.settle()
            if not self.sim.state.retirements:
                break
        for name in NAMES:
            self.add_worker(name)
        self.sim.settle()
        self.sim.check_consistent()
        self.sim.check_quiescent()


@pytest.mark.parametrize("block", range(4))
def test_random_walks(block: int) -> None:
    for seed in range(block * 25, (block + 1) * 25):
        walk = Walk(seed)
        try:
            walk.run(steps=150)
        except Exception as exc:
            story = "\n".join(walk.actions[-40:])
            raise AssertionError(f"seed {seed} failed: {exc!r}\nlast actions:\n{story}") from exc
