"""The chaos soak's graphs: each kind built on the cluster, and its serial oracle.

Owns: ``GraphRun`` (one graph of the soak: its kind, seed, parameters, futures and
deadline), ``Workloads`` (for each graph kind, build the graph on the cluster from the
graph's own RNG, compute the same thing here, serially, with the same task functions,
and return both with how to compare them), the random data the graphs run on, and the
comparisons (``same``: exactly equal, to the last bit; ``close``: dask's floating-point
reductions) with ``difference``, which says where a result is wrong.

Must not: judge an outcome, catch an error or inject a fault (``regrow.chaos.soak`` and
``regrow.chaos.faults`` do); nor draw from anything but the graph's own RNG, so that a
graph is the same for a given seed.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from regrow.chaos.tasks import (
    bag_fn,
    bag_keep,
    combine,
    digest,
    is_array,
    leaf,
    pair_digest,
    pl_count,
    pl_count_done,
    pl_count_init,
    pl_total,
    pl_total_done,
    pl_total_init,
    pl_words,
    total,
    transform,
)

if TYPE_CHECKING:
    from regrow.client.client import Client


def numpy_or_none() -> Any:
    """numpy, or None where it is not installed."""
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


# --------------------------------------------------------------------------------------
# Data and comparisons.

VOCABULARY = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
    "chi", "psi", "omega", "worker", "nanny", "scheduler", "client", "future", "task",
    "graph", "key", "memory", "erred", "released", "waiting", "queued", "journal", "veth",
)  # fmt: skip


def random_line(rng: random.Random) -> str:
    """1 to 11 words of the vocabulary."""
    return " ".join(rng.choice(VOCABULARY) for _ in range(rng.randrange(1, 12)))


def random_value(rng: random.Random, np: Any) -> Any:
    """An int, float, bytes (small, or large enough to stay with its worker), str or
    numpy array (when numpy is here)."""
    kinds = ["int", "float", "bytes", "str"] + (["array"] if np is not None else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randrange(-(10**12), 10**12)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bytes":
        n = rng.randrange(64 * 1024, 512 * 1024) if rng.random() < 0.3 else rng.randrange(2048)
        return rng.randbytes(n)
    if kind == "str":
        return random_line(rng)
    gen = np.random.default_rng(rng.getrandbits(32))
    n = rng.randrange(10, 50_000)
    if rng.random() < 0.5:
        return gen.standard_normal(n)
    return gen.integers(-1000, 1000, n, dtype=np.int64)


def same(a: Any, b: Any) -> bool:
    """``a`` is exactly ``b``: same types, same values to the last bit (arrays too)."""
    if is_array(a) or is_array(b):
        if not (is_array(a) and is_array(b)):
            return False
        np = numpy_or_none()
        return bool(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def close(a: Any, b: Any) -> bool:
    """Floating-point results of dask reductions: equal shapes, values within 1e-9."""
    np = numpy_or_none()
    a, b = np.asarray(a), np.asarray(b)
    return bool(a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-9))


def describe(x: Any, limit: int = 160) -> str:
    if is_array(x):
        return f"ndarray({x.dtype}, shape={x.shape}, sum={x.sum()!r})"
    if isinstance(x, bytes) and len(x) > 32:
        return f"bytes(len={len(x)}, sha256={hashlib.sha256(x).hexdigest()[:16]})"
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def difference(got: Any, expected: Any) -> str:
    """Where ``got`` first differs from ``expected``, in a line."""
    if isinstance(got, list | tuple) and isinstance(expected, list | tuple):
        if len(got) != len(expected):
            return f"{len(got)} items, expected {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            if not same(g, e):
                return f"item {i}: {difference(g, e)}"
    return f"got {describe(got)}, expected {describe(expected)}"


def _type_counts(values: list[Any]) -> dict[str, int]:
    return dict(collections.Counter(type(v).__name__ for v in values))


# --------------------------------------------------------------------------------------
# The graphs.


@dataclass
class GraphRun:
    """One graph of the soak: what it is (kind, seed, parameters) and where it is."""

    kind: str
    index: int
    seed: int
    started: float
    deadline: float
    params: dict[str, Any] = field(default_factory=dict)
    futures: list[Any] = field(default_factory=list)  # what to cancel if it hangs
    # "submit" while it sends its tasks and data, "gather" once it waits for results.
    phase: str = "submit"
    recorded: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind}#{self.index}"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> float:
        """The time left, as a timeout for a call (never 0: that means no wait)."""
        return max(0.01, self.remaining())

    def track(self, *futures: Any) -> None:
        self.futures.extend(futures)

    def gathering(self) -> float:
        """The graph is submitted: from now on it waits for results. The time left."""
        self.phase = "gather"
        return self.timeout()


# Each workload returns (got, expected, how to compare).
Compare = Callable[[Any, Any], bool]


class Workloads:
    def __init__(self, client: Client, np: Any) -> None:
        self.client = client
        self.np = np

    def run(self, g: GraphRun) -> tuple[Any, Any, Compare]:
        rng = random.Random(g.seed)
        fn: Callable[[GraphRun, random.Random], tuple[Any, Any, Compare]] = {
            "map": self.map,
            "tree": self.tree,
            "scatter": self.scatter,
            "pipeline": self.pipeline,
            "dask-bag": self.dask_bag,
            "dask-array": self.dask_array,
        }[g.kind]
        return fn(g, rng)

    def map(self, g: GraphRun, rng: random.Random) -> tuple[Any, Any, Compare]:
        n = rng.randrange(10, 120)
        seconds = rng.choice([0.0, 0.001, 0.005, 0.01])
        values = [random_value(rng, self.np) for _ in range(n)]
        g.params.update(n=n, seconds=seconds, types=_type_counts(values))
        futures = self.client.map(transform, values, salt=g.seed, seconds=seconds)
        g.track(*futures)
        expected = [transform(x, g.seed) for x in values]
        got = self.client.gather(futures, timeout=g.gathering())
        return got, expected, same

    def tree(self, g: GraphRun, rng: random.Random) -> tuple[Any, Any, Compare]:
        n = rng.randrange(16, 200)
        fan_in = rng.randrange(2, 7)
        kind = rng.choice(["int", "float"] + (["array"] if self.np is not None else []))
        seconds = rng.choice([0.0, 0.002, 0.005])
        g.params.update(leaves=n, fan_in=fan_in, leaf=kind, seconds=seconds)
        level = self.client.map(leaf, range(n), salt=g.seed, kind=kind, seconds=seconds)
        g.track(*level)
        expect = [leaf(i, g.seed, kind) for i in range(n)]
        inner: list[Any] = []
        expect_inner: list[Any] = []
        while len(level) > 1:
            level = [
                self.client.submit(total, *level[i : i + fan_in])
                for i in range(0, len(level), fan_in)
            ]
            expect = [total(*expect[i : i + fan_in]) for i in range(0, len(expect), fan_in)]
            g.track(*level)
            inner.extend(level)
            expect_inner.extend(expect)
        got = self.client.gather(inner, timeout=g.gathering())
        return got, expect_inner, same

    def scatter(self, g: GraphRun, rng: random.Random) -> tuple[Any, Any, Compare]:
        n = rng.randrange(3, 20)
        replicas = 2 if rng.random() < 0.75 else 1
        data = [random_value(rng, self.np) for _ in range(n)]
        g.params.update(n=n, replicas=replicas, types=_type_counts(data))
        scattered = self.client.scatter(data, replicas=replicas, timeout=g.timeout())
        g.track(*scattered)
        digests = self.client.map(digest, scattered, salt=g.seed)
        pairs = [
            self.client.submit(pair_digest, scattered[i], scattered[(i + 1) % n], g.seed)
            for i in range(n)
        ]
        final = self.client.submit(combine, *digests, *pairs)
        g.track(*digests, *pairs, final)
        e_digests = [digest(x, g.seed) for x in data]
        e_pairs = [pair_digest(data[i], data[(i + 1) % n], g.seed) for i in range(n)]
        expected = [e_digests, e_pairs, combine(*e_digests, *e_pairs)]
        got = self.client.gather([digests, pairs, final], timeout=g.gathering())
        return got, expected, same

    def pipeline(self, g: GraphRun, rng: random.Random) -> tuple[Any, Any, Compare]:
        from regrow.pipeline import Pipeline, Stage, group_all, group_label, run_pipeline, split

        n = rng.randrange(20, 120)
        labels = rng.randrange(2, 6)
        batch = rng.randrange(5, 25)
        three = rng.random() < 0.5
        lines = [random_line(rng) for _ in range(n)]
        g.params.update(lines=n, labels=labels, input_batch=batch, stages=3 if three else 2)
        stages = [
            (split, Stage("words", process=pl_words, params={"labels": labels})),
            (
                group_label,
                Stage("count", init=pl_count_init, process=pl_count, done=pl_count_done),
            ),
        ]
        if three:
            stages.append(
                (
                    group_all,
                    Stage("total", init=pl_total_init, process=pl_total, done=pl_total_done),
                )
            )
        counts = collections.Counter(w for line in lines for w in line.split())
        expected: list[tuple[str, int]] = sorted(counts.items())
        if three:
            expected = sorted([*expected, ("__total__", sum(counts.values()))])
        result = run_pipeline(
            self.client, Pipeline(stages), list(enumerate(lines)), input_batch=batch
        )
        got = sorted(result.gather(timeout=g.gathering()))
        return got, expected, same

    def dask_bag(self, g: GraphRun, rng: random.Random) -> tuple[Any, Any, Compare]:
        db = importlib.import_module("dask.bag")
        n = rng.randrange(200, 3000)
        parts = rng.randrange(3, 16)
        items = [rng.randrange(10**6) for _ in range(n)]
        g.params.update(items=n, npartitions=parts)
        bag = db.from_sequence(items, npartitions=parts).map(bag_fn, g.seed).filter(bag_keep)
        futures = self.client.compute([bag.frequencies(), bag.sum(), bag.count()])
        g.track(*futures)
        kept = [v for v in (bag_fn(x, g.seed) for x in items) if bag_keep(v)]
        expected = [sorted(collections.Counter(kept).items()), sum(kept), len(kept)]
        freq, sum_, count = self.client.gather(futures, timeout=g.gathering())
        return [sorted(freq), sum_, count], expected, same

    def dask_array(self, g: GraphRun, rng: random.Random) -> tuple[Any, Any, Compare]:
        dask = importlib.import_module("dask")
        da = importlib.import_module("dask.array")
        np = self.np
        m = rng.randrange(60, 300)
        chunks = rng.randrange(15, 80)
        g.params.update(shape=(m, m), chunks=chunks)
        gen = np.random.default_rng(g.seed)
        floats = gen.standard_normal((m, m))
        ints = gen.integers(-1000, 1000, (m, m), dtype=np.int64)
        x = da.from_array(floats, chunks=chunks)
        xi = da.from_array(ints, chunks=chunks)
        fsum = (x * 2 + x.T).sum(axis=0)
        fstd = (x + 1).std()
        isum = (xi * 3 + xi.T).sum(axis=1)
        futures = self.client.compute([fsum, fstd, isum])
        g.track(*futures)
        e_fsum, e_fstd = dask.compute(fsum, fstd, scheduler="sync")
        e_isum = (ints * 3 + ints.T).sum(axis=1)
        got = self.client.gather(futures, timeout=g.gathering())

        def compare(got: Any, expected: Any) -> bool:
            return (
                close(got[0], expected[0])
                and close(got[1], expected[1])
                and same(got[2], expected[2])
            )

        return got, [e_fsum, e_fstd, e_isum], compare
