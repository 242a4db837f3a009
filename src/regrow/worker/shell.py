"""The worker process's shell: messages and outcomes in, events to the core, instructions out.

Owns: the connection to the scheduler (registering, reconnecting, heartbeats), the
memory monitor's samples, and carrying out the worker core's instructions with the
parts that do the work: the task threads (``worker.execution``), transfers to and
from peers (``worker.transfer``) and the data store (``worker.spill``).
Must not: decide anything about tasks: what runs, what is fetched from whom, what is
kept, when to pause (``core.worker_state`` does). It does what the scheduler says
and reports what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

import psutil

from regrow.config import Settings
from regrow.core import worker_events as wev
from regrow.core import worker_instructions as ins
from regrow.core.worker_state import WorkerState, WorkerTask
from regrow.errors import CommClosedError, ProtocolError
from regrow.protocol import framing, heap, shm, stripe
from regrow.protocol.comm import (
    Connection,
    ConnectionPool,
    Listener,
    cancel_others,
    close_once,
    refuse,
    spawn,
)
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import (
    AcquireReplicasMsg,
    AddReplicasMsg,
    CloseMsg,
    ComputeMsg,
    DependencyMissingMsg,
    DropStateMsg,
    ExtraMsg,
    ExtraReply,
    FreeKeysMsg,
    HeartbeatMsg,
    InterruptMsg,
    LongRunningMsg,
    Message,
    PausedMsg,
    RegisterWorkerMsg,
    RetiringMsg,
    SchedulerClosingMsg,
    StartedMsg,
    StealMsg,
    StealResponseMsg,
    TaskErredMsg,
    TaskFinishedMsg,
    WorkerRegisteredMsg,
    op_of,
)
from regrow.protocol.reach import advertise, reconnect, register_with, until_reached
from regrow.security import Security
from regrow.worker import memory
from regrow.worker.execution import (
    Outcome,
    RunSpec,
    TaskInterrupted,
    TaskThreads,
    broken_imports,
    get_worker,
    serialize_error,
)
from regrow.worker.extras import Extras
from regrow.worker.spill import SpillBuffer
from regrow.worker.transfer import Transfers

__all__ = ["TaskInterrupted", "Worker", "get_worker"]

logger = logging.getLogger("regrow.worker")


def check_resources(resources: Any, what: str) -> dict[str, float]:
    """``{"GPU": 1, "MEM": 8e9}`` checked: names are non-empty strs, amounts numbers
    >= 0 (a ValueError or TypeError names the bad one)."""
    if not isinstance(resources, dict):
        raise TypeError(f"{what} must be a dict like {{'GPU': 1}}, got {type(resources).__name__}")
    out: dict[str, float] = {}
    for name, amount in resources.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what}: a resource's name must be a non-empty str, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise TypeError(f"{what}: {name}={amount!r} is not a number")
        if not 0 <= amount < float("inf"):
            raise ValueError(f"{what}: {name}={amount!r} must be a finite number >= 0")
        out[name] = float(amount)
    return out


def parse_resources(text: str) -> dict[str, float]:
    """``"GPU=1,MEM=8e9"`` (dask's ``--resources``) as ``{"GPU": 1.0, "MEM": 8e9}``."""
    out: dict[str, float] = {}
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        name, sep, amount = part.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name] = float(amount)
        except ValueError:
            raise ValueError(
                f"--resources: {part!r} is not NAME=AMOUNT (e.g. GPU=1,MEM=8e9)"
            ) from None
    return check_resources(out, "--resources")


