"""The scheduler's side of its journal: what to write, when, and what to rebuild from it.

Owns: recording client requests before the core acts on them, noting which tasks moved
(the core's ``on_transition`` hook) and writing their final states after each batch of
events, the writer loop (one transaction per ``journal_interval``), the submission
acknowledgements held until the transaction that holds them, and turning a loaded
journal back into the core's ``StateRestored`` event.
Must not: decide anything about tasks (the core does), or talk to peers other than
sending the acknowledgements it holds. The file format is ``scheduler.journal``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import cast

from regrow.core import events as ev
from regrow.core.client_requests import FIRE_AND_FORGET, new_specs
from regrow.core.coordination import ANSWERS_KEPT, Coordination
from regrow.core.scheduler_state import ERRED, MEMORY, RELEASED, TaskState
from regrow.protocol.comm import Connection
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Message
from regrow.scheduler.journal import Journal, Snapshot

logger = logging.getLogger("regrow.scheduler")


class JournalKeeper:
    def __init__(self, journal: Journal, interval: float) -> None:
        self.journal = journal
        self.interval = interval
        self._dirty: dict[str, TaskState] = {}
        self._acks: list[tuple[Connection, Message]] = []
        # Replies to send once the transaction holding what they confirm is committed.
        self._later: list[Callable[[], None]] = []
        self._workers: frozenset[str] = frozenset()
        self._stopping = False
        # Keys the journal has the scheduler's fire-and-forget pseudo-client want.
        self._fired: set[str] = set()
        # Keys that left erred since the last write.
        self._unerred: set[str] = set()
        # For /metrics: when the oldest change not yet committed came (monotonic), how
        # many transactions were committed, and how long the last one took.
        self.pending_since: float | None = None
        self.writes = 0
        self.last_write = 0.0

    # ----------------------------------------------------------- recording
    def record(self, event: ev.Event, tasks: dict[str, TaskState]) -> None:
        """Record what a client asked for, before the core acts on it."""
        journal = self.journal
        match event:
            case ev.TasksSubmitted():
                for spec in new_specs(event, tasks).values():
                    journal.task_added(
                        spec.key,
                        list(spec.dependencies),
                        cast(tuple[int, list[Buffer]], spec.run_spec),
                        spec.priority,
                        spec.retries,
                        list(spec.workers) if spec.workers else None,
                        spec.pure,
                    )
                for key in event.wanted:
                    journal.want(event.client, key, True)
            case ev.DataScattered():
                for item in event.keys:
                    if item.key not in tasks:
                        journal.task_added(item.key, [], None, 0, 0, None, True, event.replicas)
                    journal.want(event.client, item.key, True)
            case ev.KeysDesired() | ev.RetryRequested():
                for key in event.keys:
                    journal.want(event.client, key, True)
            case ev.KeysFiredAndForgotten():
                # As the core does: only what is not done yet is wanted (fired).
                for key in event.keys:
                    ts = tasks.get(key)
                    if ts is not None and ts.state not in (MEMORY, ERRED):
                        journal.want(FIRE_AND_FORGET, key, True)
                        self._fired.add(key)
            case ev.KeysReleased() | ev.KeysCancelled():
                for key in event.keys:
                    journal.want(event.client, key, False)
            case ev.ClientDisconnected():
                journal.client_gone(event.client)
            case ev.RestartRequested():
                journal.clear()
                self._fired.clear()
            case _:
                return
        if self.pending_since is None and journal.dirty:
            self.pending_since = time.monotonic()

    def transition(self, ts: TaskState, start: str, finish: str) -> None:
        """The core's ``on_transition`` hook: note that ``ts`` moved."""
        self._dirty[ts.key] = ts
        if start == ERRED:
            # Retried (or cancelled): its error must go, even if it is computing by the
            # time it is written (states between released and memory are not written).
            self._unerred.add(ts.key)
        if self.pending_since is None:
            self.pending_since = time.monotonic()

    def figures(self) -> tuple[float, int, float]:
        """(lag s, transactions committed, last commit's duration s), for /metrics."""
        since = self.pending_since
        lag = time.monotonic() - since if since is not None else 0.0
        return lag, self.writes, self.last_write

    def write_states(self, tasks: dict[str, TaskState], workers: Collection[str] | None) -> None:
        """Write the final state of every task that moved during the last events, and
        the registered workers if they changed: a restarted scheduler waits for every
        one of them (any may hold a copy of a result), and for no worker that was gone.
        ``workers`` None (recovering: those not back yet are still awaited) leaves them."""
        journal = self.journal
        if self._stopping:
            return
        if workers is not None and (
            len(workers) != len(self._workers) or not self._workers.issuperset(workers)
        ):
            self._workers = frozenset(workers)
            journal.workers_now(sorted(self._workers))
        if not self._dirty:
            return
        if self._fired:
            self._write_fired_done(tasks)
        for key, ts in self._dirty.items():
            if tasks.get(key) is not ts:
                journal.task_forgotten(key)
            elif ts.state == MEMORY:
                location = next(iter(ts.who_has)).address if ts.who_has else ""
                journal.task_state(key, MEMORY, ts.nbytes, ts.type_name, location)
            elif ts.state == ERRED and ts.error is not None:
                e = ts.error
                journal.task_state(
                    key,
                    ERRED,
                    error={
                        "blame": e.blame,
                        "text": e.text,
                        "exception": e.exception,
                        "traceback": e.traceback,
                        "kind": e.kind,
                        "workers": list(e.workers),
                    },
                )
            elif ts.state == RELEASED or key in self._unerred:
                journal.task_state(key, RELEASED)
        self._dirty.clear()
        self._unerred.clear()

    def write_coordination(self, coordination: Coordination) -> None:
        """Write the coordination primitives that changed, the answers to remember and
        the wants that holding and reading values made."""
        if self._stopping:
            return
        journal = self.journal
        if coordination.changed:
            for kind, name in coordination.changed:
                journal.coordination_row(kind, name, coordination.row(kind, name))
            coordination.changed.clear()
        if coordination.answers:
            for a in coordination.answers:
                journal.answer_kept(a.client, a.request, a.ok, a.payload, a.number, a.error)
            journal.answers_trimmed(ANSWERS_KEPT)
            coordination.answers.clear()
        if coordination.wants:
            for client, key, wanted in coordination.wants:
                journal.want(client, key, wanted)
            coordination.wants.clear()
        if self.pending_since is None and journal.dirty:
            self.pending_since = time.monotonic()

    def _write_fired_done(self, tasks: dict[str, TaskState]) -> None:
        """The core let go of fired-and-forgotten keys once done, with no client asking:
        write that of those that moved, or a restart would compute them again."""
        for key, ts in self._dirty.items():
            if key not in self._fired:
                continue
            if tasks.get(key) is not ts:
                self._fired.discard(key)  # forgotten: its wants go with it
            elif all(c.id != FIRE_AND_FORGET for c in ts.who_wants):
                self.journal.want(FIRE_AND_FORGET, key, False)
                self._fired.discard(key)

    def forget_pending(self) -> None:
        """Stopping: what happened up to now is kept; the stop is not a release, and
        the connections it closes are no workers lost (the next scheduler waits for
        them, and they hold their results: a journaled scheduler's stop keeps them)."""
        self._dirty.clear()
        self._stopping = True

    def ack_when_written(self, comm: Connection, ack: Message) -> None:
        """Send ``ack`` once the transaction holding what it acknowledges is committed."""
        self._acks.append((comm, ack))

    def when_written(self, reply: Callable[[], None]) -> None:
        """Call ``reply`` once what was recorded up to now is committed."""
        self._later.append(reply)

    # -------------------------------------------------------------- writing
    async def run(self) -> None:
        journal = self.journal
        while True:
            await asyncio.sleep(self.interval)
            if not journal.dirty and not self._acks and not self._later:
                # Moves that leave nothing to write (a task started): no lag.
                self.pending_since = None
                continue
            batch = journal.take()
            acks, self._acks = self._acks, []
            later, self._later = self._later, []
            since, self.pending_since = self.pending_since, None
            started = time.monotonic()
            try:
                await asyncio.to_thread(journal.write, batch)
            except Exception:
                logger.exception("could not write the journal %s", journal.path)
                if self.pending_since is None:
                    self.pending_since = since  # still not committed
                continue
            self.writes += 1
            self.last_write = time.monotonic() - started
            for comm, ack in acks:
                if not comm.closed:
                    comm.send(ack)
            for reply in later:
                reply()

    async def close(self) -> None:
        await asyncio.to_thread(self.journal.flush)
        self.journal.close()

    # ------------------------------------------------------------ restoring
    async def load(self) -> Snapshot:
        snap = await asyncio.to_thread(self.journal.load)
        self._fired = {key for client, key in snap.wants if client == FIRE_AND_FORGET}
        return snap


