"""The cluster's events: what happened to workers and tasks, as plain records.

Owns: the catalogue of event actions (``ACTIONS``: each action's topic and fields), and
``record``, which keeps an event in the core's bounded log (``SchedulerState.events``,
read by the dashboard's timeline) and sends it to every client (``Client.get_events``,
``Client.subscribe_topic``). Every event is a dict with ``seq`` (1, 2, ... in this
scheduler process), ``time`` (the shell's clock when it happened, monotonic seconds; the
shells turn it into wall time), ``topic``, ``action``, ``text`` (one line for people)
and the fields its action lists, each a str, int, float, bool, list or dict of those.
docs/events.md documents each one.

Must not: read a clock (``time`` is the stimulus's ``now``), or record anything per
task in the normal course (events are rare: joins, deaths, recoveries, blame); many
keys go in one event as a count, a few sample keys and a count per task group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from regrow.core import commands as cmd
from regrow.core import events as ev

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState

# How many keys an event names at most (the rest are counted).
SAMPLE_KEYS = 20

# action -> (topic, its fields besides seq, time, topic, action and text).
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "worker-added": ("workers", ("worker", "name", "nthreads", "memory_limit")),
    "worker-lost": (
        "workers",
        ("worker", "name", "reason", "rescheduled", "recomputing", "out_of_memory"),
    ),
    "worker-retiring": ("workers", ("worker", "name")),
    "worker-retired": ("workers", ("worker", "name", "reason", "rescheduled")),
    "worker-not-retired": ("workers", ("worker", "name", "why")),
    "nanny-replaced": ("workers", ("nanny", "name", "replaces")),
    "tasks-recomputed": ("recovery", ("cause", "worker", "count", "groups", "keys")),
    "task-suspected": ("recovery", ("key", "worker", "reason", "deaths", "allowed")),
    "task-isolated": ("recovery", ("key", "worker")),
    "task-blamed": ("recovery", ("key", "workers", "error")),
    "scheduler-recovered": ("recovery", ("tasks", "recomputed")),
    "impure-recomputed": ("warnings", ("key",)),
    # Logged by a client's pipeline runner (Client.log_event).
    "pipeline-restarted": ("pipeline", ("job", "stage", "task", "why", "consumers")),
}

# Fields every event has, which a logged event cannot set.
_OWN = ("seq", "time", "topic", "client")


def record(state: SchedulerState, action: str, text: str, **fields: Any) -> dict[str, Any]:
    """Keep the event ``action`` (one of ``ACTIONS``) and tell every client. Returns the
    event: a caller may fill in its counts until the core's ``handle`` returns (the
    shell reads it only then), so a cause is recorded before its consequences."""
    topic, names = ACTIONS[action]
    if set(fields) != set(names):
        raise ValueError(f"event {action!r} takes {sorted(names)}, got {sorted(fields)}")
    return _keep(state, topic, action, text, fields)


def _keep(
    state: SchedulerState, topic: str, action: str, text: str, fields: dict[str, Any]
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "seq": next(state._event_seq),
        "time": state._now,
        "topic": topic,
        "action": action,
        "text": text,
        **fields,
    }
    state.events.append(event)
    for client in state.clients.values():
        state._emit(cmd.ReportEvent(client=client.id, topic=topic, data=event))
    return event


def logged(state: SchedulerState, event: ev.EventLogged) -> None:
    """A client's event (``Client.log_event``): kept and sent like the core's own. One
    whose action is in ``ACTIONS`` must have that action's topic and fields; any other
    is the user's own, with any fields (``text`` defaults to its action)."""
    data = {k: v for k, v in event.data.items() if k not in _OWN}
    action = str(data.pop("action", "") or "")
    text = str(data.pop("text", "") or action or event.topic)
    known = ACTIONS.get(action)
    if known is not None and (known[0] != event.topic or set(data) != set(known[1])):
        state._emit(
            cmd.Log(
                level="warning",
                message=f"client {event.client} logged a malformed {action!r} event; ignored",
            )
        )
        return
    _keep(state, event.topic, action, text, {"client": event.client, **data})


def sample(keys: list[str]) -> list[str]:
    return keys[:SAMPLE_KEYS]


def by_group(keys: list[str]) -> dict[str, int]:
    from regrow.core.queries import key_group

    out: dict[str, int] = {}
    for key in keys:
        group = key_group(key)
        out[group] = out.get(group, 0) + 1
    return out
