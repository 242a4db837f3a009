"""Task functions run by the benchmarks.

They live in an importable module (not ``__main__``) so regrow and dask pickle
them by reference: every worker imports this module once, and each task carries
only the name of its function. (Ray exports each function once, when its
``ray.remote`` wrapper is first called, and every worker loads it from there.)
"""

from __future__ import annotations

import os
from typing import Any


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def make_array(nbytes: int) -> Any:
    """A float64 array of ``nbytes`` bytes (all ones: every page is written)."""
    import numpy as np

    return np.ones(nbytes // 8, dtype=np.float64)


def consume(arr: Any) -> tuple[int, int]:
    """(size of the array in bytes, pid of the process that ran this task).

    Touches only the array's metadata, so its own cost is negligible: the time
    of this task is the cost of getting the array to it.
    """
    return int(arr.nbytes), os.getpid()


def pid() -> int:
    return os.getpid()


def pid_after(seconds: float) -> int:
    """``os.getpid()`` after sleeping ``seconds``: n of these submitted at once to n
    single-task worker processes overlap, so each lands in a different process (used to
    find Ray's worker processes, where there is no ``client.run``)."""
    import time

    time.sleep(seconds)
    return os.getpid()


def make_array_stamped(nbytes: int) -> tuple[Any, tuple[float, int]]:
    """``(make_array(nbytes), (t, pid))``, ``t`` read from ``CLOCK_MONOTONIC`` (one clock
    for every process of this machine) once the array is made, as the task returns it.

    Ray runs it with ``num_returns=2``: the array (put into the object store when the
    task returns) and the stamp are two objects. The transfer benchmark times Ray's
    handoff from that stamp (benchmarks/transfer.py).
    """
    import time

    arr = make_array(nbytes)
    return arr, (time.clock_gettime(time.CLOCK_MONOTONIC), os.getpid())


def consume_stamped(made: tuple[Any, tuple[float, int]]) -> tuple[int, int, float, int]:
    """``consume`` of a ``make_array_stamped`` result taken as one value (regrow, dask):
    (bytes, this pid, when the array was made, the producer's pid)."""
    arr, (made_at, producer) = made
    nbytes, pid = consume(arr)
    return nbytes, pid, made_at, producer


def slow_inc(x: int, seconds: float) -> int:
    """``x + 1`` after sleeping ``seconds`` (a task with a fixed amount of work)."""
    import time

    time.sleep(seconds)
    return x + 1


def gated_inc(x: int, gate: str, timeout: float = 120.0) -> int:
    """``x + 1`` once the file ``gate`` exists (polled every millisecond)."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} not opened within {timeout} s")
        time.sleep(0.001)
    return x + 1


# Stage functions of the pipeline benchmark (regrow.pipeline; benchmarks/pipeline.py).
def skewed_emit(interface: Any, state: Any, label: Any, inp: Any) -> None:
    """For each input record ``(i, n)``: sleep (long if ``i`` is one of the slow inputs),
    then write ``n`` records ``(i, j)``, under label ``j % labels``."""
    import time

    params = interface.params
    for i, n in inp:
        time.sleep(params["slow"] if i in params["slow_inputs"] else params["fast"])
        for j in range(n):
            interface.output(j % params["labels"]).add(i, j)


def batch_work_init(interface: Any, params: Any) -> dict[tuple[Any, int], int]:
    return {}


def batch_work(interface: Any, state: Any, label: Any, inp: Any) -> None:
    """Sleep ``per_batch`` seconds for each batch, then count its records by (label, key)."""
    import time

    time.sleep(interface.params["per_batch"])
    for i, _ in inp:
        state[label, i] = state.get((label, i), 0) + 1


def batch_work_done(interface: Any, state: Any) -> None:
    for key, n in state.items():
        interface.output(0).add(key, n)


# dask collections (benchmarks/dask_collections.py): the partitions of the data frames,
# made on the workers from a seed, and the per-partition check after the shuffle.
NAMES = (
    "Alice", "Bob", "Charlie", "Dan", "Edith", "Frank", "George", "Hannah", "Ingrid",
    "Jerry", "Kevin", "Laura", "Michael", "Norbert", "Oliver", "Patricia", "Quinn", "Ray",
    "Sarah", "Tim", "Ursula", "Victor", "Wendy", "Xavier", "Yvonne", "Zelda",
)  # fmt: skip


def make_frame(part: int, rows: int, seed: int, ids: int, nonce: int = 0) -> Any:
    """Partition ``part`` of a data frame: ``rows`` rows of ``id`` (int64 in
    ``[0, ids)``), ``name`` (one of ``NAMES``, a string column) and ``x`` (float64 in
    ``[0, 1)``), the same for the same ``(part, rows, seed, ids)`` wherever it is made.
    ``nonce`` changes nothing in it: a new one gives the graph's keys new names."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng([seed, part])
    names = np.asarray(NAMES, dtype=object)[rng.integers(0, len(NAMES), rows)]
    return pd.DataFrame(
        {
            "id": rng.integers(0, ids, rows),
            "name": pd.array(names, dtype="str"),
            "x": rng.random(rows),
        }
    )


def shuffle_stats(df: Any) -> Any:
    """One row for a partition: its length, its number of distinct ids, the sum of its ids."""
    import pandas as pd

    return pd.DataFrame(
        {"rows": [len(df)], "ids": [df["id"].nunique()], "id_sum": [int(df["id"].sum())]}
    )


def blas_threads() -> int | None:
    """How many threads this process's BLAS (numpy's) runs a matrix product on."""
    try:
        import numpy  # noqa: F401  (loads the BLAS library threadpoolctl looks for)
        import threadpoolctl
    except ImportError:
        return None
    counts = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    return max(counts, default=None)


# --------------------------------------------------------------- value types
VALUE_KINDS = (
    "bytes",
    "bytearray",
    "memoryview",
    "str",
    "numpy",
    "pandas.DataFrame",
    "pandas.Series",
    "arrow.Table",
    "list of arrays",
    "dict of bytes",
    "tuple of str",
)


def make_value(kind: str, nbytes: int) -> Any:
    """A fresh value of ``kind`` holding ``nbytes`` bytes of data (not all zeros: a
    system that compressed would be measured on realistic bytes)."""
    import numpy as np

    raw = np.random.default_rng(len(kind)).integers(32, 127, nbytes, dtype=np.uint8)
    if kind == "bytes":
        return raw.tobytes()
    if kind == "bytearray":
        return bytearray(raw.tobytes())
    if kind == "memoryview":
        return memoryview(raw.tobytes())
    if kind == "str":
        return raw.tobytes().decode("ascii")
    if kind == "numpy":
        return raw.view(np.float64) if nbytes % 8 == 0 else raw
    if kind in ("pandas.DataFrame", "pandas.Series", "arrow.Table"):
        import pandas as pd

        columns = 10
        data = raw.view(np.float64).reshape(columns, -1)
        frame = pd.DataFrame({f"c{i}": data[i] for i in range(columns)})
        if kind == "pandas.Series":
            return pd.Series(raw.view(np.float64))
        if kind == "arrow.Table":
            import pyarrow as pa

            return pa.Table.from_pandas(frame, preserve_index=False)
        return frame
    part = nbytes // 10
    if kind == "list of arrays":
        return [raw[i * part : (i + 1) * part].copy() for i in range(10)]
    if kind == "dict of bytes":
        return {f"k{i}": raw[i * part : (i + 1) * part].tobytes() for i in range(10)}
    if kind == "tuple of str":
        return tuple(raw[i * part : (i + 1) * part].tobytes().decode("ascii") for i in range(10))
    raise ValueError(f"no value kind {kind!r}")


def value_nbytes(value: Any) -> int:
    """The bytes of data in a value made by ``make_value``."""
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum(value_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(value_nbytes(v) for v in value.values())
    nbytes = getattr(value, "nbytes", None)
    if callable(nbytes):
        nbytes = nbytes()
    if nbytes is None and hasattr(value, "memory_usage"):
        return int(value.memory_usage(index=False).sum())
    if hasattr(value, "values") and hasattr(value, "columns"):
        return int(value.values.nbytes)
    return int(nbytes) if nbytes is not None else len(value)


def consume_value(value: Any) -> tuple[int, int]:
    """What a consumer on another worker saw: the value's bytes and its pid."""
    return value_nbytes(value), os.getpid()
