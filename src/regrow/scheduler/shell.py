"""The scheduler process's shell: connections in, events to the core, commands out.

Owns: the listener, one connection per worker, nanny and client, the periodic tick,
client requests waiting for the core's answer, a client's reconnection grace, and what
its health endpoint (``--dashboard-address``, ``protocol.health``) answers.
Reading messages into events is ``scheduler.messages``; the journal's side of things
is ``scheduler.journaling``.
Must not: decide anything about tasks or workers (that is ``core.scheduler_state``:
even liveness), or unpickle user payloads (they pass through as opaque frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from regrow.config import Settings
from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.core.client_requests import FIRE_AND_FORGET
from regrow.core.coordination import HOLDER
from regrow.core.records import TaskState
from regrow.core.scheduler_state import SchedulerState
from regrow.core.transitions import tell_plugins
from regrow.dashboard.model import Recorder
from regrow.errors import CommClosedError, ProtocolError, explain
from regrow.protocol.comm import (
    Connection,
    Listener,
    cancel_others,
    close_once,
    error_reply,
    refuse,
    spawn,
    trim_soon,
)
from regrow.protocol.framing import Buffer
from regrow.protocol.health import HealthServer, http_url, parse_http_address
from regrow.protocol.messages import (
    Ack,
    AcquireReplicasMsg,
    CancelMsg,
    ClientRegisteredMsg,
    CloseClientMsg,
    CloseMsg,
    ComputeMsg,
    CoordinateMsg,
    CoordinateReply,
    DesireKeysMsg,
    DropStateMsg,
    ErrorReply,
    EventMsg,
    ExtraMsg,
    ExtraReply,
    FireAndForgetMsg,
    FreeKeysMsg,
    HasWhatMsg,
    HasWhatReply,
    InterruptMsg,
    KeyCancelledMsg,
    KeyErredMsg,
    KeyInMemoryMsg,
    KeyInterruptedMsg,
    KeyLostMsg,
    KeyRetriedMsg,
    KillWorkerMsg,
    LeavingMsg,
    LeftMsg,
    LogEventMsg,
    Message,
    MissingDataMsg,
    NannyRegisteredMsg,
    PingMsg,
    PingReply,
    RebalanceMsg,
    RefusedMsg,
    RegisterClientMsg,
    RegisterNannyMsg,
    RegisterWorkerMsg,
    ReleaseKeysMsg,
    ReplicateMsg,
    RestartMsg,
    RestartReply,
    RetireWorkersMsg,
    RetireWorkersReply,
    RetryMsg,
    RunOnSchedulerMsg,
    RunReply,
    ScatteredMsg,
    SchedulerClosingMsg,
    SchedulerInfoMsg,
    SchedulerInfoReply,
    ShutdownMsg,
    StealMsg,
    SubmitAckMsg,
    SubmitMsg,
    WhoHasMsg,
    WhoHasReply,
    WorkerDiedMsg,
    WorkerRegisteredMsg,
    op_of,
)
from regrow.protocol.reach import OUTSIDE, WILDCARDS, advertise, outward_host
from regrow.scheduler.journal import Journal
from regrow.scheduler.journaling import JournalKeeper, restored_coordination, restored_tasks
from regrow.scheduler.messages import task_specs, worker_event
from regrow.security import Security

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger("regrow.scheduler")


def wall(event: dict[str, Any]) -> dict[str, Any]:
    """A core event (``core.timeline``) with its ``time`` in wall-clock seconds (the core's
    clock is this process's monotonic one, which means nothing elsewhere)."""
    out = dict(event)
    if "time" in out:
        out["time"] = out["time"] + (time.time() - time.monotonic())
    return out


def run_here(payload: bytes, scheduler: Scheduler) -> tuple[bool, list[Buffer]]:
    """``run_on_scheduler``: call the pickled ``(function, args, kwargs)`` here (with
    ``dask_scheduler=`` the scheduler if it takes it); the pickled outcome."""
    import inspect

    import cloudpickle

    try:
        fn, args, kwargs = cloudpickle.loads(payload)
        try:
            takes = "dask_scheduler" in inspect.signature(fn).parameters
        except (TypeError, ValueError):
            takes = False
        if takes:
            kwargs = {**kwargs, "dask_scheduler": scheduler}
        return True, [cloudpickle.dumps(fn(*args, **kwargs), protocol=5)]
    except Exception as exc:
        try:
            return False, [cloudpickle.dumps(exc, protocol=5)]
        except Exception:
            return False, [cloudpickle.dumps(RuntimeError(explain(exc)))]


class _Walled:
    """``wall`` once per event: the core emits one ReportEvent per client, all with the
    same event, in a row; each client gets the same copy (and the same time)."""

    def __init__(self) -> None:
        self._event: dict[str, Any] | None = None
        self._walled: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        if event is not self._event:
            self._event, self._walled = event, wall(event)
        return self._walled


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
        journal_new: bool = False,
        security: Security | None = None,
        insecure: bool = False,
        dashboard_address: str | None = None,
        dashboard: bool = True,
        dashboard_tries: int = 1,
        allow_scheduler_code: bool = False,
    ) -> None:
        self.host = host
        # Whether clients may run their code here (run_on_scheduler, scheduler plugins):
        # the operator's opt-in (--allow-scheduler-code). Without it nothing a client
        # sends is ever unpickled in the scheduler.
        self.allow_scheduler_code = allow_scheduler_code
        # What every worker (or nanny) gets, now and when it joins (upload_file, worker
        # and nanny plugins), by kind and name, in the order given; and the scheduler
        # plugins (with the opt-in).
        self.extras: dict[tuple[str, str], ExtraMsg] = {}  # (kind, name)
        self.plugins: dict[str, Any] = {}
        self._plugin_moves = 0
        self.security = security or Security()
        # Over HTTP at dashboard_address ('HOST:PORT', ':PORT'), if given: GET /health,
        # /metrics and (``dashboard``) the dashboard's pages; http_address is then where
        # ('http://host:port'). A port in use moves to the next, dashboard_tries in all.
        self.dashboard = parse_http_address(dashboard_address) if dashboard_address else None
        self.dashboard_tries = dashboard_tries
        # What the dashboard follows while someone watches it (dashboard.model).
        self.recorder = Recorder()
        self._wall = _Walled()
        self.health = (
            HealthServer(
                self._health,
                metrics=self._metrics,
                token=token,
                routes=self._dashboard_routes if dashboard else None,
            )
            if self.dashboard
            else None
        )
        self._shutdown_requested = False  # a client asked: stop the workers too
        # Nannies stopping (SIGTERM) whose workers are being retired: request -> nanny.
        self._leaving: dict[str, Connection] = {}
        self.http_address = ""
        self.port = port
        self.token = token
        self.settings = settings or Settings()
        self.state = SchedulerState(
            worker_saturation=self.settings.worker_saturation,
            queue_seconds=self.settings.worker_queue_seconds,
            default_task_duration=self.settings.default_task_duration,
            bandwidth=self.settings.bandwidth,
            allowed_failures=self.settings.allowed_failures,
            # Microseconds since the epoch: above every run id a predecessor gave out.
            first_run_id=time.time_ns() // 1000,
            inline_limit=self.settings.inline_total_bytes,
            heartbeat_timeout=self.settings.heartbeat_timeout,
            death_report_wait=self.settings.death_report_wait,
            max_client_tasks=self.settings.max_client_tasks,
            log_length=self.settings.transition_log_length,
            validate=validate,
        )
        self.listener = Listener(
            self._handle_connection,
            token=token,
            settings=self.settings,
            security=self.security,
            role="scheduler",
            insecure=insecure,
            max_frame_bytes=self.settings.scheduler_max_frame_bytes,
            max_send_buffer=self.settings.max_send_buffer_bytes,
        )
        self.worker_comms: dict[str, Connection] = {}
        self.client_comms: dict[str, Connection] = {}
        self._interned: dict[bytes, bytes] = {}
        self.nanny_comms: dict[str, Connection] = {}
        # Client requests answered once the core says so: retire-workers, by request id.
        self._retire_requests: dict[str, tuple[Connection, RetireWorkersMsg]] = {}
        # ... and coordination requests (core.coordination), by the id given to each.
        self._coordinate_requests: dict[str, tuple[Connection, CoordinateMsg]] = {}
        self._coordinate_ids = itertools.count(1)
        self._life = uuid.uuid4().hex[:12]  # tells this process's request ids from others'
        # Clients living in a worker process (a task's client), by the worker's address,
        # and those whose process is known dead (gone as soon as their connection is).
        self._task_clients: dict[str, str] = {}
        self._dead_hosts: set[str] = set()
        self._workers_changed = asyncio.Event()
        self._client_goodbye: dict[str, asyncio.TimerHandle] = {}
        self.keeper: JournalKeeper | None = None
        self.scheduler_id = uuid.uuid4().hex
        if journal is not None:
            self.keeper = JournalKeeper(
                Journal(journal, new=journal_new), self.settings.journal_interval
            )
            self.scheduler_id = self.keeper.journal.scheduler_id
            self.state.on_transition = self.keeper.transition
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
        if self.keeper is not None:
            await self._restore(self.keeper)
        self.address = await self.listener.start(self.host, self.port)
        if self.host in WILDCARDS:
            # Listening on every interface: say the address other hosts reach us at (in
            # the ready and scheduler files, the log), not 0.0.0.0.
            self.address = self.listener.address = advertise(self.address, self.host, "", OUTSIDE)
        spawn(self._tick_loop(), self.tasks, "scheduler-tick")
        if self.keeper is not None:
            spawn(self.keeper.run(), self.tasks, "scheduler-journal")
        logger.info("scheduler at %s (pid %d)", self.address, os.getpid())
        if self.health is not None and self.dashboard is not None:
            self.http_address = await self.health.start(*self.dashboard, self.dashboard_tries)
            if self.dashboard[0] in ("", *WILDCARDS):
                # On every interface: link to it by the address others reach us at.
                port = int(self.http_address.rsplit(":", 1)[1])
                self.http_address = http_url(outward_host(), port)
            logger.info("scheduler health at %s/health", self.http_address)
            if self.health.routes is not None:
                logger.info("dashboard at %s/", self.http_address)
        return self.address

    def _dashboard_routes(self, app: web.Application, server: HealthServer) -> None:
        from regrow.dashboard.server import Dashboard

        Dashboard(self.state, self.recorder, self._about, self._watching).install(app, server)

    def _dashboard_url(self) -> str:
        """Where the dashboard serves ('' : it does not)."""
        return self.http_address if self.health and self.health.routes else ""

    def _about(self) -> dict[str, Any]:
        """Who the dashboard is about."""
        return {
            "address": self.address,
            "id": self.scheduler_id,
            "started": self.started_at,
            "journal": self.keeper is not None,
        }

    def _watching(self, on: bool) -> None:
        """Someone started (or the last one stopped) watching the dashboard: follow the
        tasks by group and the task stream only meanwhile."""
        if on:
            self.recorder.attach(self.state)
        else:
            self.recorder.detach()
        self._hook_transitions()

    def _hook_transitions(self) -> None:
        """The core's transition hook: the journal's, the dashboard's, both or none."""
        keeper = self.keeper.transition if self.keeper and not self.stopped.is_set() else None
        recorder = self.recorder.hook if self.recorder.active else None
        if keeper is not None and recorder is not None:

            def both(ts: TaskState, start: str, finish: str) -> None:
                keeper(ts, start, finish)
                recorder(ts, start, finish)

            self.state.on_transition = both
        else:
            self.state.on_transition = keeper or recorder

    def _metrics(self) -> bytes:
        """``GET /metrics``: the state as it is now (scheduler/metrics.py)."""
        from regrow.scheduler.metrics import exposition

        return exposition(self.state, self.keeper.figures() if self.keeper else None)

    def _health(self) -> str | None:
        """What GET /health says: healthy from the moment the scheduler serves (also
        while a journaled restart waits for its workers: they must be let in)."""
        if self.stopped.is_set():
            return "the scheduler is closing"
        if not self.address:
            return "the scheduler is not serving yet"
        return None

    async def close(self) -> None:
        await close_once(self.stopped, self.closed, self._shutdown)

    async def _shutdown(self) -> None:
        for plugin in list(self.plugins.values()):
            close = getattr(plugin, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    logger.exception("a scheduler plugin's close raised")
        # A journaled scheduler stopped by a signal (an operator, a rollout, a pod moved)
        # is coming back: its workers stay, keep their results and wait for it. Only a
        # client's shutdown(), or a scheduler without a journal, stops them.
        keep_workers = self.keeper is not None and not self._shutdown_requested
        if self.keeper is not None:
            # What happened up to now is kept; the stop itself is not a release of anything.
            self.state.on_transition = None
            self.recorder.detach()
            self.keeper.forget_pending()
        if not keep_workers:
            # A worker with a nanny is stopped by its nanny (else it would be replaced).
            for comm in list(self.nanny_comms.values()):
                with contextlib.suppress(CommClosedError):
                    comm.send(CloseMsg())
        for address, comm in list(self.worker_comms.items()):
            ws = self.state.workers.get(address)
            managed = ws is not None and ws.nanny in self.nanny_comms
            with contextlib.suppress(CommClosedError):
                comm.send(SchedulerClosingMsg() if managed or keep_workers else CloseMsg())
        for comm in list(self.client_comms.values()):
            with contextlib.suppress(CommClosedError):
                comm.send(SchedulerClosingMsg())
        for handle in self._client_goodbye.values():
            handle.cancel()
        await asyncio.sleep(0)  # let the batched sends flush
        await cancel_others(self.tasks)  # a shutdown request runs in one of them
        await self.listener.close()
        if self.health is not None:
            await self.health.close()
        if self.keeper is not None:
            keeper, self.keeper = self.keeper, None
            await keeper.close()

    # --------------------------------------------------------------- journal
    async def _restore(self, keeper: JournalKeeper) -> None:
        """Rebuild the graph from the journal; compute nothing until workers had a chance
        to report the results they still hold."""
        snap = await keeper.load()
        coordination = restored_coordination(snap)
        if coordination is not None:
            self.handle(coordination)
        holders = self.state.coordination.clients()  # of leases and subscriptions
        if not snap.tasks:
            loop = asyncio.get_running_loop()
            for client in holders - set(self.client_comms):
                self._client_goodbye[client] = loop.call_later(
                    self.settings.client_grace, self._client_gone, client
                )
            return
        rows, expected = restored_tasks(snap)
        self.recovered.clear()
        self.handle(
            ev.StateRestored(tasks=rows, wants=tuple(snap.wants), stimulus_id=self._sid("restore"))
        )
        clients = ({c for c, _ in snap.wants} | holders) - {HOLDER}
        logger.warning(
            "restored %d tasks and %d clients from the journal %s; waiting up to %.1f s for "
            "%d worker(s) to come back",
            len(rows),
            len(clients),
            keeper.journal.path,
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
        loop.call_later(
            self.settings.client_grace,
            lambda: (
                None
                if self.stopped.is_set()
                else self.handle(ev.ReattachGraceEnded(stimulus_id=self._sid("reattach-grace")))
            ),
        )
        for client in clients - set(self.client_comms) - {FIRE_AND_FORGET}:
            # Clients that do not come back within the grace period let their results go
            # (not the scheduler's own fire-and-forget wishes: no client holds those).
            self._client_goodbye[client] = loop.call_later(
                self.settings.client_grace, self._client_gone, client
            )

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.steal_interval)
            self.handle(ev.Ticked(now=time.monotonic(), stimulus_id="tick"))

    # ------------------------------------------------------------- commands
    def handle(self, *events: ev.Event) -> None:
        keeper = self.keeper
        if keeper is not None:
            for event in events:
                keeper.record(event, self.state.tasks)
        commands = self.state.handle(*events)
        if self.recorder.active:
            self.recorder.follow(self.state, events)
        if self.plugins:
            self._tell_plugins()
        for command in commands:
            self._execute(command)
        if keeper is not None:
            state = self.state
            keeper.write_states(state.tasks, None if state.recovering else state.workers.keys())
            keeper.write_coordination(state.coordination)
        else:
            self.state.coordination.forget_changes()

    def _sid(self, prefix: str) -> str:
        return f"{prefix}-{next(self._stimuli)}"

    def _to_worker(self, address: str, msg: Message, frames: Sequence[Buffer] = ()) -> None:
        comm = self.worker_comms.get(address)
        if comm is None or comm.closed:
            return  # its removal is (or will be) an event of its own
        comm.send(msg, frames)

    def _to_client(self, client: str, msg: Message, frames: Sequence[Buffer] = ()) -> None:
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
                    ComputeMsg(
                        key=command.key,
                        run_id=command.run_id,
                        priority=command.priority,
                        who_has=command.who_has,
                        fn_frames=fnf,
                        inline=command.inline or None,
                    ),
                    frames,
                )
            case cmd.FreeKeys():
                self._to_worker(command.worker, FreeKeysMsg(keys=list(command.keys)))
            case cmd.Steal():
                self._to_worker(command.worker, StealMsg(key=command.key))
            case cmd.ReportInMemory():
                self._to_client(
                    command.client,
                    KeyInMemoryMsg(
                        key=command.key,
                        type=command.type_name,
                        nbytes=command.nbytes,
                        inline=command.inline,
                    ),
                )
            case cmd.ReportErred():
                self._to_client(
                    command.client,
                    KeyErredMsg(
                        key=command.key,
                        text=command.text,
                        kind=command.kind,
                        blame=command.blame,
                        workers=list(command.workers),
                    ),
                    [command.exception, command.traceback],
                )
            case cmd.ReportCancelled():
                self._to_client(command.client, KeyCancelledMsg(key=command.key))
            case cmd.ReportLost():
                self._to_client(command.client, KeyLostMsg(key=command.key))
            case cmd.ReportRetried():
                self._to_client(command.client, KeyRetriedMsg(key=command.key))
            case cmd.ReportEvent():
                self._to_client(
                    command.client,
                    EventMsg(
                        topic=command.topic,
                        message=str(command.data.get("text", "")),
                        data=self._wall(command.data),
                    ),
                )
            case cmd.ReportInterrupted():
                self._to_client(
                    command.client, KeyInterruptedMsg(key=command.key, worker=command.worker)
                )
            case cmd.Interrupt():
                self._to_worker(command.worker, InterruptMsg(key=command.key))
            case cmd.AcquireReplicas():
                self._to_worker(command.worker, AcquireReplicasMsg(who_has=command.who_has))
            case cmd.AcceptWorker():
                self._to_worker(
                    command.worker,
                    WorkerRegisteredMsg(scheduler=self.address, drop=command.drop),
                )
                # Uploaded files and worker plugins first: before any task is sent it.
                for extra in self.extras.values():
                    if extra.kind == "nanny-plugin":
                        continue
                    self._to_worker(
                        command.worker,
                        ExtraMsg(kind=extra.kind, name=extra.name, payload=extra.payload),
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
                    nanny.send(CloseMsg())
                else:
                    self._to_worker(command.worker, CloseMsg())
            case cmd.ReportRetired():
                nanny = self._leaving.pop(command.request, None)
                if nanny is not None and not nanny.closed:
                    nanny.send(LeftMsg(retired=bool(command.workers)))
                pending = self._retire_requests.pop(command.request, None)
                if pending is not None and not pending[0].closed:
                    pending[0].reply(pending[1], RetireWorkersReply(workers=list(command.workers)))
            case cmd.Answer():
                asked = self._coordinate_requests.pop(command.request, None)
                if asked is not None:
                    comm, request = asked
                    reply = CoordinateReply(
                        ok=command.ok,
                        payload=command.payload,
                        number=command.number,
                        error=command.error,
                    )

                    def answer() -> None:
                        if not comm.closed:
                            comm.reply(request, reply)

                    if command.durable and self.keeper is not None:
                        self.keeper.when_written(answer)  # a change: once it is kept
                    else:
                        answer()
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
        # An authenticated peer registers at once; one that does not holds a connection
        # for nothing (it may have the token and still be buggy or hostile).
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                msg, _ = await comm.recv()
        except TimeoutError:
            logger.warning(
                "dropping %s: it did not register within %g s",
                comm.peer,
                self.settings.handshake_timeout,
            )
            comm.abort()
            return
        try:
            match msg:
                case RegisterWorkerMsg():
                    await self._serve_worker(comm, msg)
                case RegisterClientMsg():
                    await self._serve_client(comm, msg)
                case RegisterNannyMsg():
                    await self._serve_nanny(comm, msg)
                case _:
                    raise ProtocolError(
                        f"first message must register a worker, client or nanny, got {op_of(msg)!r}"
                    )
        except ProtocolError as exc:
            logger.warning("dropping %s: %s", comm.peer, exc)
            with contextlib.suppress(CommClosedError):
                comm.send(RefusedMsg(reason=str(exc)))
            await comm.close()
        except CommClosedError:
            raise
        except Exception as exc:  # a bug of ours: this connection goes, the rest stays
            logger.exception("dropping %s: serving it failed", comm.peer)
            comm.abort(exc)

    async def _serve_worker(self, comm: Connection, msg: RegisterWorkerMsg) -> None:
        address = msg.address
        if address in self.worker_comms:
            comm.send(RefusedMsg(reason=f"a worker at {address} is already registered"))
            await comm.close()
            return
        # The message was checked whole before it got here: nothing below can leave a
        # worker registered whose connection nobody serves.
        added = ev.WorkerAdded(
            worker=address,
            id=msg.id or address,
            name=msg.name or address,
            nthreads=msg.nthreads,
            pid=msg.pid,
            memory_limit=msg.memory_limit,
            nanny=msg.nanny,
            keys=tuple(msg.keys),
            resources=dict(msg.resources) or None,
            stimulus_id=self._sid("worker-added"),
            now=time.monotonic(),
        )
        self.worker_comms[address] = comm
        logger.info("worker %s registered (%d threads)", address, msg.nthreads)
        reason = "connection closed"
        try:
            # The core answers (AcceptWorker): a worker it removed must first drop what it
            # holds; one that outlived a scheduler offers the results it holds to the graph.
            self.handle(added)
            while True:
                m, frames = await comm.recv()
                try:
                    self._worker_message(address, m, frames)
                except Exception as exc:
                    refuse(comm, m, exc, f"worker {address}", logger)
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

    async def _serve_nanny(self, comm: Connection, msg: RegisterNannyMsg) -> None:
        address = msg.address
        old = self.nanny_comms.get(address)
        if old is not None:
            old.abort()
        self.nanny_comms[address] = comm
        plugins = {e.name: e.payload for e in self.extras.values() if e.kind == "nanny-plugin"}
        comm.send(NannyRegisteredMsg(scheduler=self.address, plugins=plugins))
        self.handle(
            ev.NannyJoined(
                nanny=address,
                name=msg.name,
                replaces=msg.replaces,
                stimulus_id=self._sid("nanny"),
                now=time.monotonic(),
            )
        )
        try:
            while True:
                m, _ = await comm.recv()
                try:
                    match m:
                        case WorkerDiedMsg():
                            self._host_died(m.worker)
                            self.handle(
                                ev.WorkerDeathReported(
                                    worker=m.worker,
                                    reason=f"its nanny reports it {m.reason}",
                                    out_of_memory=m.out_of_memory,
                                    stimulus_id=self._sid("worker-died"),
                                    now=time.monotonic(),
                                )
                            )
                        case LeavingMsg():
                            # Answered (left) once the core reports the retirement.
                            request = self._sid("leaving")
                            self._leaving[request] = comm
                            logger.info("nanny %s is stopping: retiring %s", address, m.worker)
                            self.handle(
                                ev.RetireWorkersRequested(
                                    request=request,
                                    workers=(m.worker,),
                                    stimulus_id=request,
                                    now=time.monotonic(),
                                )
                            )
                        case _:
                            raise ProtocolError(f"a nanny does not send {op_of(m)!r}")
                except Exception as exc:
                    refuse(comm, m, exc, f"nanny {address}", logger)
        except CommClosedError:
            pass
        finally:
            if self.nanny_comms.get(address) is comm:
                del self.nanny_comms[address]
                self._workers_changed.set()  # a restart waits for no worker from it

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
            self.nanny_comms[nanny].send(KillWorkerMsg(reason="restart"))
        for address, comm in old.items():
            if address not in killed:
                comm.send(DropStateMsg())

        def missing() -> set[str]:
            serving = {ws.nanny for a, ws in self.state.workers.items() if a not in old}
            return (nannies & set(self.nanny_comms)) - serving

        try:
            async with asyncio.timeout(timeout):
                while missing():
                    self._workers_changed.clear()
                    await self._workers_changed.wait()
        except TimeoutError:
            late = sorted(missing())
            logger.warning("restart: no fresh worker from nanny(s) %s", late)
            raise TimeoutError(
                f"workers did not come back within {timeout} s: no fresh worker from the "
                f"nanny at {', '.join(late)}"
            ) from None

    def _worker_message(self, worker: str, msg: Message, frames: list[Buffer]) -> None:
        self.handle(worker_event(worker, msg, frames, time.monotonic(), self._sid))

    async def _serve_client(self, comm: Connection, msg: RegisterClientMsg) -> None:
        client = msg.client
        if client == FIRE_AND_FORGET:
            # The scheduler's own pseudo-client: one under its name could drop its wishes.
            raise ProtocolError(f"the client id {client!r} is reserved")
        await self.recovered.wait()
        old = self.client_comms.get(client)
        if old is not None:
            if not msg.reattach:
                comm.send(RefusedMsg(reason=f"client id {client} is already connected"))
                await comm.close()
                return
            old.abort()  # a stale connection of the same client: the new one takes over
        pending = self._client_goodbye.pop(client, None)
        if pending is not None:
            pending.cancel()  # it came back in time: its futures' results are kept
        self.client_comms[client] = comm
        if msg.worker:
            self._task_clients[client] = msg.worker
        said_goodbye = False
        try:
            self.handle(ev.ClientConnected(client=client, stimulus_id=self._sid("client")))
            if msg.reattach and msg.keys is not None:
                # Back after losing us: what it no longer holds, it released (perhaps in a
                # message that died with the previous scheduler, before the journal had it).
                self._release_stale(client, set(msg.keys))
            comm.send(
                ClientRegisteredMsg(
                    scheduler=self.address,
                    id=self.scheduler_id,
                    journal=self.keeper is not None,
                    dashboard=self._dashboard_url(),
                )
            )
            while True:
                m, frames = await comm.recv()
                if isinstance(m, CloseClientMsg):
                    said_goodbye = True
                    continue
                try:
                    self._client_message(client, comm, m, frames)
                except Exception as exc:
                    refuse(comm, m, exc, f"client {client}", logger)
        except CommClosedError:
            pass
        finally:
            if self.client_comms.get(client) is comm:
                del self.client_comms[client]
                if said_goodbye or self.stopped.is_set() or client in self._dead_hosts:
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

    # ------------------------------------------------- code from clients
    async def _extra(self, comm: Connection, msg: ExtraMsg) -> None:
        """A file or a plugin for every worker: kept for those that join later, sent to
        those here now; the answer says which of them failed to take it, and why."""
        if msg.kind == "scheduler-plugin":
            error = self._scheduler_plugin(msg)
            comm.reply(msg, ExtraReply(errors={self.address: error} if error else {}))
            return
        if msg.kind not in ("file", "worker-plugin", "nanny-plugin") or not msg.name:
            comm.reply(msg, ErrorReply(error=f"unknown extra kind {msg.kind!r}"))
            return
        self.extras.pop((msg.kind, msg.name), None)  # replaced: sent after the others
        self.extras[(msg.kind, msg.name)] = msg
        peers = self.nanny_comms if msg.kind == "nanny-plugin" else self.worker_comms
        workers = list(peers.items())

        async def one(address: str, worker: Connection) -> tuple[str, str]:
            try:
                reply, _ = await worker.request(
                    ExtraMsg(kind=msg.kind, name=msg.name, payload=msg.payload), timeout=60
                )
            except (CommClosedError, TimeoutError) as exc:
                return address, f"no answer: {exc or type(exc).__name__}"
            return address, reply.errors.get(address, "")

        done = await asyncio.gather(*(one(a, w) for a, w in workers))
        if not comm.closed:
            comm.reply(msg, ExtraReply(errors={a: e for a, e in done if e}))

    def _refusal(self, what: str) -> str:
        return (
            f"{what} refused: this scheduler runs no code sent by clients (it would have "
            "to unpickle it, and anyone holding the token could then run anything in "
            "it); its operator can allow it with regrow scheduler --allow-scheduler-code"
        )

    def _tell_plugins(self) -> None:
        """Each scheduler plugin's ``transition(key, start, finish, stimulus_id=...)``
        for the moves the core made since the last call (read from its log)."""
        state = self.state
        seen, self._plugin_moves = self._plugin_moves, state.moves
        for exc in tell_plugins(list(self.plugins.values()), state.log, state.moves, seen):
            logger.error("a scheduler plugin's transition raised", exc_info=exc)

    def _scheduler_plugin(self, msg: ExtraMsg) -> str:
        if not self.allow_scheduler_code:
            return self._refusal("a scheduler plugin")
        try:
            import cloudpickle

            plugin = cloudpickle.loads(msg.payload)
            old = self.plugins.pop(msg.name, None)
            if old is not None and hasattr(old, "close"):
                old.close()
            if hasattr(plugin, "start"):
                plugin.start(self)
            self._plugin_moves = self.state.moves
            self.plugins[msg.name] = plugin
        except Exception as exc:
            return explain(exc)
        return ""

    def _run_on_scheduler(
        self, comm: Connection, msg: RunOnSchedulerMsg, frames: list[Buffer]
    ) -> None:
        if not self.allow_scheduler_code:
            refusal = self._refusal("run_on_scheduler")
            comm.reply(msg, ErrorReply(error=refusal, etype="PermissionError"))
            return
        ok, out = run_here(msg.payload, self)
        comm.reply(msg, RunReply(ok=ok), out)

    def _host_died(self, worker: str) -> None:
        """``worker``'s nanny reports its process dead: the clients that lived in it (its
        tasks' client) are gone for sure, now or when their connection closes."""
        for client in [c for c, w in self._task_clients.items() if w == worker]:
            if client in self.client_comms:
                self._dead_hosts.add(client)
            else:
                pending = self._client_goodbye.pop(client, None)
                if pending is not None:
                    pending.cancel()
                self._client_gone(client)

    def _client_gone(self, client: str) -> None:
        self._task_clients.pop(client, None)
        self._dead_hosts.discard(client)
        self._client_goodbye.pop(client, None)
        for request in [r for r in self._coordinate_requests if r.startswith(client + "/")]:
            del self._coordinate_requests[request]
        if client not in self.client_comms:
            self.handle(ev.ClientDisconnected(client=client, stimulus_id=self._sid("client-gone")))
            trim_soon()  # what it held is freed: give it back to the system

    def _client_message(
        self, client: str, comm: Connection, msg: Message, frames: list[Buffer]
    ) -> None:
        match msg:
            case SubmitMsg():
                self.handle(
                    ev.TasksSubmitted(
                        client=client,
                        tasks=tuple(task_specs(msg, frames, self._interned)),
                        wanted=tuple(msg.wanted),
                        stimulus_id=self._sid("submit"),
                    )
                )
                if msg.seq:
                    ack = SubmitAckMsg(seq=msg.seq)
                    if self.keeper is None:
                        comm.send(ack)
                    else:
                        self.keeper.ack_when_written(comm, ack)
            case ReleaseKeysMsg():
                self.handle(
                    ev.KeysReleased(
                        client=client, keys=tuple(msg.keys), stimulus_id=self._sid("release")
                    )
                )
            case ExtraMsg():
                spawn(self._extra(comm, msg), self.tasks, "extra")
            case RunOnSchedulerMsg():
                self._run_on_scheduler(comm, msg, frames)
            case CoordinateMsg():
                # The client's id for the call: asked again (after a lost scheduler), the
                # core knows it. Without one, an id no other life of the scheduler used.
                request = f"{client}/{msg.call or f'#{self._life}-{next(self._coordinate_ids)}'}"
                self._coordinate_requests[request] = (comm, msg)
                self.handle(
                    ev.Coordinate(
                        client=client,
                        request=request,
                        kind=msg.kind,
                        name=msg.name,
                        op=msg.action,
                        payload=msg.payload,
                        keys=tuple(msg.keys),
                        number=msg.number,
                        ident=msg.ident,
                        timeout=msg.timeout,
                        now=time.monotonic(),
                        stimulus_id=self._sid("coordinate"),
                    )
                )
            case DesireKeysMsg():
                self.handle(
                    ev.KeysDesired(
                        client=client, keys=tuple(msg.keys), stimulus_id=self._sid("desire")
                    )
                )
            case MissingDataMsg():
                holders = tuple((key, tuple(ws)) for key, ws in msg.missing.items())
                self.handle(
                    ev.ReplicasMissing(holders=holders, stimulus_id=self._sid("missing-data"))
                )
            case LogEventMsg():
                self.handle(
                    ev.EventLogged(
                        client=client, topic=msg.topic, data=msg.data, stimulus_id=self._sid("log")
                    )
                )
            case RebalanceMsg():
                self.handle(
                    ev.RebalanceRequested(
                        keys=None if msg.keys is None else tuple(msg.keys),
                        workers=None if msg.workers is None else tuple(msg.workers),
                        stimulus_id=self._sid("rebalance"),
                    )
                )
                comm.reply(msg, Ack())
            case ReplicateMsg():
                self.handle(
                    ev.KeysReplicated(
                        keys=tuple(msg.keys), n=msg.n, stimulus_id=self._sid("replicate")
                    )
                )
                comm.reply(msg, Ack())
            case CancelMsg():
                self.handle(
                    ev.KeysCancelled(
                        client=client,
                        keys=tuple(msg.keys),
                        force=msg.force,
                        stimulus_id=self._sid("cancel"),
                    )
                )
                comm.reply(msg, Ack())
            case FireAndForgetMsg():
                self.handle(
                    ev.KeysFiredAndForgotten(
                        client=client, keys=tuple(msg.keys), stimulus_id=self._sid("fire")
                    )
                )
            case RetryMsg():
                # The news of the keys retried (pending again) goes out before the answer.
                self.handle(
                    ev.RetryRequested(
                        client=client, keys=tuple(msg.keys), stimulus_id=self._sid("retry")
                    )
                )
                comm.reply(msg, Ack())
            case ScatteredMsg():
                items = tuple(
                    ev.ScatteredKey(
                        key=item.key,
                        nbytes=item.nbytes,
                        type_name=item.type,
                        workers=tuple(item.workers),
                    )
                    for item in msg.keys
                )
                self.handle(
                    ev.DataScattered(
                        client=client,
                        keys=items,
                        replicas=msg.replicas,
                        stimulus_id=self._sid("scatter"),
                    )
                )
                if self.keeper is None or not msg.rid:
                    comm.reply(msg, Ack())
                else:
                    # Answered once journaled: a scheduler killed right after the client
                    # heard back must still know the data it was told about.
                    self.keeper.ack_when_written(comm, Ack(rid=msg.rid))
            case WhoHasMsg():
                comm.reply(msg, WhoHasReply(who_has=self.state.who_has(msg.keys)))
            case HasWhatMsg():
                comm.reply(msg, HasWhatReply(has_what=self.state.has_what(msg.workers)))
            case SchedulerInfoMsg():
                info = self.state.info()
                info.update(address=self.address, id="scheduler", pid=os.getpid())
                info["nannies"] = sorted(self.nanny_comms)
                info["started"] = self.started_at
                # Where the dashboard is ('' : none), as dask's services say.
                info["dashboard"] = self._dashboard_url()
                comm.reply(msg, SchedulerInfoReply(info=info))
            case RetireWorkersMsg():
                # Answered with the retired workers' addresses once the core is done.
                request = self._sid("retire")
                self._retire_requests[request] = (comm, msg)
                self.handle(
                    ev.RetireWorkersRequested(
                        request=request,
                        workers=tuple(msg.workers),
                        stimulus_id=request,
                        now=time.monotonic(),
                    )
                )
            case RestartMsg():
                spawn(self._restart_for(comm, msg), self.tasks, "restart")
            case ShutdownMsg():
                self._shutdown_requested = True
                comm.reply(msg, Ack())
                spawn(self.close(), self.tasks, "shutdown")
            case PingMsg():
                comm.reply(msg, PingReply(address=self.address, pid=os.getpid()))
            case _:
                raise ProtocolError(f"a client does not send {op_of(msg)!r}")

    async def _restart_for(self, comm: Connection, msg: RestartMsg) -> None:
        reply: RestartReply | ErrorReply
        try:
            await self.restart(msg.timeout)
            reply = RestartReply(workers=len(self.worker_comms))
        except TimeoutError as exc:
            reply = error_reply(exc)
        except Exception as exc:
            refuse(comm, msg, exc, "a client's restart", logger)
            return
        if not comm.closed:  # the client may have left meanwhile
            comm.reply(msg, reply)
