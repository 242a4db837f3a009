"""Messages to the scheduler turned into the core's events.

Owns: mapping each message a worker or client sends (already checked against its type
by ``protocol.messages``) to the core's event, the checks types cannot express (frame
counts; a ProtocolError names what is wrong), and keeping one copy of identical
function frames.
Must not: keep state about peers, or act on what the messages say.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from regrow.core import events as ev
from regrow.errors import ProtocolError
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import (
    AddReplicasMsg,
    DependencyMissingMsg,
    HeartbeatMsg,
    LongRunningMsg,
    Message,
    PausedMsg,
    RetiringMsg,
    StartedMsg,
    StealResponseMsg,
    SubmitMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    op_of,
)


def worker_event(
    worker: str, msg: Message, frames: list[Buffer], now: float, sid: Callable[[str], str]
) -> ev.Event:
    """The core's event for a message from ``worker``; ProtocolError for a message no
    worker sends, or frames that do not fit it."""
    match msg:
        case TaskFinishedMsg():
            return ev.TaskFinished(
                worker=worker,
                key=msg.key,
                run_id=msg.run_id,
                nbytes=msg.nbytes,
                type_name=sys.intern(msg.type_name),
                duration=msg.duration,
                inline=msg.inline,
                stimulus_id=sid("task-finished"),
                now=now,
            )
        case StartedMsg():
            return ev.TasksStarted(
                worker=worker, keys=tuple(msg.keys), stimulus_id=sid("started"), now=now
            )
        case LongRunningMsg():
            return ev.TaskSeceded(
                worker=worker,
                key=msg.key,
                run_id=msg.run_id,
                stimulus_id=sid("long-running"),
                now=now,
            )
        case TaskErredMsg():
            if len(frames) != 2:
                raise ProtocolError("task-erred needs 2 frames (exception, traceback)")
            return ev.TaskErred(
                worker=worker,
                key=msg.key,
                run_id=msg.run_id,
                exception=bytes(frames[0]),
                traceback=bytes(frames[1]),
                text=msg.text,
                duration=msg.duration,
                stimulus_id=sid("task-erred"),
                now=now,
            )
        case HeartbeatMsg():
            return ev.HeartbeatReceived(
                worker=worker,
                metrics={
                    "rss": msg.memory,
                    "managed": msg.managed,
                    "spilled": msg.spilled,
                    "in_flight": msg.in_flight,
                    # Tasks handed to its threads: running, or queued for them.
                    "executing": msg.executing,
                    "cpu": msg.cpu,
                    "sent": msg.sent,
                    "received": msg.received,
                },
                stimulus_id="heartbeat",
                now=now,
            )
        case StealResponseMsg():
            return ev.StealAnswered(
                worker=worker, key=msg.key, stolen=msg.stolen, stimulus_id=sid("steal"), now=now
            )
        case AddReplicasMsg():
            return ev.ReplicasAdded(
                worker=worker, keys=tuple(msg.keys), stimulus_id=sid("replicas"), now=now
            )
        case DependencyMissingMsg():
            return ev.DependencyMissing(
                worker=worker,
                key=msg.key,
                dependency=msg.dependency,
                holders=tuple(msg.holders),
                stimulus_id=sid("missing"),
                now=now,
            )
        case PausedMsg():
            return ev.WorkerPaused(
                worker=worker, paused=msg.paused, stimulus_id=sid("paused"), now=now
            )
        case RetiringMsg():
            return ev.WorkerRetiring(
                worker=worker,
                reason=msg.reason or "retiring",
                stimulus_id=sid("retiring"),
                now=now,
            )
    raise ProtocolError(f"a worker does not send {op_of(msg)!r}")


# Identical function frames (every task of a map carries the same pickled function) are
# kept once: a bounded table from the bytes to one copy of them.
_INTERN_MAX_BYTES = 64 * 1024
_INTERN_MAX_ENTRIES = 1024


def _intern(frame: Buffer, table: dict[bytes, bytes]) -> Buffer:
    if type(frame) is not bytes or len(frame) > _INTERN_MAX_BYTES:
        return frame
    kept = table.get(frame)
    if kept is None:
        if len(table) >= _INTERN_MAX_ENTRIES:
            table.clear()
        table[frame] = kept = frame
    return kept


def task_specs(
    msg: SubmitMsg, frames: list[Buffer], interned: dict[bytes, bytes] | None = None
) -> list[ev.TaskSpec]:
    """A submission's tasks, each with its frames; ProtocolError if the frame counts do
    not fit the frames that came."""
    specs: list[ev.TaskSpec] = []
    pos = 0
    for t in msg.tasks:
        nf = t.frames
        fnf = t.fn_frames
        if not 0 < fnf < nf or pos + nf > len(frames):
            raise ProtocolError(f"submit: task {t.key!r} has inconsistent frame counts")
        run_frames = frames[pos : pos + nf]
        if interned is not None:
            for i in range(fnf):
                run_frames[i] = _intern(run_frames[i], interned)
        specs.append(
            ev.TaskSpec(
                key=t.key,
                dependencies=tuple(t.dependencies),
                run_spec=(fnf, run_frames),
                priority=t.priority,
                retries=t.retries,
                workers=tuple(t.workers) if t.workers else None,
                pure=t.pure,
                resources=dict(t.resources) if t.resources else None,
            )
        )
        pos += nf
    if pos != len(frames):
        raise ProtocolError("submit: frames left over")
    return specs
