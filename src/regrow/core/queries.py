"""Read-only views of the scheduler core for the shell: who holds what, a snapshot.

Must not: change anything (a query never moves a task) or do IO.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from regrow.core.client_requests import FIRE_AND_FORGET
from regrow.core.coordination import HOLDER

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState


def key_group(key: str) -> str:
    """The task group of a key, its name without the token, as dask's ``key_split``
    groups them: ``'inc-3fa8...'`` -> ``'inc'``, ``"('sum-ab12...', 3)"`` -> ``'sum'``."""
    if key[:1] != "(":
        # The common form, NAME-TOKEN with one dash: no list of words to build.
        head, sep, tail = key.rpartition("-")
        if sep and "-" not in head and head and _is_token(tail) and not _is_token(head):
            return head
    text = key
    if text.startswith("("):
        text = text[1:].split(",", 1)[0].strip("'\" ")
    words = [w for w in text.split("-") if w]
    kept = [w for w in words if not _is_token(w)]
    return "-".join(kept) or text or "task"


_HEX = "0123456789abcdef"


def _is_token(word: str) -> bool:
    # str.strip runs in C: this is called once per task while a dashboard watches.
    return word.isdigit() or (len(word) >= 8 and not word.strip(_HEX))


def task_groups(state: SchedulerState) -> dict[str, dict[str, int]]:
    """``{group: {state: tasks}}`` over every task the scheduler knows."""
    out: dict[str, dict[str, int]] = {}
    for key, ts in state.tasks.items():
        states = out.setdefault(key_group(key), {})
        states[ts.state] = states.get(ts.state, 0) + 1
    return out


def who_has(state: SchedulerState, keys: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in keys:
        ts = state.tasks.get(key)
        out[key] = sorted(ws.address for ws in ts.who_has) if ts is not None else []
    return out


def client_count(state: SchedulerState) -> int:
    """The clients the scheduler knows, its own pseudo-clients (fire-and-forget, the
    coordination primitives' holder) aside."""
    return len(state.clients) - (FIRE_AND_FORGET in state.clients) - (HOLDER in state.clients)


def has_what(state: SchedulerState, workers: Iterable[str] | None) -> dict[str, list[str]]:
    """``{worker address: the keys it holds, sorted}`` for every worker, or for
    ``workers`` (addresses or names; one the scheduler does not know holds nothing)."""
    if workers is None:
        return {a: sorted(ts.key for ts in ws.has_what) for a, ws in state.workers.items()}
    by_name = {ws.name: ws for ws in state.workers.values()}
    out: dict[str, list[str]] = {}
    for wanted in workers:
        ws = state.workers.get(wanted) or by_name.get(wanted)
        if ws is None:
            out[wanted] = []
        else:
            out[ws.address] = sorted(ts.key for ts in ws.has_what)
    return out


_FIELDS = frozenset(
    (
        "address",
        "name",
        "pid",
        "nthreads",
        "memory_limit",
        "memory",
        "nkeys",
        "processing",
        "nanny",
        "paused",
        "status",
        "id",
        "silence",
    )
)


_INT64_MAX = 2**63 - 1


def info(state: SchedulerState) -> dict[str, Any]:
    """A snapshot for clients and dashboards (plain data, safe to send)."""
    states: dict[str, int] = {}
    for ts in state.tasks.values():
        states[ts.state] = states.get(ts.state, 0) + 1
    return {
        "workers": {
            ws.address: {
                "address": ws.address,
                "name": ws.name,
                "pid": ws.pid,
                "nthreads": ws.nthreads,
                "memory_limit": ws.memory_limit,
                # A sum of sizes workers reported: each fits in 64 bits, their sum need
                # not, and a hostile worker reporting one key at different sizes can
                # even drive it below 0; the snapshot must stay sendable.
                "memory": max(0, min(ws.nbytes, _INT64_MAX)),
                "nkeys": len(ws.has_what),
                "processing": len(ws.processing),
                "nanny": ws.nanny,
                "paused": ws.paused,
                "status": ws.status,
                "id": ws.id,
                # Seconds since its last message, by the latest event's clock.
                "silence": max(0.0, state._now - ws.last_seen),
                # What its heartbeats said (rss, managed, spilled, executing...).
                **{k: v for k, v in ws.metrics.items() if k not in _FIELDS},
            }
            for ws in state.workers.values()
        },
        "tasks": states,
        "clients": client_count(state),
        "counts": dict(state.counts),
        "queued": state._queued_count,
        "rebalancing": len(state.rebalancing),
        # Requests to locks, queues, events... waiting to be answered.
        "coordination_waiting": len(state.coordination.waiting),
        "suspects": [ts.key for ts in state.suspects],
        "retiring": sorted(ws.address for r in state.retirements.values() for ws in r.pending),
    }
