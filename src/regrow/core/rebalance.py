"""``Client.rebalance``: move results from workers holding more than their share of the
cluster's result bytes to those holding less, without recomputing anything: pure, no IO.

A move is a copy, then a drop: the recipient is told to fetch the key from the sender
(``AcquireReplicas``), and only once it reports the copy (``ReplicasAdded``) does the
sender let its own go. A result that a task running on the sender needs stays there. A
move whose copy never comes (the recipient died, the fetch failed) leaves the result
where it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regrow.core import commands as cmd
from regrow.core.records import RUNNING, discarded
from regrow.core.transitions import MEMORY, PROCESSING

if TYPE_CHECKING:
    from regrow.core.records import TaskState, WorkerRecord
    from regrow.core.scheduler_state import SchedulerState

# A worker within this fraction of the mean is balanced.
TOLERANCE = 0.1


def rebalance(
    state: SchedulerState, keys: tuple[str, ...] | None, workers: tuple[str, ...] | None
) -> None:
    """Plan and start the moves: ``keys`` (None: every result) among ``workers``
    (addresses or names; None: all running ones)."""
    pool = [
        ws
        for ws in state.workers.values()
        if ws.status == RUNNING
        and not ws.paused
        and (workers is None or ws.address in workers or ws.name in workers)
    ]
    state.rebalancing.clear()  # moves still under way from before stay copies
    if len(pool) < 2:
        return
    wanted = None if keys is None else set(keys)
    load = {ws: ws.nbytes for ws in pool}
    mean = sum(load.values()) / len(pool)
    senders = sorted(
        (ws for ws in pool if load[ws] > mean * (1 + TOLERANCE)),
        key=load.__getitem__,
        reverse=True,
    )
    orders: dict[WorkerRecord, dict[str, list[str]]] = {}
    for sender in senders:
        movable = sorted(
            (
                ts
                for ts in sender.has_what
                if ts.state == MEMORY
                and ts.key not in state.rebalancing
                and (wanted is None or ts.key in wanted)
                and not _needed_on(ts, sender)
            ),
            key=lambda ts: ts.nbytes,
            reverse=True,
        )
        for ts in movable:
            if load[sender] <= mean:
                break
            recipient = min(
                (ws for ws in pool if ws is not sender and ws not in ts.who_has),
                key=load.__getitem__,
                default=None,
            )
            if recipient is None or load[recipient] + ts.nbytes > mean * (1 + TOLERANCE) + 1:
                continue
            load[sender] -= ts.nbytes
            load[recipient] += ts.nbytes
            state.rebalancing[ts.key] = (sender.address, recipient.address)
            orders.setdefault(recipient, {})[ts.key] = [sender.address]
    for recipient, who_has in orders.items():
        state._emit(cmd.AcquireReplicas(worker=recipient.address, who_has=who_has))


def _needed_on(ts: TaskState, ws: WorkerRecord) -> bool:
    return any(d.state == PROCESSING and d.processing_on is ws for d in ts.dependents)


def copied(state: SchedulerState, ws: WorkerRecord, ts: TaskState) -> None:
    """``ws`` now holds a copy of ``ts``: if it was a move's recipient, the sender's
    copy goes (unless a task running there needs it now)."""
    move = state.rebalancing.get(ts.key)
    if move is None or move[1] != ws.address:
        return
    del state.rebalancing[ts.key]
    sender = state.workers.get(move[0])
    if sender is None or sender not in ts.who_has or len(ts.who_has) < 2:
        return
    if _needed_on(ts, sender) or state.replicas.get(ts.key, 1) >= len(ts.who_has):
        return
    ts.who_has = discarded(ts.who_has, sender)
    sender.has_what.discard(ts)
    sender.nbytes -= ts.nbytes
    state._emit(cmd.FreeKeys(worker=sender.address, keys=(ts.key,)))