class Worker:
    def __init__(
        self,
        scheduler_address: str,
        *,
        nthreads: int = 1,
        name: str | None = None,
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        memory_limit: int = 0,
        settings: Settings | None = None,
        nanny: str = "",
        spill_dir: str | None = None,
        validate: bool = False,
        security: Security | None = None,
        insecure: bool = False,
        timeout: float | None = 60.0,
        contact_address: str = "",
        death_timeout: float | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1, got {nthreads}")
        # Abstract resources tasks may ask for (``{"GPU": 2}``): the scheduler places a
        # task that needs some only where enough are free.
        self.resources = check_resources(resources or {}, "worker resources")
        self.scheduler_address = scheduler_address
        self.nthreads = nthreads
        self.name = name
        self.token = token
        self.security = security or Security()
        self.host = host
        self.port = port
        # How long start() keeps trying to reach a scheduler that is not up (yet).
        self.timeout = timeout
        # How long it keeps trying to reach a scheduler it lost before it closes (None:
        # for ever), as dask's --death-timeout: a batch job whose scheduler died ends.
        self.death_timeout = death_timeout
        self.contact_address = contact_address
        self.memory_limit = memory_limit
        self.settings = settings or Settings()
        self.id = uuid.uuid4().hex
        self.nanny = nanny
        self.address = ""
        self.state = WorkerState(
            nthreads=nthreads,
            memory_limit=memory_limit,
            memory_target_fraction=self.settings.memory_target_fraction,
            memory_pause_fraction=self.settings.memory_pause_fraction,
            has_nanny=bool(nanny),
            cancel_grace=self.settings.cancel_grace,
            validate=validate,
        )
        self.data = SpillBuffer(
            target=int(memory_limit * self.settings.memory_target_fraction), directory=spill_dir
        )
        self.host_id = shm.HOST if self.settings.shared_memory else ""
        self.transfers = Transfers(
            self,
            self.data,
            self.settings,
            token,
            self.host_id,
            on_put=self._data_put,
            security=self.security,
        )
        self.threads = TaskThreads(
            self,
            nthreads,
            self.settings,
            self.data,
            deliver=self._outcomes,
            seal_results=self.settings.seal_results and bool(self.host_id),
        )
        self.listener = Listener(
            self.transfers.serve,
            token=token,
            settings=self.settings,
            security=self.security,
            role="worker",
            insecure=insecure,
        )
        self.scheduler: Connection | None = None
        self._scheduler_closing = False
        self._stimuli = itertools.count()
        self._proc = psutil.Process()  # this process: heartbeats and memory samples
        self.tasks_bg: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.closed = asyncio.Event()
        self._imports_broken = False
        self.extras = Extras(self)

    # What tests and ``get_worker()`` users look at.
    @property
    def peers(self) -> ConnectionPool:
        return self.transfers.peers

    @property
    def striped(self) -> stripe.Holdings:
        return self.transfers.striped

    @property
    def _lent(self) -> dict[Connection, dict[int, list[list[Buffer]]]]:
        return self.transfers.lent

    @property
    def tasks(self) -> dict[str, WorkerTask]:
        return self.state.tasks

    @property
    def paused(self) -> bool:
        return self.state.paused

    @property
    def executed(self) -> int:
        return self.state.executed

    # ------------------------------------------------------------------ life
    async def start(self) -> str:
        pool = self.settings.receive_pool_bytes
        if self.memory_limit:
            pool = min(pool, self.memory_limit // 8)
        framing.POOL.limit = pool
        framing.POOL.idle_release = None  # kept until memory runs high (``_spill``)
        heap.keep_warm(pool)
        self.threads.start(asyncio.get_running_loop())
        bound = await self.listener.start(self.host, self.port)
        self.address = self.listener.address = advertise(
            bound, self.host, self.contact_address, self.scheduler_address
        )
        # The scheduler may not be up yet (or be restarting): keep trying until timeout.
        await until_reached(self._register, self.scheduler_address, self.timeout)
        spawn(self._heartbeats(), self.tasks_bg, "worker-heartbeat")
        if self.memory_limit:
            spawn(self._memory_monitor(), self.tasks_bg, "worker-memory")
        return self.address

    async def _register(self, timeout: float | None = None) -> None:
        """Connect to the scheduler and register (again, after a lost connection)."""
        msg = RegisterWorkerMsg(
            id=self.id,
            address=self.address,
            name=self.name or self.address,
            nthreads=self.nthreads,
            pid=os.getpid(),
            memory_limit=self.memory_limit,
            nanny=self.nanny,
            keys=[(k, self.data.size_of(k)) for k in self.data],
            resources=self.resources,
        )
        comm, reply = await register_with(
            self.scheduler_address,
            msg,
            WorkerRegisteredMsg,
            "registration",
            token=self.token,
            settings=self.settings,
            security=self.security,
            timeout=timeout,
        )
        drop = reply.drop
        if drop:
            logger.warning(
                "the scheduler had removed this worker; dropping %d keys", len(self.data)
            )
        self.scheduler = comm
        self.handle(wev.SchedulerReconnected(drop=drop, stimulus_id=self._sid("registered")))
        spawn(self._scheduler_loop(comm), self.tasks_bg, "worker-scheduler-loop")
        logger.info("worker %s registered with %s", self.address, self.scheduler_address)

    async def close(self) -> None:
        await close_once(self.stopped, self.closed, self._shutdown)

    async def _shutdown(self) -> None:
        # Files in /dev/shm that no requester mapped yet: their timers die with us. First
        # of all, before anything awaited: a nanny out of patience may kill us any time now.
        self.transfers.close()
        if self.scheduler is not None:
            await self.scheduler.close()
        await cancel_others(self.tasks_bg)
        await self.listener.close()
        self.threads.stop()
        self.extras.close()
        self.data.close()

    async def _scheduler_loop(self, comm: Connection) -> None:
        try:
            while True:
                msg, frames = await comm.recv()
                try:
                    self._scheduler_message(msg, frames)
                except Exception as exc:
                    refuse(comm, msg, exc, "the scheduler", logger)
        except CommClosedError:
            pass
        if self.stopped.is_set():
            return
        logger.log(
            logging.INFO if self._scheduler_closing else logging.WARNING,
            "lost the scheduler at %s; reconnecting",
            self.scheduler_address,
        )
        self.handle(wev.SchedulerLost(stimulus_id=self._sid("scheduler-lost")))
        if not await reconnect(
            self._register, self.scheduler_address, self.death_timeout, self.stopped
        ):
            await self.close()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            heap.tidy()  # before memory is measured: what it gives back is not counted
            self._send(
                HeartbeatMsg(
                    memory=self._memory(),
                    managed=self.data.fast_bytes,
                    spilled=self.data.slow_bytes,
                    executing=self.state.in_threads,
                    in_flight=self.transfers.in_flight,
                    cpu=round(self._proc.cpu_percent(None)),
                    sent=self.transfers.sent,
                    received=self.transfers.received,
                )
            )

    def _memory(self) -> int:
        """What the memory limit counts (worker.memory): with what is being sent."""
        return memory.used(self._proc.pid)

    async def _memory_monitor(self) -> None:
        """Sample memory use for the core, which decides on spilling and pausing."""
        while True:
            await asyncio.sleep(self.settings.memory_monitor_interval)
            self.handle(wev.MemorySampled(rss=self._memory(), stimulus_id=self._sid("memory")))

    async def _spill(self, nbytes: int) -> None:
        """Free about ``nbytes``: kept receive buffers and freed heap memory first, then
        results to disk."""
        before = self._memory()
        if framing.POOL.trim() | heap.give_back():
            nbytes -= before - self._memory()
        if nbytes > 0 and self.data.fast:
            # Spill in a thread: writing files must not stall the event loop.
            await asyncio.to_thread(self.data.spill, nbytes)
        self.handle(
            wev.MemorySampled(
                rss=self._memory(), after_spill=True, stimulus_id=self._sid("spilled")
            )
        )

    # --------------------------------------------------------------- the core
    def _sid(self, prefix: str) -> str:
        return f"{prefix}-{next(self._stimuli)}"

    def handle(self, *events: wev.WorkerEvent) -> None:
        for instruction in self.state.handle(*events):
            self._carry_out(instruction)
        if self.extras.plugins:
            self.extras.tell(self.state)

    def _outcomes(self, events: list[Outcome]) -> None:
        if not self.stopped.is_set():
            self.handle(*events)
            return
        for event in events:  # no one wants them now; sealed copies are let go
            if isinstance(event, wev.ExecuteSucceeded) and isinstance(event.sealed, shm.Sealed):
                event.sealed.close()

    def _data_put(self, data: dict[str, tuple[int, str]]) -> None:
        self.handle(wev.DataPut(data=data, stimulus_id=self._sid("put-data")))

    def _carry_out(self, instruction: ins.Instruction) -> None:
        match instruction:
            case ins.SendStarted():
                self._send(StartedMsg(keys=list(instruction.keys)))
                # Out on the socket before the task can kill us (see WorkerState).
                if self.scheduler is not None:
                    self.scheduler.flush()
            case ins.SendLongRunning():
                self._send(LongRunningMsg(key=instruction.key, run_id=instruction.run_id))
            case ins.Execute():
                spec = instruction.run_spec
                assert isinstance(spec, RunSpec)
                self.threads.submit(instruction.key, instruction.attempt, spec)
            case ins.SendFinished():
                self._send(
                    TaskFinishedMsg(
                        key=instruction.key,
                        run_id=instruction.run_id,
                        nbytes=instruction.nbytes,
                        type_name=instruction.type_name,
                        duration=instruction.duration or 0.0,
                        inline=instruction.inline,
                    )
                )
            case ins.SendErred():
                blob, tb, text = serialize_error(instruction.error)
                err = TaskErredMsg(
                    key=instruction.key,
                    run_id=instruction.run_id,
                    text=text,
                    duration=instruction.duration or 0.0,
                )
                self._send(err, [blob, tb])
            case ins.StoreData():
                sealed = instruction.sealed
                assert sealed is None or isinstance(sealed, shm.Sealed)
                self.data.set(instruction.key, instruction.value, instruction.nbytes, sealed)
            case ins.DiscardResult():
                sealed = instruction.sealed
                if isinstance(sealed, shm.Sealed):
                    sealed.close()
            case ins.DeleteData():
                for key in instruction.keys:
                    if key in self.data:
                        del self.data[key]
            case ins.Gather():
                spawn(
                    self._gather(instruction.holder, list(instruction.keys)),
                    self.tasks_bg,
                    "gather",
                )
            case ins.SendAddReplicas():
                self._send(AddReplicasMsg(keys=list(instruction.keys)))
            case ins.SendDependencyMissing():
                self._send(
                    DependencyMissingMsg(
                        key=instruction.key,
                        dependency=instruction.dependency,
                        holders=list(instruction.holders),
                    )
                )
            case ins.SendStealResponse():
                self._send(StealResponseMsg(key=instruction.key, stolen=instruction.stolen))
            case ins.SendPaused():
                if instruction.paused:
                    logger.warning("worker %s paused: memory above the limit", self.address)
                else:
                    logger.warning("worker %s resumed", self.address)
                self._send(PausedMsg(paused=instruction.paused))
            case ins.Abandon():
                self.threads.abandon(instruction.key, instruction.attempt)
            case ins.InterruptThread():
                self.threads.interrupt(instruction.key, instruction.attempt)
                spawn(
                    self._interrupt_deadline(instruction.key, instruction.attempt),
                    self.tasks_bg,
                    f"interrupt-{instruction.key}",
                )
            case ins.Spill():
                spawn(self._spill(instruction.nbytes), self.tasks_bg, "spill")
            case ins.ExitForNanny():
                spawn(self._exit_for_nanny(instruction.reason), self.tasks_bg, "exit")
            case ins.LogWarning():
                logger.warning("%s", instruction.text)
            case _:
                raise TypeError(f"the worker shell cannot carry out {instruction!r}")

    async def _gather(self, holder: str, keys: list[str]) -> None:
        got: dict[str, tuple[int, str]] = {}
        refusal: BaseException | None = None
        try:
            got, refusal = await self.transfers.fetch(holder, keys)
        finally:
            if not self.stopped.is_set():
                self.handle(
                    wev.GatherFinished(
                        holder=holder,
                        keys=tuple(keys),
                        got=got,
                        refusal=refusal,
                        stimulus_id=self._sid("gathered"),
                    )
                )

    async def _interrupt_deadline(self, key: str, attempt: int) -> None:
        await asyncio.sleep(self.settings.cancel_grace)
        self.handle(
            wev.InterruptDeadlinePassed(
                key=key,
                attempt=attempt,
                started=self.threads.began(key, attempt),
                stimulus_id=self._sid("interrupt-deadline"),
            )
        )

    def check_imports(self, exc: BaseException, what: str) -> None:
        """Exit for the nanny to start a fresh worker if ``exc`` shows that this
        interpreter can no longer import some package (``execution.broken_imports``):
        every later task needing it would fail here. ``what`` failed with ``exc``."""
        reason = broken_imports(exc)
        if reason is None or self._imports_broken:
            return
        self._imports_broken = True
        if not self.nanny:
            logger.error("%s: %s; this worker has no nanny to replace it", what, reason)
            return
        spawn(self._exit_for_nanny(f"{what}: {reason}"), self.tasks_bg, "exit")

    async def _exit_for_nanny(self, reason: str) -> None:
        logger.warning("%s; exiting so that the nanny starts a fresh worker", reason)
        self._send(RetiringMsg(reason=reason))
        if self.scheduler is not None:
            with contextlib.suppress(CommClosedError):
                await self.scheduler.drain()
        os._exit(75)

    # ------------------------------------------------------ scheduler orders
    def _scheduler_message(self, msg: Message, frames: list[Buffer]) -> None:
        match msg:
            case ComputeMsg():
                inputs = msg.inline or {}
                if not 0 < msg.fn_frames < len(frames):
                    raise ProtocolError(
                        f"compute: {len(frames)} frames, {msg.fn_frames} of them the function"
                    )
                self.handle(
                    wev.ComputeRequested(
                        key=msg.key,
                        run_id=msg.run_id,
                        priority=msg.priority,
                        who_has=msg.who_has,
                        inline=tuple(inputs),
                        run_spec=RunSpec(msg.fn_frames, frames, inputs),
                        stimulus_id=f"compute-{msg.key}",
                    )
                )
            case FreeKeysMsg():
                self.handle(wev.KeysFreed(keys=tuple(msg.keys), stimulus_id=self._sid("free")))
            case StealMsg():
                self.handle(wev.StealRequested(key=msg.key, stimulus_id=self._sid("steal")))
            case InterruptMsg():
                self.handle(wev.InterruptRequested(key=msg.key, stimulus_id=self._sid("interrupt")))
            case AcquireReplicasMsg():
                self.handle(
                    wev.ReplicasRequested(who_has=msg.who_has, stimulus_id=self._sid("replicas"))
                )
            case DropStateMsg():
                self.handle(wev.StateDropped(stimulus_id=self._sid("drop-state")))
            case CloseMsg():
                spawn(self.close(), self.tasks_bg, "worker-close")
            case SchedulerClosingMsg():
                self._scheduler_closing = True
            case WorkerRegisteredMsg():
                pass
            case ExtraMsg():
                # In order with the tasks that follow: they may import what it brings.
                error = self.extras.apply(msg.kind, msg.name, msg.payload)
                if self.scheduler is not None:
                    errors = {self.address: error} if error else {}
                    self.scheduler.reply(msg, ExtraReply(errors=errors))
            case _:
                raise ProtocolError(f"the scheduler does not send {op_of(msg)!r}")

    def _send(self, msg: Message, frames: Sequence[Buffer] = ()) -> None:
        if self.scheduler is not None and not self.scheduler.closed:
            self.scheduler.send(msg, frames)
