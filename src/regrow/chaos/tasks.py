"""The functions the chaos soak's graphs run on the workers.

Owns: the task functions of every graph kind (maps, tree leaves and sums, digests of
scattered data, pipeline stages, dask bag functions) and the recovery probe. They are
defined at module level so that workers unpickle them by reference (by importing this
module), and each is a pure function of its arguments: regrow may run one again after a
loss, and the serial oracles (``regrow.chaos.workloads``) call the very same ones.

Must not: import anything of regrow, keep state, or draw from an RNG: a worker imports
this module, and a task run twice must return the same value.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import time
import zlib
from typing import Any


def is_array(x: Any) -> bool:
    """``x`` is a numpy array (without importing numpy)."""
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


def transform(x: Any, salt: int, seconds: float = 0.0) -> Any:
    """A map's function: a new value of the same kind as ``x``."""
    if seconds:
        time.sleep(seconds)
    if isinstance(x, bool):
        return not x
    if isinstance(x, int):
        return x * 7 + salt
    if isinstance(x, float):
        return x * 1.5 + salt
    if isinstance(x, bytes):
        return hashlib.sha256(x + salt.to_bytes(8, "little", signed=True)).digest() + x[::-1]
    if isinstance(x, str):
        return f"{x.upper()}#{salt}"
    if is_array(x):
        return x * 2 + salt
    raise TypeError(f"transform: unexpected {type(x).__name__}")


def leaf(i: int, salt: int, kind: str, seconds: float = 0.0) -> Any:
    """A tree's leaf: an int, a float or an int64 array, from ``i`` and ``salt``."""
    if seconds:
        time.sleep(seconds)
    if kind == "int":
        return (i * 2654435761 + salt) % 1_000_003
    if kind == "float":
        return ((i * 7919 + salt) % 10_007) / 7.0
    if kind == "array":
        import numpy as np

        return np.arange(512, dtype=np.int64) * i + salt
    raise ValueError(f"leaf: unknown kind {kind!r}")


def total(*xs: Any) -> Any:
    """A tree's inner node: the sum of its inputs, left to right."""
    return functools.reduce(operator.add, xs)


def canonical(x: Any) -> bytes:
    """Bytes that say exactly what ``x`` is (type, and value to the last bit)."""
    if is_array(x):
        head = f"ndarray:{x.dtype.str}:{x.shape}:".encode()
        body: bytes = x.tobytes()
        return head + body
    if isinstance(x, bytes):
        return b"bytes:" + x
    if isinstance(x, str):
        return b"str:" + x.encode()
    if isinstance(x, float):
        return b"float:" + x.hex().encode()
    return f"{type(x).__name__}:{x!r}".encode()


def digest(x: Any, salt: int) -> tuple[str, int, str]:
    """(type, size, sha256) of a scattered value."""
    size = len(x) if isinstance(x, bytes | str) else int(getattr(x, "size", 1))
    h = hashlib.sha256(canonical(x) + str(salt).encode()).hexdigest()
    return type(x).__name__, size, h


def pair_digest(a: Any, b: Any, salt: int) -> str:
    """A task on two scattered values (maybe held by two workers)."""
    return hashlib.sha256(canonical(a) + b"|" + canonical(b) + str(salt).encode()).hexdigest()


def combine(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def probe(nonce: int) -> int:
    """The recovery probe: a fresh task that must come back."""
    return nonce + 1


# Pipeline stages (regrow.pipeline): a word count; labels by crc32 (hash() of a str
# differs between processes).
def pl_words(interface: Any, state: Any, label: Any, inp: Any) -> None:
    labels = interface.params["labels"]
    for _, line in inp:
        for word in line.split():
            interface.output(zlib.crc32(word.encode()) % labels).add(word, 1)


def pl_count_init(interface: Any, params: Any) -> dict[str, int]:
    return {}


def pl_count(interface: Any, state: Any, label: Any, inp: Any) -> None:
    for word, n in inp:
        state[word] = state.get(word, 0) + n


def pl_count_done(interface: Any, state: Any) -> None:
    for word, n in state.items():
        interface.output(0).add(word, n)


def pl_total_init(interface: Any, params: Any) -> dict[str, int]:
    return {"words": 0}


def pl_total(interface: Any, state: Any, label: Any, inp: Any) -> None:
    for word, n in inp:
        interface.output(0).add(word, n)
        state["words"] += n


def pl_total_done(interface: Any, state: Any) -> None:
    interface.output(0).add("__total__", state["words"])


# dask bag functions.
def bag_fn(x: int, salt: int) -> int:
    return (x * 31 + salt) % 97


def bag_keep(x: int) -> bool:
    return x % 3 != 0
