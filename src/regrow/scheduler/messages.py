"""Messages to the scheduler, checked and turned into the core's events.

Owns: reading each message a worker or client sends (a missing or mistyped field is a
ProtocolError naming it), and keeping one copy of identical function frames.
Must not: keep state about peers, or act on what the messages say.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from regrow.core import events as ev
from regrow.errors import ProtocolError
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Msg, get, get_str_list


def worker_event(
    worker: str, msg: Msg, frames: list[Buffer], now: float, sid: Callable[[str], str]
) -> ev.Event:
    """The core's event for a message from ``worker``; ProtocolError if it is malformed."""
    op = msg["op"]
    if op == "task-finished":
        return ev.TaskFinished(
            worker=worker,
            key=get(msg, "key", str),
            run_id=get(msg, "run", int),
            nbytes=get(msg, "nbytes", int),
            type_name=sys.intern(str(msg.get("type", ""))),
            duration=float(msg.get("duration", 0.0)),
            inline=_inline(msg),
            stimulus_id=sid("task-finished"),
            now=now,
        )
    if op == "task-erred":
        if len(frames) != 2:
            raise ProtocolError("task-erred needs 2 frames (exception, traceback)")
        return ev.TaskErred(
            worker=worker,
            key=get(msg, "key", str),
            run_id=get(msg, "run", int),
            exception=bytes(frames[0]),
            traceback=bytes(frames[1]),
            text=str(msg.get("text", "")),
            duration=float(msg.get("duration", 0.0)),
            stimulus_id=sid("task-erred"),
            now=now,
        )
    if op == "started":
        return ev.TasksStarted(
            worker=worker,
            keys=tuple(get_str_list(msg, "keys")),
            stimulus_id=sid("started"),
            now=now,
        )
    if op == "steal-response":
        return ev.StealAnswered(
            worker=worker,
            key=get(msg, "key", str),
            stolen=bool(msg.get("stolen")),
            stimulus_id=sid("steal"),
            now=now,
        )
    if op == "add-replicas":
        return ev.ReplicasAdded(
            worker=worker,
            keys=tuple(get_str_list(msg, "keys")),
            stimulus_id=sid("replicas"),
            now=now,
        )
    if op == "dependency-missing":
        return ev.DependencyMissing(
            worker=worker,
            key=get(msg, "key", str),
            dependency=get(msg, "dependency", str),
            holders=tuple(get_str_list(msg, "holders")),
            stimulus_id=sid("missing"),
            now=now,
        )
    if op == "heartbeat":
        return ev.HeartbeatReceived(
            worker=worker,
            metrics={
                "rss": int(msg.get("memory", 0)),
                "managed": int(msg.get("managed", 0)),
                "spilled": int(msg.get("spilled", 0)),
                # Tasks handed to its threads: running, or queued for them.
                "executing": int(msg.get("executing", 0)),
            },
            stimulus_id="heartbeat",
            now=now,
        )
    if op == "paused":
        return ev.WorkerPaused(
            worker=worker,
            paused=bool(msg.get("paused")),
            stimulus_id=sid("paused"),
            now=now,
        )
    if op == "retiring":
        return ev.WorkerRetiring(
            worker=worker,
            reason=str(msg.get("reason") or "retiring"),
            stimulus_id=sid("retiring"),
            now=now,
        )
    raise ProtocolError(f"unknown op {op!r}")


def _inline(msg: Msg) -> bytes | None:
    """A task-finished message's small result, if it carries one."""
    inline = msg.get("inline")
    if inline is None or isinstance(inline, bytes):
        return inline
    raise ProtocolError(f"'inline' must be bytes, got {type(inline).__name__}")


def held_keys(msg: Msg) -> tuple[tuple[str, int], ...]:
    out: list[tuple[str, int]] = []
    for item in msg.get("keys") or ():
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise ProtocolError("register-worker: 'keys' must hold [key, nbytes] pairs")
        out.append((item[0], int(item[1])))
    return tuple(out)


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
    msg: Msg, frames: list[Buffer], interned: dict[bytes, bytes] | None = None
) -> list[ev.TaskSpec]:
    specs: list[ev.TaskSpec] = []
    pos = 0
    for t in get(msg, "tasks", list):
        if not isinstance(t, dict):
            raise ProtocolError("submit: each task must be a dict")
        nf = get(t, "nf", int)
        fnf = get(t, "fnf", int)
        if nf < 1 or not 0 < fnf < nf or pos + nf > len(frames):
            raise ProtocolError(f"submit: task {t.get('k')!r} has inconsistent frame counts")
        workers = t.get("w")
        if workers is not None and not (
            isinstance(workers, list) and all(isinstance(w, str) for w in workers)
        ):
            raise ProtocolError("submit: 'w' must be a list of worker addresses or names")
        run_frames = frames[pos : pos + nf]
        if interned is not None:
            for i in range(fnf):
                run_frames[i] = _intern(run_frames[i], interned)
        specs.append(
            ev.TaskSpec(
                key=get(t, "k", str),
                dependencies=tuple(get_str_list(t, "d")),
                run_spec=(fnf, run_frames),
                priority=int(t.get("p", 0)),
                retries=int(t.get("r", 0)),
                workers=tuple(workers) if workers else None,
                pure=bool(t.get("pure", True)),
            )
        )
        pos += nf
    if pos != len(frames):
        raise ProtocolError("submit: frames left over")
    return specs
