"""The scheduler process's shell: connections in, events to the core, commands out.

Owns: the listener, one connection per worker and per client, the periodic tick.
Must not: decide anything about tasks (that is ``core.scheduler_state``), or
unpickle user payloads (task payloads and results pass through as opaque frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

from regrow.config import Settings
from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.scheduler_state import ERRED, MEMORY, RELEASED, SchedulerState, TaskState
from regrow.errors import CommClosedError, ProtocolError
from regrow.protocol.comm import (
    Connection,
    Listener,
    cancel_others,
    close_once,
    error_reply,
    spawn,
)
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Msg, get, get_str_list
from regrow.scheduler.journal import Journal

logger = logging.getLogger("regrow.scheduler")


class Scheduler:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        settings: Settings | None = None,
        validate: bool = False,
        journal: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.settings = settings or Settings()
        self.state = SchedulerState(
            worker_saturation=self.settings.worker_saturation,
            default_task_duration=self.settings.default_task_duration,
            bandwidth=self.settings.bandwidth,
            allowed_failures=self.settings.allowed_failures,
            # Microseconds since the epoch: above every run id a predecessor gave out.
            first_run_id=time.time_ns() // 1000,
            inline_limit=self.settings.inline_total_bytes,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            death_report_wait=self.settings.death_report_wait,
            validate=validate,
        )
        self.listener = Listener(self._handle_connection, token=token, settings=self.settings)
        self.worker_comms: dict[str, Connection] = {}
        self.client_comms: dict[str, Connection] = {}
        self._interned: dict[bytes, bytes] = {}
        self.nanny_comms: dict[str, Connection] = {}
        # Client requests answered once the core says so: retire-workers, by request id.
        self._retire_requests: dict[str, tuple[Connection, Msg]] = {}
        self._workers_changed = asyncio.Event()
        self._client_goodbye: dict[str, asyncio.TimerHandle] = {}
        self.journal: Journal | None = None
        self._acks: list[tuple[Connection, Msg]] = []
        self.scheduler_id = uuid.uuid4().hex
        self._jdirty: dict[str, TaskState] = {}
        if journal is not None:
            self.journal = Journal(journal)
            self.scheduler_id = self.journal.scheduler_id
            self.state.on_transition = self._journal_transition
        # Clients wait for this before they are served (a journaled restart sets it
        # once the workers it knew have had their chance to come back).
        self.recovered = asyncio.Event()
        self.recovered.set()
        self.address = ""
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.closed = asyncio.Event()
        self._stimuli = itertools.count()
        self.started_at = time.time()

    # ------------------------------------------------------------------ life
    async def start(self) -> str:
        if self.journal is not None:
            await self._restore(self.journal)
        self.address = await self.listener.start(self.host, self.port)
        spawn(self._tick_loop(), self.tasks, "scheduler-tick")
        if self.journal is not None:
            spawn(self._journal_loop(self.journal), self.tasks, "scheduler-journal")
        logger.info("scheduler at %s (pid %d)", self.address, os.getpid())
        return self.address

    async def close(self) -> None:
        await close_once(self.stopped, self.closed, self._shutdown)

    async def _shutdown(self) -> None:
        if self.journal is not None:
            # What happened up to now is kept; the stop itself is not a release of anything.
            self.state.on_transition = None
            self._jdirty.clear()
        # A worker with a nanny is stopped by its nanny (else the nanny would replace it).
        for comm in list(self.nanny_comms.values()):
            with contextlib.suppress(CommClosedError):
                comm.send({"op": "close"})
        for address, comm in list(self.worker_comms.items()):
            ws = self.state.workers.get(address)
            managed = ws is not None and ws.nanny in self.nanny_comms
            with contextlib.suppress(CommClosedError):
                comm.send({"op": "scheduler-closing" if managed else "close"})
        for comm in list(self.client_comms.values()):
            with contextlib.suppress(CommClosedError):
                comm.send({"op": "scheduler-closing"})
        for handle in self._client_goodbye.values():
            handle.cancel()
        await asyncio.sleep(0)  # let the batched sends flush
        await cancel_others(self.tasks)  # a shutdown request runs in one of them
        await self.listener.close()
        if self.journal is not None:
            journal, self.journal = self.journal, None
            await asyncio.to_thread(journal.flush)
            journal.close()

    # --------------------------------------------------------------- journal
    async def _restore(self, journal: Journal) -> None:
        """Rebuild the graph from the journal; compute nothing until workers had a chance
        to report the results they still hold."""
        snap = await asyncio.to_thread(journal.load)
        if not snap.tasks:
            return
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
        self.recovered.clear()
        self.handle(
            ev.StateRestored(
                tasks=tuple(rows), wants=tuple(snap.wants), stimulus_id=self._sid("restore")
            )
        )
        clients = {c for c, _ in snap.wants}
        logger.warning(
            "restored %d tasks and %d clients from the journal %s; waiting up to %.1f s for "
            "%d worker(s) to come back",
            len(rows),
            len(clients),
            journal.path,
            self.settings.recovery_wait,
            len(expected),
        )
        spawn(self._finish_recovery(expected, clients), self.tasks, "scheduler-recovery")

    async def _finish_recovery(self, expected: set[str], clients: set[str]) -> None:
        try:
            async with asyncio.timeout(self.settings.recovery_wait):
                while not expected <= set(self.worker_comms):
                    self._workers_changed.clear()
                    await self._workers_changed.wait()
        except TimeoutError:
            missing = expected - set(self.worker_comms)
            logger.warning("%d worker(s) did not come back: %s", len(missing), sorted(missing))
        self.handle(ev.RecoveryFinished(stimulus_id=self._sid("recovered")))
        self.recovered.set()
        loop = asyncio.get_running_loop()
        for client in clients - set(self.client_comms):
            # Clients that do not come back within the grace period let their results go.
            self._client_goodbye[client] = loop.call_later(
                self.settings.client_grace, self._client_gone, client
            )

    def _journal_event(self, journal: Journal, event: ev.Event) -> None:
        """Record what a client asked for, before the core acts on it."""
        tasks = self.state.tasks
        match event:
            case ev.TasksSubmitted():
                for spec in event.tasks:
                    if spec.key not in tasks:
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
            case ev.KeysDesired():
                for key in event.keys:
                    journal.want(event.client, key, True)
            case ev.KeysReleased() | ev.KeysCancelled():
                for key in event.keys:
                    journal.want(event.client, key, False)
            case ev.ClientDisconnected():
                journal.client_gone(event.client)
            case ev.RestartRequested():
                journal.clear()
            case _:
                pass

    def _journal_transition(self, ts: TaskState, start: str, finish: str) -> None:
        self._jdirty[ts.key] = ts

    def _journal_states(self, journal: Journal) -> None:
        """Write the final state of every task that moved during the last events."""
        tasks = self.state.tasks
        for key, ts in self._jdirty.items():
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
            elif ts.state == RELEASED:
                journal.task_state(key, RELEASED)
        self._jdirty.clear()

    async def _journal_loop(self, journal: Journal) -> None:
        while True:
            await asyncio.sleep(self.settings.journal_interval)
            if not journal.dirty and not self._acks:
                continue
            batch = journal.take()
            acks, self._acks = self._acks, []
            try:
                await asyncio.to_thread(journal.write, batch)
            except Exception:
                logger.exception("could not write the journal %s", journal.path)
                continue
            for comm, ack in acks:
                if not comm.closed:
                    comm.send(ack)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.steal_interval)
            self.handle(ev.Ticked(now=time.monotonic(), stimulus_id="tick"))

    # ------------------------------------------------------------- commands
    def handle(self, *events: ev.Event) -> None:
        if self.journal is not None:
            for event in events:
                self._journal_event(self.journal, event)
        for command in self.state.handle(*events):
            self._execute(command)
        if self._jdirty and self.journal is not None:
            self._journal_states(self.journal)

    def _sid(self, prefix: str) -> str:
        return f"{prefix}-{next(self._stimuli)}"

    def _to_worker(self, address: str, msg: Msg, frames: Sequence[Buffer] = ()) -> None:
        comm = self.worker_comms.get(address)
        if comm is None or comm.closed:
            return  # its removal is (or will be) an event of its own
        comm.send(msg, frames)

    def _to_client(self, client: str, msg: Msg, frames: Sequence[Buffer] = ()) -> None:
        comm = self.client_comms.get(client)
        if comm is None or comm.closed:
            return
        comm.send(msg, frames)

    def _execute(self, command: cmd.Command) -> None:
        match command:
            case cmd.Compute():
                fnf, frames = cast(tuple[int, list[Buffer]], command.run_spec)
                self._to_worker(
                    command.worker,
                    {
                        "op": "compute",
                        "key": command.key,
                        "run": command.run_id,
                        "who_has": command.who_has,
                        "nbytes": command.nbytes,
                        "priority": list(command.priority),
                        "fnf": fnf,
                        **({"inline": command.inline} if command.inline else {}),
                    },
                    frames,
                )
            case cmd.FreeKeys():
                self._to_worker(command.worker, {"op": "free-keys", "keys": list(command.keys)})
            case cmd.Steal():
                self._to_worker(command.worker, {"op": "steal", "key": command.key})
            case cmd.ReportInMemory():
                self._to_client(
                    command.client,
                    {
                        "op": "key-in-memory",
                        "key": command.key,
                        "type": command.type_name,
                        "nbytes": command.nbytes,
                        **({} if command.inline is None else {"inline": command.inline}),
                    },
                )
            case cmd.ReportErred():
                self._to_client(
                    command.client,
                    {
                        "op": "key-erred",
                        "key": command.key,
                        "text": command.text,
                        "kind": command.kind,
                        "blame": command.blame,
                        "workers": list(command.workers),
                    },
                    [command.exception, command.traceback],
                )
            case cmd.ReportCancelled():
                self._to_client(command.client, {"op": "key-cancelled", "key": command.key})
            case cmd.ReportLost():
                self._to_client(command.client, {"op": "key-lost", "key": command.key})
            case cmd.ReportEvent():
                self._to_client(
                    command.client,
                    {"op": "event", "topic": command.topic, "message": command.message},
                )
            case cmd.ReportInterrupted():
                self._to_client(
                    command.client,
                    {"op": "key-interrupted", "key": command.key, "worker": command.worker},
                )
            case cmd.Interrupt():
                self._to_worker(command.worker, {"op": "interrupt", "key": command.key})
            case cmd.AcquireReplicas():
                self._to_worker(
                    command.worker, {"op": "acquire-replicas", "who_has": command.who_has}
                )
            case cmd.AcceptWorker():
                self._to_worker(
                    command.worker,
                    {"op": "registered", "scheduler": self.address, "drop": command.drop},
                )
                self._workers_changed.set()
            case cmd.CloseWorkerConnection():
                comm = self.worker_comms.get(command.worker)
                if comm is not None:
                    comm.abort()  # the core removed it already, and logged why
            case cmd.CloseWorker():
                nanny = self.nanny_comms.get(command.nanny) if command.nanny else None
                if nanny is not None and not nanny.closed:
                    # The nanny stops its worker and does not start another, then exits.
                    nanny.send({"op": "close"})
                else:
                    self._to_worker(command.worker, {"op": "close"})
            case cmd.ReportRetired():
                pending = self._retire_requests.pop(command.request, None)
                if pending is not None and not pending[0].closed:
                    pending[0].reply(pending[1], {"workers": list(command.workers)})
            case cmd.Log():
                logger.log(
                    logging.WARNING if command.level == "warning" else logging.INFO,
                    "%s",
                    command.message,
                )
            case _:
                raise TypeError(f"the scheduler shell cannot carry out {command!r}")

    # ---------------------------------------------------------- connections
    async def _handle_connection(self, comm: Connection) -> None:
        msg, _ = await comm.recv()
        op = msg["op"]
        try:
            if op == "register-worker":
                await self._serve_worker(comm, msg)
            elif op == "register-client":
                await self._serve_client(comm, msg)
            elif op == "register-nanny":
                await self._serve_nanny(comm, msg)
            else:
                raise ProtocolError(f"first message must register a worker or client, got {op!r}")
        except ProtocolError as exc:
            logger.warning("dropping %s: %s", comm.peer, exc)
            with contextlib.suppress(CommClosedError):
                comm.send({"op": "error", "error": str(exc)})
            await comm.close()

    async def _serve_worker(self, comm: Connection, msg: Msg) -> None:
        address = get(msg, "address", str)
        nthreads = get(msg, "nthreads", int)
        worker_id = str(msg.get("id") or address)
        if address in self.worker_comms:
            comm.send({"op": "error", "error": f"a worker at {address} is already registered"})
            await comm.close()
            return
        self.worker_comms[address] = comm
        logger.info("worker %s registered (%d threads)", address, nthreads)
        # The core answers (AcceptWorker): a worker it removed must first drop what it
        # holds; one that outlived a scheduler offers the results it holds to the graph.
        self.handle(
            ev.WorkerAdded(
                worker=address,
                id=worker_id,
                name=str(msg.get("name") or address),
                nthreads=nthreads,
                pid=int(msg.get("pid") or 0),
                memory_limit=int(msg.get("memory_limit") or 0),
                nanny=str(msg.get("nanny") or ""),
                keys=_held_keys(msg),
                stimulus_id=self._sid("worker-added"),
                now=time.monotonic(),
            )
        )
        reason = "connection closed"
        try:
            while True:
                m, frames = await comm.recv()
                try:
                    self._worker_message(address, m, frames)
                except ProtocolError as exc:
                    logger.warning("bad message from worker %s: %s", address, exc)
        except CommClosedError:
            if comm.close_reason is not None:
                reason = f"connection closed: {comm.close_reason}"
        finally:
            if self.worker_comms.get(address) is comm:
                del self.worker_comms[address]
                # The core decides what the close means (and may wait for a death report).
                events: list[ev.Event] = []
                if self.stopped.is_set():
                    events.append(ev.WorkerRetiring(worker=address, reason="scheduler closing"))
                events.append(
                    ev.WorkerConnectionClosed(
                        worker=address,
                        reason=reason,
                        stimulus_id=self._sid("worker-closed"),
                        now=time.monotonic(),
                    )
                )
                self.handle(*events)

    async def _serve_nanny(self, comm: Connection, msg: Msg) -> None:
        address = get(msg, "address", str)
        old = self.nanny_comms.get(address)
        if old is not None:
            old.abort()
        self.nanny_comms[address] = comm
        comm.send({"op": "registered", "scheduler": self.address})
        try:
            while True:
                m, _ = await comm.recv()
                if m["op"] == "worker-died":
                    self.handle(
                        ev.WorkerDeathReported(
                            worker=get(m, "worker", str),
                            reason=f"its nanny reports it {get(m, 'reason', str)}",
                            stimulus_id=self._sid("worker-died"),
                            now=time.monotonic(),
                        )
                    )
                else:
                    logger.warning("unexpected message from nanny %s: %r", address, m["op"])
        except CommClosedError:
            pass
        finally:
            if self.nanny_comms.get(address) is comm:
                del self.nanny_comms[address]

    async def restart(self, timeout: float) -> None:
        """The seed's restart: cancel every future, kill every worker hard, start afresh.

        Returns once every nanny has a fresh worker registered (workers without a
        nanny are told to drop their state instead).
        """
        old = dict(self.worker_comms)
        nannies = set(self.nanny_comms)
        workers = self.state.workers
        killed = [a for a in old if a in workers and workers[a].nanny in nannies]
        sid = self._sid("restart")
        self.handle(
            # Those its nanny kills leave on purpose: their removal is graceful.
            *(ev.WorkerRetiring(worker=a, reason="restart", stimulus_id=sid) for a in killed),
            ev.RestartRequested(stimulus_id=sid),
        )
        for nanny in nannies:
            self.nanny_comms[nanny].send({"op": "kill-worker", "reason": "restart"})
        for address, comm in old.items():
            if address not in killed:
                comm.send({"op": "drop-state"})

        def fresh() -> bool:
            serving = {ws.nanny for a, ws in self.state.workers.items() if a not in old}
            return nannies <= serving

        async with asyncio.timeout(timeout):
            while not fresh():
                self._workers_changed.clear()
                await self._workers_changed.wait()

    def _worker_message(self, worker: str, msg: Msg, frames: list[Buffer]) -> None:
        op = msg["op"]
        now = time.monotonic()
        if op == "task-finished":
            self.handle(
                ev.TaskFinished(
                    worker=worker,
                    key=get(msg, "key", str),
                    run_id=get(msg, "run", int),
                    nbytes=get(msg, "nbytes", int),
                    type_name=sys.intern(str(msg.get("type", ""))),
                    duration=float(msg.get("duration", 0.0)),
                    inline=_inline(msg),
                    stimulus_id=self._sid("task-finished"),
                    now=now,
                )
            )
        elif op == "task-erred":
            if len(frames) != 2:
                raise ProtocolError("task-erred needs 2 frames (exception, traceback)")
            self.handle(
                ev.TaskErred(
                    worker=worker,
                    key=get(msg, "key", str),
                    run_id=get(msg, "run", int),
                    exception=bytes(frames[0]),
                    traceback=bytes(frames[1]),
                    text=str(msg.get("text", "")),
                    duration=float(msg.get("duration", 0.0)),
                    stimulus_id=self._sid("task-erred"),
                    now=now,
                )
            )
        elif op == "started":
            self.handle(
                ev.TasksStarted(
                    worker=worker,
                    keys=tuple(get_str_list(msg, "keys")),
                    stimulus_id=self._sid("started"),
                    now=now,
                )
            )
        elif op == "steal-response":
            self.handle(
                ev.StealAnswered(
                    worker=worker,
                    key=get(msg, "key", str),
                    stolen=bool(msg.get("stolen")),
                    stimulus_id=self._sid("steal"),
                    now=now,
                )
            )
        elif op == "add-replicas":
            self.handle(
                ev.ReplicasAdded(
                    worker=worker,
                    keys=tuple(get_str_list(msg, "keys")),
                    stimulus_id=self._sid("replicas"),
                    now=now,
                )
            )
        elif op == "dependency-missing":
            self.handle(
                ev.DependencyMissing(
                    worker=worker,
                    key=get(msg, "key", str),
                    dependency=get(msg, "dependency", str),
                    holders=tuple(get_str_list(msg, "holders")),
                    stimulus_id=self._sid("missing"),
                    now=now,
                )
            )
        elif op == "heartbeat":
            self.handle(
                ev.HeartbeatReceived(
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
            )
        elif op == "paused":
            self.handle(
                ev.WorkerPaused(
                    worker=worker,
                    paused=bool(msg.get("paused")),
                    stimulus_id=self._sid("paused"),
                    now=now,
                )
            )
        elif op == "retiring":
            self.handle(
                ev.WorkerRetiring(
                    worker=worker,
                    reason=str(msg.get("reason") or "retiring"),
                    stimulus_id=self._sid("retiring"),
                    now=now,
                )
            )
        else:
            raise ProtocolError(f"unknown op {op!r}")

    async def _serve_client(self, comm: Connection, msg: Msg) -> None:
        client = get(msg, "client", str)
        await self.recovered.wait()
        old = self.client_comms.get(client)
        if old is not None:
            if not msg.get("reattach"):
                comm.send({"op": "error", "error": f"client id {client} is already connected"})
                await comm.close()
                return
            old.abort()  # a stale connection of the same client: the new one takes over
        pending = self._client_goodbye.pop(client, None)
        if pending is not None:
            pending.cancel()  # it came back in time: its futures' results are kept
        self.client_comms[client] = comm
        self.handle(ev.ClientConnected(client=client, stimulus_id=self._sid("client")))
        if msg.get("reattach") and "keys" in msg:
            # Back after losing us: what it no longer holds, it released (perhaps in a
            # message that died with the previous scheduler, before the journal had it).
            self._release_stale(client, set(get_str_list(msg, "keys")))
        comm.send(
            {
                "op": "registered",
                "scheduler": self.address,
                "id": self.scheduler_id,
                "journal": self.journal is not None,
            }
        )
        said_goodbye = False
        try:
            while True:
                m, frames = await comm.recv()
                if m["op"] == "close-client":
                    said_goodbye = True
                    continue
                try:
                    self._client_message(client, comm, m, frames)
                except (ProtocolError, ValueError, KeyError, TypeError) as exc:
                    logger.warning("bad message from client %s: %s", client, exc)
                    if "rid" in m:
                        comm.reply(m, error_reply(exc))
        except CommClosedError:
            pass
        finally:
            if self.client_comms.get(client) is comm:
                del self.client_comms[client]
                if said_goodbye or self.stopped.is_set():
                    self._client_gone(client)
                else:
                    # It may only have lost its connection: keep its results a while.
                    self._client_goodbye[client] = asyncio.get_running_loop().call_later(
                        self.settings.client_grace, self._client_gone, client
                    )

    def _release_stale(self, client: str, held: set[str]) -> None:
        cs = self.state.clients.get(client)
        stale = [ts.key for ts in cs.wants if ts.key not in held] if cs is not None else []
        if stale:
            logger.info("client %s no longer holds %d key(s); releasing them", client, len(stale))
            self.handle(
                ev.KeysReleased(client=client, keys=tuple(stale), stimulus_id=self._sid("stale"))
            )

    def _client_gone(self, client: str) -> None:
        self._client_goodbye.pop(client, None)
        if client not in self.client_comms:
            self.handle(ev.ClientDisconnected(client=client, stimulus_id=self._sid("client-gone")))

    def _client_message(
        self, client: str, comm: Connection, msg: Msg, frames: list[Buffer]
    ) -> None:
        op = msg["op"]
        if op == "submit":
            self.handle(
                ev.TasksSubmitted(
                    client=client,
                    tasks=tuple(_task_specs(msg, frames, self._interned)),
                    wanted=tuple(get_str_list(msg, "wanted")),
                    stimulus_id=self._sid("submit"),
                )
            )
            if "seq" in msg:
                ack = {"op": "submit-ack", "seq": int(msg["seq"])}
                if self.journal is None:
                    comm.send(ack)
                else:
                    self._acks.append((comm, ack))  # sent once the journal holds it
        elif op == "release-keys":
            self.handle(
                ev.KeysReleased(
                    client=client,
                    keys=tuple(get_str_list(msg, "keys")),
                    stimulus_id=self._sid("release"),
                )
            )
        elif op == "desire-keys":
            self.handle(
                ev.KeysDesired(
                    client=client,
                    keys=tuple(get_str_list(msg, "keys")),
                    stimulus_id=self._sid("desire"),
                )
            )
        elif op == "missing-data":
            missing: dict[str, Any] = get(msg, "missing", dict)
            holders: list[tuple[str, tuple[str, ...]]] = []
            for key, ws in missing.items():
                if not (isinstance(ws, list) and all(isinstance(w, str) for w in ws)):
                    raise ProtocolError("missing-data: each key maps to a list of addresses")
                holders.append((str(key), tuple(ws)))
            self.handle(
                ev.ReplicasMissing(holders=tuple(holders), stimulus_id=self._sid("missing-data"))
            )
        elif op == "cancel":
            self.handle(
                ev.KeysCancelled(
                    client=client,
                    keys=tuple(get_str_list(msg, "keys")),
                    force=bool(msg.get("force", False)),
                    stimulus_id=self._sid("cancel"),
                )
            )
            comm.reply(msg, {})
        elif op == "scattered":
            items = []
            for item in get(msg, "keys", list):
                if not isinstance(item, dict):
                    raise ProtocolError("scattered: each key must be a dict")
                items.append(
                    ev.ScatteredKey(
                        key=get(item, "key", str),
                        nbytes=get(item, "nbytes", int),
                        type_name=str(item.get("type", "")),
                        workers=tuple(get_str_list(item, "workers")),
                    )
                )
            replicas = int(msg.get("replicas", 1))
            self.handle(
                ev.DataScattered(
                    client=client,
                    keys=tuple(items),
                    replicas=replicas,
                    stimulus_id=self._sid("scatter"),
                )
            )
            comm.reply(msg, {})
        elif op == "who-has":
            comm.reply(msg, {"who_has": self.state.who_has(get_str_list(msg, "keys"))})
        elif op == "scheduler-info":
            info = self.state.info()
            info.update(address=self.address, id="scheduler", pid=os.getpid())
            info["nannies"] = sorted(self.nanny_comms)
            info["started"] = self.started_at
            comm.reply(msg, info)
        elif op == "retire-workers":
            # Answered with {"workers": [retired addresses]} once the core is done.
            workers = tuple(get_str_list(msg, "workers"))
            request = self._sid("retire")
            self._retire_requests[request] = (comm, msg)
            self.handle(
                ev.RetireWorkersRequested(
                    request=request, workers=workers, stimulus_id=request, now=time.monotonic()
                )
            )
        elif op == "restart":
            spawn(self._restart_for(comm, msg), self.tasks, "restart")
        elif op == "shutdown":
            comm.reply(msg, {})
            spawn(self.close(), self.tasks, "shutdown")
        elif op == "ping":
            comm.reply(msg, {})
        else:
            raise ProtocolError(f"unknown op {op!r}")

    async def _restart_for(self, comm: Connection, msg: Msg) -> None:
        timeout = float(msg.get("timeout") or 30.0)
        try:
            await self.restart(timeout)
        except TimeoutError:
            comm.reply(
                msg,
                error_reply(TimeoutError(f"workers did not come back within {timeout} s")),
            )
            return
        comm.reply(msg, {"workers": len(self.worker_comms)})


def _inline(msg: Msg) -> bytes | None:
    """A task-finished message's small result, if it carries one."""
    inline = msg.get("inline")
    if inline is None or isinstance(inline, bytes):
        return inline
    raise ProtocolError(f"'inline' must be bytes, got {type(inline).__name__}")


def _held_keys(msg: Msg) -> tuple[tuple[str, int], ...]:
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


def _task_specs(
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
