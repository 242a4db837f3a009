"""Every common kind of value, large enough for the fast paths, moved worker to worker,
worker to client and client to worker (scatter) on a real cluster, arrives as itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from conftest import MakeCluster

N = 3 << 20  # 3 MiB: lent between processes, built by rawbuf


def make(kind: str) -> Any:
    raw = np.random.default_rng(7).integers(32, 127, N, dtype=np.uint8)
    part = N // 4
    values: dict[str, Any] = {
        "bytes": raw.tobytes(),
        "bytearray": bytearray(raw.tobytes()),
        "ascii str": raw.tobytes().decode(),
        "utf-8 str": "ü" + raw.tobytes().decode() + "€",
        "memoryview": memoryview(raw.view(np.int32).reshape(-1, 8)),
        "numpy": raw.view(np.float64),
        "pandas": pd.DataFrame({"a": raw.view(np.float64), "b": raw.view(np.int64)}),
        "arrow": pa.table({"a": raw.view(np.float64)}),
        "list of arrays": [raw[i * part : (i + 1) * part].copy() for i in range(4)],
        "dict of bytes": {f"k{i}": raw[i * part : (i + 1) * part].tobytes() for i in range(4)},
        "tuple of str": tuple(raw[i * part : (i + 1) * part].tobytes().decode() for i in range(4)),
    }
    return values[kind]


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, memoryview):
        return (a.format, a.shape, a.tobytes()) == (b.format, b.shape, b.tobytes())
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=True))
    if isinstance(a, pd.DataFrame):
        return bool(a.equals(b))
    if isinstance(a, pa.Table):
        return bool(a.equals(b))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def check(kind: str, value: Any) -> str:
    """Run on a worker: whether ``value`` is what ``make(kind)`` makes ('' if so)."""
    return "" if same(value, make(kind)) else f"{kind}: got {type(value).__name__}"


KINDS = [
    "bytes",
    "bytearray",
    "ascii str",
    "utf-8 str",
    "memoryview",
    "numpy",
    "pandas",
    "arrow",
    "list of arrays",
    "dict of bytes",
    "tuple of str",
]


def test_every_kind_moves_as_itself(make_cluster: MakeCluster) -> None:
    # One cluster for all kinds (a cluster each cost 2 s per kind).
    _, client = make_cluster(n_workers=2, threads_per_worker=1)
    a, b = sorted(client.scheduler_info()["workers"])
    wrong: list[str] = []
    for kind in KINDS:
        made = client.submit(make, kind, workers=[a], pure=False)
        # Worker to worker.
        wrong.append(client.submit(check, kind, made, workers=[b], pure=False).result(60))
        # Worker to client.
        if not same(made.result(timeout=60), make(kind)):
            wrong.append(f"{kind}: worker to client")
        # Client to worker, then on to the other worker.
        [scattered] = client.scatter([make(kind)], workers=[a])
        assert client.who_has([scattered])[scattered.key] == [a]
        wrong.append(client.submit(check, kind, scattered, workers=[b], pure=False).result(60))
        if not same(scattered.result(timeout=60), make(kind)):
            wrong.append(f"{kind}: scattered, back to the client")
        del made, scattered
    assert [w for w in wrong if w] == []
