"""Stage functions the pipeline tests run on workers (imported there by reference),
the serial computations their results are checked against, and file-based gates.

Each stage function reads what it should do from ``interface.params`` (a dict):

- ``"log"``: a directory; every ``process`` call writes one event file there
  (stage, keys, labels, pid, start and end wall times);
- ``"sleep"``: seconds each ``process`` call sleeps;
- ``"gate"``: ``(gate, started, match)``: the call whose batch holds the record key
  ``match`` (stage 0), or the ``done`` of the task of label ``match`` (stage 1),
  writes its pid to ``started`` and waits until the file ``gate`` exists;
- ``"fail"``: ``(marker, match)``: the call whose batch holds key ``match`` raises
  StageError; with a marker path, only while the marker does not exist (the first
  attempt creates it), without one every time.
"""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from regrow.pipeline import Interface
from regrow.testing import wait_until

GATE_TIMEOUT = 60.0
LABELS = 3


class StageError(Exception):
    """A user exception raised by a stage (pickles fine)."""


# ------------------------------------------------------------------- helpers
def write_atomic(path: str | Path, text: str) -> None:
    """Write a small file so that a reader never sees it half written."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _params(interface: Interface) -> dict[str, Any]:
    params: dict[str, Any] = interface.params or {}
    return params


def _log(params: dict[str, Any], event: dict[str, Any]) -> None:
    directory = params.get("log")
    if directory:
        event["pid"] = os.getpid()
        write_atomic(os.path.join(directory, f"{uuid.uuid4().hex}.json"), json.dumps(event))


def read_events(directory: str | Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in Path(directory).glob("*.json")]


def _maybe_gate(params: dict[str, Any], present: Iterable[Any]) -> None:
    gate = params.get("gate")
    if gate is None:
        return
    path, started, match = gate
    if match in present:
        write_atomic(started, str(os.getpid()))
        wait_until(lambda: os.path.exists(path), timeout=GATE_TIMEOUT, what=f"gate {path}")


def _maybe_fail(params: dict[str, Any], keys: Iterable[Any]) -> None:
    fail = params.get("fail")
    if fail is None:
        return
    marker, match = fail
    if match not in keys:
        return
    if marker is None:
        raise StageError(f"record {match} is poison")
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return  # a later attempt: succeed
    raise StageError(f"record {match} fails on the first attempt")


# ------------------------------------------------- 3-stage numeric pipeline
# Records in: (k, v) ints. Stage "square" (split) writes (("rec", k), v * v) under
# label v % LABELS; "shift" (group_label) adds the label to each value and, when done,
# writes (("count", label), records seen); "final" (group_all) passes records on and,
# when done, writes (("total", 0), sum of the "rec" values).


def square(interface: Interface, state: Any, label: Any, inp: Iterable[Any]) -> None:
    params = _params(interface)
    start = time.time()
    records = list(inp)
    keys = [k for k, _ in records]
    _maybe_gate(params, keys)
    _maybe_fail(params, keys)
    if params.get("sleep"):
        time.sleep(params["sleep"])
    for k, v in records:
        interface.output(v % LABELS).add(("rec", k), v * v)
    _log(params, {"stage": "square", "keys": keys, "start": start, "end": time.time()})


def shift_init(interface: Interface, params: Any) -> dict[str, Any]:
    return {"n": 0, "label": None}


def shift(interface: Interface, state: Any, label: Any, inp: Iterable[Any]) -> None:
    params = _params(interface)
    start = time.time()
    state["label"] = label
    n = 0
    for key, x in inp:
        interface.output(0).add(key, x + label)
        n += 1
    state["n"] += n
    _log(params, {"stage": "shift", "label": label, "n": n, "start": start, "end": time.time()})


def shift_done(interface: Interface, state: Any) -> None:
    params = _params(interface)
    _maybe_gate(params, [state["label"]])
    interface.output(0).add(("count", state["label"]), state["n"])


def final_init(interface: Interface, params: Any) -> dict[str, int]:
    return {"total": 0}


def final(interface: Interface, state: Any, label: Any, inp: Iterable[Any]) -> None:
    for key, x in inp:
        interface.output(0).add(key, x)
        if key[0] == "rec":
            state["total"] += x


def final_done(interface: Interface, state: Any) -> None:
    interface.output(0).add(("total", 0), state["total"])


def numeric_inputs(n: int) -> list[tuple[int, int]]:
    return [(k, (k * 37) % 101) for k in range(n)]


def numeric_expected(records: Iterable[tuple[int, int]]) -> list[Any]:
    """What the 3-stage pipeline must produce, computed serially (sorted)."""
    out: list[Any] = []
    counts: collections.Counter[int] = collections.Counter()
    total = 0
    for k, v in records:
        label = v % LABELS
        x = v * v + label
        out.append((("rec", k), x))
        counts[label] += 1
        total += x
    out += [(("count", label), n) for label, n in counts.items()]
    out.append((("total", 0), total))
    return sorted(out)


# ------------------------------------------------------- groupings pipeline
# Stage 0 ("spread", split) writes (k, v) under label v % LABELS. Stage 1 ("tag") passes
# records on as (("rec", k), v + 1) and, when done, writes (("task", smallest key
# seen), (sorted labels seen, records seen)): one such record per stage-1 task.


def spread(interface: Interface, state: Any, label: Any, inp: Iterable[Any]) -> None:
    params = _params(interface)
    if params.get("sleep"):
        time.sleep(params["sleep"])
    for k, v in inp:
        interface.output(v % LABELS).add(k, v)


def tag_init(interface: Interface, params: Any) -> dict[str, Any]:
    return {"labels": set(), "n": 0, "first": None}


def tag(interface: Interface, state: Any, label: Any, inp: Iterable[Any]) -> None:
    state["labels"].add(label)
    for k, v in inp:
        interface.output(0).add(("rec", k), v + 1)
        state["n"] += 1
        state["first"] = k if state["first"] is None else min(state["first"], k)


def tag_done(interface: Interface, state: Any) -> None:
    interface.output(0).add(("task", state["first"]), (sorted(state["labels"]), state["n"]))


# ----------------------------------------------------------------- plain
def identity(interface: Interface, state: Any, label: Any, inp: Iterable[Any]) -> None:
    for record in inp:
        interface.output(0).add(*record)


def line_lengths(interface: Interface, state: Any, label: Any, inp: Iterable[str]) -> None:
    for line in inp:
        interface.output(len(line) % LABELS).add(line, len(line))
