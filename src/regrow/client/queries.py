"""What a client asks of the cluster: its workers, where keys are, code run on workers.

Owns the coroutines behind ``Client.scheduler_info``, ``nthreads``, ``nannies``,
``wait_for_workers``, ``who_has``, ``has_what``, ``run`` and ``retire_workers``: each a
request through the session and what its reply means.

It must not keep state, nor touch futures or the client: each function gets the
``Session`` to ask through, and runs in its loop (the client's ``_sync`` puts it there).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from regrow.client.session import Session
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import HasWhatMsg, RetireWorkersMsg, SchedulerInfoMsg, WhoHasMsg


async def scheduler_info(session: Session) -> dict[str, Any]:
    reply, _ = await session.request(SchedulerInfoMsg())
    return reply.info


async def nthreads(session: Session, workers: list[str] | None = None) -> dict[str, int]:
    """``{address: threads}`` of every worker, or of ``workers`` (addresses or names;
    those the scheduler does not know are left out)."""
    info = (await scheduler_info(session))["workers"]
    if workers is None:
        return {a: w["nthreads"] for a, w in info.items()}
    by_name = {w["name"]: a for a, w in info.items()}
    chosen = [by_name.get(w, w) for w in workers]
    return {a: info[a]["nthreads"] for a in chosen if a in info}


async def nannies(session: Session) -> dict[str, str]:
    workers = (await scheduler_info(session))["workers"]
    return {w["nanny"]: a for a, w in workers.items() if w.get("nanny")}


async def wait_for_workers(session: Session, n_workers: int, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while len((await scheduler_info(session))["workers"]) < n_workers:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {n_workers} workers after {timeout} s")
        await asyncio.sleep(0.05)


async def who_has(session: Session, keys: list[str]) -> dict[str, list[str]]:
    reply, _ = await session.request(WhoHasMsg(keys=keys))
    return reply.who_has


async def has_what(session: Session, workers: list[str] | None) -> dict[str, list[str]]:
    """``{worker address: [keys it holds]}`` of every worker, or of ``workers``
    (addresses or names; one the scheduler does not know holds nothing)."""
    reply, _ = await session.request(HasWhatMsg(workers=workers))
    return reply.has_what


async def run(session: Session, frames: list[Buffer], wanted: list[str] | None) -> dict[str, Any]:
    """Run the pickled ``(function, args, kwargs)`` once on each worker (of ``wanted``,
    by address or name): ``{address: result}``; raises the first exception."""
    info = (await scheduler_info(session))["workers"]
    if wanted is None:
        targets = list(info)
    else:
        by_name = {w["name"]: a for a, w in info.items()}
        targets = [by_name.get(w, w) for w in wanted]
    results = await session.run(frames, targets)
    out: dict[str, Any] = {}
    for worker, (ok, value) in results.items():
        if not ok:
            raise value
        out[worker] = value
    return out


async def retire_workers(session: Session, workers: list[str]) -> dict[str, dict[str, Any]]:
    """Retire ``workers`` (addresses or names) gracefully: ``{address: info}`` of those
    that went, their info as ``scheduler_info`` gave it just before. The scheduler
    answers once each named worker has gone or been kept (one that would take the last
    copy of a result with it stays); unknown names are left out."""
    before = (await scheduler_info(session))["workers"]
    reply, _ = await session.request(RetireWorkersMsg(workers=workers))
    # A worker that registered after the snapshot: only its address is known.
    return {a: before.get(a) or {"address": a} for a in reply.workers}