def restored_coordination(snap: Snapshot) -> ev.CoordinationRestored | None:
    """The journal's coordination primitives and remembered answers, as the core's event
    (None: there are none)."""
    if not snap.coordination and not snap.answers:
        return None
    return ev.CoordinationRestored(
        rows=tuple(snap.coordination),
        answers=tuple(ev.Answered(*a) for a in snap.answers),
        stimulus_id="restore-coordination",
    )


def restored_tasks(snap: Snapshot) -> tuple[tuple[ev.RestoredTask, ...], set[str]]:
    """The journal's tasks as the core's rows, and the workers to wait for: those
    registered when it was last written (an older journal: those that held results)."""
    rows = []
    expected: set[str] = set()
    for t in snap.tasks:
        err = t.error
        rows.append(
            ev.RestoredTask(
                key=t.key,
                dependencies=tuple(t.deps),
                run_spec=t.run_spec,
                priority=t.priority,
                retries=t.retries,
                workers=tuple(t.workers) if t.workers else None,
                pure=t.pure,
                replicas=t.replicas,
                error=ev.ErrorRecord(
                    blame=str(err.get("blame", t.key)),
                    text=str(err.get("text", "")),
                    exception=bytes(err.get("exception") or b""),
                    traceback=bytes(err.get("traceback") or b""),
                    kind=str(err.get("kind", "")),
                    workers=tuple(err.get("workers") or ()),
                )
                if err
                else None,
            )
        )
        if t.state == "memory" and t.location:
            expected.add(t.location)
    if snap.workers is not None:
        expected = set(snap.workers)
    return tuple(rows), expected
