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
from regrow.protocol import framing, shm, stripe
from regrow.protocol.comm import (
    Connection,
    ConnectionPool,
    Listener,
    cancel_others,
    close_once,
    connect,
    reconnect_delays,
    spawn,
)
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Msg, get, get_str_list
from regrow.worker.execution import (
    Outcome,
    RunSpec,
    TaskInterrupted,
    TaskThreads,
    get_worker,
    serialize_error,
)
from regrow.worker.spill import SpillBuffer
from regrow.worker.transfer import Transfers

__all__ = ["TaskInterrupted", "Worker", "get_worker"]

logger = logging.getLogger("regrow.worker")


def _inputs(msg: Msg) -> dict[str, bytes]:
    """The serialized inputs a compute order carries (see SchedulerState._send_to)."""
    inputs = msg.get("inline") or {}
    if not isinstance(inputs, dict) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in inputs.items()
    ):
        raise ProtocolError("'inline' must map keys to bytes")
    return inputs


def _who_has(msg: Msg) -> dict[str, list[str]]:
    """A compute order's dependencies and their holders, checked."""
    who_has = get(msg, "who_has", dict)
    for dep, holders in who_has.items():
        if not (
            isinstance(dep, str)
            and isinstance(holders, list)
            and all(isinstance(h, str) for h in holders)
        ):
            raise ProtocolError("'who_has' must map keys to lists of worker addresses")
    return who_has


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
    ) -> None:
        if nthreads < 1:
            raise ValueError(f"nthreads must be at least 1, got {nthreads}")
        self.scheduler_address = scheduler_address
        self.nthreads = nthreads
        self.name = name
        self.token = token
        self.host = host
        self.port = port
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
            self, self.data, self.settings, token, self.host_id, on_put=self._data_put
        )
        self.threads = TaskThreads(
            self,
            nthreads,
            self.settings,
            self.data,
            deliver=self._outcomes,
            seal_results=self.settings.seal_results and bool(self.host_id),
        )
        self.listener = Listener(self.transfers.serve, token=token, settings=self.settings)
        self.scheduler: Connection | None = None
        self._scheduler_closing = False
        self._stimuli = itertools.count()
        self._proc = psutil.Process()  # this process: heartbeats and memory samples
        self.tasks_bg: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.closed = asyncio.Event()

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
        self.threads.start(asyncio.get_running_loop())
        self.address = await self.listener.start(self.host, self.port)
        await self._register()
        spawn(self._heartbeats(), self.tasks_bg, "worker-heartbeat")
        if self.memory_limit:
            spawn(self._memory_monitor(), self.tasks_bg, "worker-memory")
        return self.address

    async def _register(self) -> None:
        """Connect to the scheduler and register (again, after a lost connection)."""
        comm = await connect(self.scheduler_address, token=self.token, settings=self.settings)
        comm.send(
            {
                "op": "register-worker",
                "id": self.id,
                "address": self.address,
                "name": self.name or self.address,
                "nthreads": self.nthreads,
                "pid": os.getpid(),
                "memory_limit": self.memory_limit,
                "nanny": self.nanny,
                "keys": [[k, self.data.size_of(k)] for k in self.data],
            }
        )
        reply, _ = await comm.recv()
        if reply["op"] != "registered":
            await comm.close()
            raise ProtocolError(f"scheduler refused registration: {reply.get('error')}")
        drop = bool(reply.get("drop"))
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
        self.data.close()

    async def _scheduler_loop(self, comm: Connection) -> None:
        try:
            while True:
                msg, frames = await comm.recv()
                try:
                    self._scheduler_message(msg, frames)
                except ProtocolError as exc:
                    logger.warning("bad message from scheduler: %s", exc)
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
        delays = reconnect_delays()
        while not self.stopped.is_set():
            try:
                await self._register()
                return
            except (OSError, TimeoutError, CommClosedError, ProtocolError) as exc:
                delay = next(delays)
                logger.info("scheduler still unreachable (%s); next try in %.2f s", exc, delay)
            await asyncio.sleep(delay)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            self._send(
                {
                    "op": "heartbeat",
                    "memory": self._proc.memory_info().rss,
                    "managed": self.data.fast_bytes,
                    "spilled": self.data.slow_bytes,
                    "executing": self.state.in_threads,
                }
            )

    async def _memory_monitor(self) -> None:
        """Sample memory use for the core, which decides on spilling and pausing."""
        while True:
            await asyncio.sleep(self.settings.memory_monitor_interval)
            self.handle(
                wev.MemorySampled(rss=self._proc.memory_info().rss, stimulus_id=self._sid("memory"))
            )

    async def _spill(self, nbytes: int) -> None:
        """Free about ``nbytes``: kept receive buffers first, then results to disk."""
        before = self._proc.memory_info().rss
        if framing.POOL.trim():
            nbytes -= before - self._proc.memory_info().rss
        if nbytes > 0 and self.data.fast:
            # Spill in a thread: writing files must not stall the event loop.
            await asyncio.to_thread(self.data.spill, nbytes)
        self.handle(
            wev.MemorySampled(
                rss=self._proc.memory_info().rss, after_spill=True, stimulus_id=self._sid("spilled")
            )
        )

    # --------------------------------------------------------------- the core
    def _sid(self, prefix: str) -> str:
        return f"{prefix}-{next(self._stimuli)}"

    def handle(self, *events: wev.WorkerEvent) -> None:
        for instruction in self.state.handle(*events):
            self._carry_out(instruction)

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
                self._send({"op": "started", "keys": list(instruction.keys)})
                # Out on the socket before the task can kill us (see WorkerState).
                if self.scheduler is not None:
                    self.scheduler.flush()
            case ins.Execute():
                spec = instruction.run_spec
                assert isinstance(spec, RunSpec)
                self.threads.submit(instruction.key, instruction.attempt, spec)
            case ins.SendFinished():
                msg: Msg = {
                    "op": "task-finished",
                    "key": instruction.key,
                    "run": instruction.run_id,
                    "nbytes": instruction.nbytes,
                    "type": instruction.type_name,
                }
                if instruction.duration is not None:
                    msg["duration"] = instruction.duration
                if instruction.inline is not None:
                    msg["inline"] = instruction.inline
                self._send(msg)
            case ins.SendErred():
                blob, tb, text = serialize_error(instruction.error)
                err: Msg = {
                    "op": "task-erred",
                    "key": instruction.key,
                    "run": instruction.run_id,
                    "text": text,
                }
                if instruction.duration is not None:
                    err["duration"] = instruction.duration
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
                self._send({"op": "add-replicas", "keys": list(instruction.keys)})
            case ins.SendDependencyMissing():
                self._send(
                    {
                        "op": "dependency-missing",
                        "key": instruction.key,
                        "dependency": instruction.dependency,
                        "holders": list(instruction.holders),
                    }
                )
            case ins.SendStealResponse():
                self._send(
                    {"op": "steal-response", "key": instruction.key, "stolen": instruction.stolen}
                )
            case ins.SendPaused():
                if instruction.paused:
                    logger.warning("worker %s paused: memory above the limit", self.address)
                else:
                    logger.warning("worker %s resumed", self.address)
                self._send({"op": "paused", "paused": instruction.paused})
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

    async def _exit_for_nanny(self, reason: str) -> None:
        logger.warning("%s; exiting so that the nanny starts a fresh worker", reason)
        self._send({"op": "retiring", "reason": reason})
        if self.scheduler is not None:
            with contextlib.suppress(CommClosedError):
                await self.scheduler.drain()
        os._exit(75)

    # ------------------------------------------------------ scheduler orders
    def _scheduler_message(self, msg: Msg, frames: list[Buffer]) -> None:
        op = msg["op"]
        if op == "compute":
            inputs = _inputs(msg)
            key = get(msg, "key", str)
            self.handle(
                wev.ComputeRequested(
                    key=key,
                    run_id=get(msg, "run", int),
                    priority=tuple(get(msg, "priority", list)),
                    who_has=_who_has(msg),
                    inline=tuple(inputs),
                    run_spec=RunSpec(get(msg, "fnf", int), frames, inputs),
                    stimulus_id=f"compute-{key}",
                )
            )
        elif op == "free-keys":
            self.handle(
                wev.KeysFreed(keys=tuple(get_str_list(msg, "keys")), stimulus_id=self._sid("free"))
            )
        elif op == "steal":
            self.handle(
                wev.StealRequested(key=get(msg, "key", str), stimulus_id=self._sid("steal"))
            )
        elif op == "interrupt":
            self.handle(
                wev.InterruptRequested(key=get(msg, "key", str), stimulus_id=self._sid("interrupt"))
            )
        elif op == "acquire-replicas":
            self.handle(
                wev.ReplicasRequested(who_has=_who_has(msg), stimulus_id=self._sid("replicas"))
            )
        elif op == "drop-state":
            self.handle(wev.StateDropped(stimulus_id=self._sid("drop-state")))
        elif op == "close":
            spawn(self.close(), self.tasks_bg, "worker-close")
        elif op == "scheduler-closing":
            self._scheduler_closing = True
        elif op == "registered":
            pass
        else:
            raise ProtocolError(f"unknown op {op!r} from scheduler")

    def _send(self, msg: Msg, frames: Sequence[Buffer] = ()) -> None:
        if self.scheduler is not None and not self.scheduler.closed:
            self.scheduler.send(msg, frames)
