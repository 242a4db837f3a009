"""The scheduler's task states and the table of legal moves between them.

Owns: the state names, ``TRANSITIONS`` (every legal ``(start, finish)`` pair, with why it
happens), and ``InvalidTransition``. ``SchedulerState._set_state`` checks every move
against the table and raises, with the key's story, on any other pair.
Must not: move anything itself (that is ``scheduler_state``).

The table was derived from what the core does and is checked both ways by
``tests/core/test_transitions.py``: a move outside it raises, and every pair in it is
reached by some test. Two things are deliberately outside it: a task is *created*
released (or erred, when the journal restores one that had erred), and a restart
(``RestartRequested``) drops every task at once, from any state, without transitions.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

RELEASED = "released"
WAITING = "waiting"
QUEUED = "queued"
PROCESSING = "processing"
MEMORY = "memory"
ERRED = "erred"
FORGOTTEN = "forgotten"

STATES = (RELEASED, WAITING, QUEUED, PROCESSING, MEMORY, ERRED, FORGOTTEN)

TRANSITIONS: dict[tuple[str, str], str] = {
    (RELEASED, WAITING): "needed (wanted, or the input of a needed task): its inputs are awaited",
    (RELEASED, MEMORY): "scattered by a client, or offered by a worker that holds it",
    (RELEASED, ERRED): "cannot run: an input is unknown or erred, it lies on a dependency "
    "cycle, lost scattered data, or a worker death made it a KilledWorker",
    (RELEASED, FORGOTTEN): "no client wants it and no dependent remains",
    (WAITING, QUEUED): "inputs in memory, but no worker has a free slot (or it is a suspect)",
    (WAITING, PROCESSING): "inputs in memory: sent to a worker",
    (WAITING, ERRED): "an input erred",
    (WAITING, RELEASED): "nobody needs it any more",
    (QUEUED, PROCESSING): "a slot freed (or an empty worker takes the suspect alone)",
    (QUEUED, WAITING): "an input it was about to read was lost",
    (QUEUED, RELEASED): "nobody needs it any more",
    (PROCESSING, MEMORY): "its worker finished it",
    (PROCESSING, WAITING): "an input was lost, or its worker could not fetch one",
    (PROCESSING, RELEASED): "its worker left, it was stolen or released, or it erred with "
    "retries left",
    (PROCESSING, ERRED): "it raised (no retries left), or an input erred",
    (MEMORY, RELEASED): "nobody needs the result any more, or its last copy was lost",
    (ERRED, RELEASED): "cancelled: the error is dropped with the future",
    (ERRED, FORGOTTEN): "no client wants it and no dependent remains",
}


class InvalidTransition(RuntimeError):
    """The core was asked to do something its rules forbid; carries the key's story."""


def diagram() -> str:
    """The table as text, one line per start state (for docs and error messages)."""
    lines = []
    for start in STATES:
        finishes = [f for s, f in TRANSITIONS if s == start]
        if finishes:
            lines.append(f"{start:>10} -> {', '.join(finishes)}")
    return "\n".join(lines)


def moves_since(
    log: deque[tuple[str, str, str, str]], moves: int, seen: int
) -> list[tuple[str, str, str, str]] | None:
    """The entries of a core's transition ``log`` made since a reader had seen ``seen``
    of its ``moves`` (each core counts them), oldest first; None if more were made than
    the log still holds (the reader must count afresh)."""
    n = moves - seen
    if n > len(log):
        return None
    batch = list(itertools.islice(reversed(log), n)) if n > 0 else []
    batch.reverse()
    return batch


def tell_plugins(
    plugins: Iterable[Any], log: deque[tuple[str, str, str, str]], moves: int, seen: int
) -> list[BaseException]:
    """Each plugin's ``transition(key, start, finish, stimulus_id=...)`` for the moves a
    core made since ``seen`` (those its log still holds, if it made more): how scheduler
    and worker plugins hear of tasks. Returns what plugins raised (one each, at most),
    for the caller to log; a plugin that raises hears of no more moves this time."""
    batch = moves_since(log, moves, max(seen, moves - len(log))) or []
    errors: list[BaseException] = []
    if not batch:
        return errors
    for plugin in plugins:
        transition = getattr(plugin, "transition", None)
        if transition is None:
            continue
        try:
            for key, start, finish, stimulus in batch:
                transition(key, start, finish, stimulus_id=stimulus)
        except Exception as exc:
            errors.append(exc)
    return errors
