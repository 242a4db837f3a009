"""The worker: runs tasks in a thread pool, keeps results, serves them to peers.

Owns: the data store, the thread pool, the connection to the scheduler, the
listener peers and clients fetch from, and the connections to peers it fetches
from. It never decides where work goes; it does what the scheduler says and
reports what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import logging
import os
import queue
import threading
import time
import traceback
import uuid
from collections import ChainMap
from collections.abc import Mapping, Sequence
from typing import Any, cast

import cloudpickle
import psutil

from regrow.config import Settings
from regrow.errors import CommClosedError, ProtocolError, RemoteError
from regrow.protocol import framing, lend, shm, stripe
from regrow.protocol.comm import (
    Connection,
    ConnectionPool,
    Listener,
    cancel_others,
    close_once,
    connect,
    error_reply,
    spawn,
)
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Msg, get, get_str_list
from regrow.protocol.serialize import dumps, loads, loads_with_refs, sizeof
from regrow.worker.spill import SpillBuffer

logger = logging.getLogger("regrow.worker")

FETCHING = "fetching"
READY = "ready"
EXECUTING = "executing"
CANCELLED = "cancelled"
# Tasks shorter than this (s, on average) are handed to the threads AHEAD at a time
# beyond the one each runs (see Worker._run_ready).
SHORT_TASK = 0.005
AHEAD = 3

_thread_state = threading.local()

# Unpickling imports modules (numpy, say, on its first use in this process). When two
# threads import the same package at once, one of them can get it half-initialised
# ("ImportError: ... partially initialized module"), so the worker unpickles in one
# thread at a time: the IO thread (data from peers and clients) and the task threads.
_unpickle_lock = threading.RLock()


def _inputs(msg: Msg) -> dict[str, bytes]:
    """The serialized inputs a compute order carries (see SchedulerState._send_to)."""
    inputs = msg.get("inline") or {}
    if not isinstance(inputs, dict) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in inputs.items()
    ):
        raise ProtocolError("'inline' must map keys to bytes")
    return inputs


def _loads(frames: Sequence[Buffer]) -> Any:
    with _unpickle_lock:
        return loads(frames)


def get_worker() -> Worker:
    """The worker running the current task (call from inside a task)."""
    worker = getattr(_thread_state, "worker", None)
    if worker is None:
        raise ValueError("get_worker() called outside of a task running on a regrow worker")
    return worker  # type: ignore[no-any-return]


class TaskInterrupted(BaseException):
    """Raised inside a task's thread by ``cancel(force=True)``.

    A BaseException, so that user code catching ``Exception`` does not swallow it.
    """


class _Unavailable(Exception):
    """No holder of a dependency could be reached, or none had it (it may be recomputed)."""


class _Task:
    __slots__ = (
        "fnf",
        "frames",
        "in_user_code",
        "inline",
        "inputs",
        "key",
        "lock",
        "nbytes",
        "orphaned",
        "priority",
        "rerun",
        "run_id",
        "sealed",
        "started",
        "state",
        "thread",
        "who_has",
    )

    def __init__(
        self,
        key: str,
        priority: tuple[int, ...],
        fnf: int,
        frames: list[Buffer],
        who_has: dict[str, list[str]],
        run_id: int,
        inputs: dict[str, bytes] | None = None,
    ) -> None:
        self.key = key
        self.run_id = run_id
        self.priority = priority
        self.fnf = fnf
        self.frames = frames
        self.who_has = who_has
        self.state = FETCHING
        self.started = 0.0
        self.thread = 0
        self.orphaned = False
        self.in_user_code = False
        self.lock = threading.Lock()
        # Its result's size, and the sealed copy of a large result (shm.seal).
        self.nbytes = 0
        self.sealed: shm.Sealed | None = None
        # Inputs that came with the order (small results the scheduler keeps), serialized.
        self.inputs = inputs or {}
        # Its result serialized, when small enough to go to the scheduler with the news.
        self.inline: bytes | None = None
        # Cancelled while its thread runs, then asked for again: the compute order to
        # carry out once that thread is done.
        self.rerun: tuple[Msg, list[Buffer]] | None = None


def _seal(value: Any) -> tuple[Any, shm.Sealed | None]:
    """A large result, rebuilt on a sealed shared-memory copy of its buffers (shm.seal).

    The copy is made once, here in the task's thread, so that peers on this host later
    take the value with no copy. Only kept when the rebuilt value really lives on the
    shared pages (numpy arrays and the like do; a type that copies its buffers when
    unpickled would only double its memory): else the value stays as it was.
    """
    try:
        frames = dumps(value)
        made = shm.seal(frames)
    except Exception:
        return value, None  # not picklable: it stays in memory, fetched (or not) as before
    if made is None:
        return value, None
    record, mine = made
    mapping = cast(memoryview, mine[record.layout[0][0]]).obj
    try:
        rebuilt = _loads(mine)
    except Exception:
        rebuilt = None
    del mine
    try:
        mapping.close()  # type: ignore[attr-defined]
    except BufferError:
        return rebuilt, record  # the rebuilt value holds the mapping: it is zero-copy
    record.close()
    return value, None


def _serialize_error(exc: BaseException) -> tuple[bytes, bytes, str]:
    """Pickle an exception so it arrives as itself, or as a RemoteError naming it."""
    text = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    tb_text = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        cloudpickle.loads(blob)  # an exception that pickles but cannot unpickle is no use
    except Exception:
        blob = cloudpickle.dumps(RemoteError(type(exc).__name__, str(exc)), protocol=5)
    return blob, tb_text.encode(), text


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
        self.data = SpillBuffer(
            target=int(memory_limit * self.settings.memory_target_fraction), directory=spill_dir
        )
        self.host_id = shm.HOST if self.settings.shared_memory else ""
        # Files exported to /dev/shm for a requester to map (shm.export), by path.
        self._exported: dict[str, dict[str, Any]] = {}
        # Buffers lent to peers (protocol.lend), by connection and lend id.
        self._lent: dict[Connection, dict[int, list[list[Buffer]]]] = {}
        # Large frames kept for requesters on other hosts to fetch in parts.
        self.striped = stripe.Holdings()
        self._lend_ids = itertools.count(1)
        self.seal_results = self.settings.seal_results and bool(self.host_id)
        self.paused = False
        self._scheduler_closing = False
        self.tasks: dict[str, _Task] = {}
        self.address = ""
        # Task threads take tasks from _work and hand outcomes back through _outcomes:
        # one wake-up of the event loop per batch of outcomes, not one per task.
        self._work: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._outcomes: list[tuple[_Task, tuple[bool, Any, float]]] = []
        self._outcomes_lock = threading.Lock()
        self._drain_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = [
            threading.Thread(target=self._task_thread, name=f"regrow-task-{i}", daemon=True)
            for i in range(nthreads)
        ]
        self.listener = Listener(self._handle_peer, token=token, settings=self.settings)
        self.scheduler: Connection | None = None
        self.peers = ConnectionPool(token=token, settings=self.settings, hello={"op": "hello-peer"})
        self._ready: list[tuple[tuple[int, ...], int, str]] = []
        self._seq = itertools.count()
        self._executing = 0
        # Recent task durations (s, moving average): short tasks are handed to the
        # threads a few ahead (see _run_ready).
        self._avg_duration = 1.0
        # Dependencies being fetched: each resolves to None once here, else to why not.
        self._inflight: dict[str, asyncio.Future[BaseException | None]] = {}
        self._fn_cache: dict[bytes, Any] = {}
        self.tasks_bg: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.closed = asyncio.Event()
        self.executed = 0

    # ------------------------------------------------------------------ life
    async def start(self) -> str:
        pool = self.settings.receive_pool_bytes
        if self.memory_limit:
            pool = min(pool, self.memory_limit // 8)
        framing.POOL.limit = pool
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
        if reply.get("drop"):
            # The scheduler removed us while we were away: what we hold is stale.
            logger.warning(
                "the scheduler had removed this worker; dropping %d keys", len(self.data)
            )
            for key in list(self.data):
                del self.data[key]
            for t in self.tasks.values():
                t.orphaned = False  # what still runs from before is stale too
        self.scheduler = comm
        if self.paused:
            comm.send({"op": "paused", "paused": True})
        spawn(self._scheduler_loop(comm), self.tasks_bg, "worker-scheduler-loop")
        logger.info("worker %s registered with %s", self.address, self.scheduler_address)

    async def close(self) -> None:
        await close_once(self.stopped, self.closed, self._shutdown)

    async def _shutdown(self) -> None:
        # Files in /dev/shm that no requester mapped yet: their timers die with us. First
        # of all, before anything awaited: a nanny out of patience may kill us any time now.
        for info in list(self._exported.values()):
            self._discard_export(info)
        if self.scheduler is not None:
            await self.scheduler.close()
        self.peers.close()
        await cancel_others(self.tasks_bg)
        await self.listener.close()
        for _ in self._threads:
            self._work.put(None)
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
        self._forget_tasks()
        delay = 0.05
        while not self.stopped.is_set():
            try:
                await self._register()
                return
            except (OSError, TimeoutError, CommClosedError, ProtocolError) as exc:
                logger.info("scheduler still unreachable (%s); next try in %.2f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)  # a restarted scheduler is found fast

    def _forget_tasks(self) -> None:
        """Without a scheduler our assignments are void (they were given to others); data stays."""
        for key in list(self.tasks):
            t = self.tasks[key]
            if t.state in (EXECUTING, CANCELLED):  # its thread still runs
                # Keep what it computes: a scheduler restarted from its journal adopts it.
                t.orphaned = t.state == EXECUTING
                t.state = CANCELLED
                t.rerun = None
            else:
                t.state = CANCELLED
                del self.tasks[key]
        self._ready.clear()

    async def _heartbeats(self) -> None:
        proc = psutil.Process()
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            self._send(
                {
                    "op": "heartbeat",
                    "memory": proc.memory_info().rss,
                    "managed": self.data.fast_bytes,
                    "spilled": self.data.slow_bytes,
                    "executing": self._executing,
                }
            )

    async def _memory_monitor(self) -> None:
        """Spill above the target fraction, pause above the pause fraction."""
        proc = psutil.Process()
        limit = self.memory_limit
        target = limit * self.settings.memory_target_fraction
        pause = limit * self.settings.memory_pause_fraction
        while True:
            await asyncio.sleep(self.settings.memory_monitor_interval)
            rss = proc.memory_info().rss
            if rss > target and framing.POOL.trim():
                rss = proc.memory_info().rss  # kept receive buffers go before any data
            if rss > target and self.data.fast:
                # Spill in a thread: writing files must not stall the event loop.
                await asyncio.to_thread(self.data.spill, int(rss - target))
                rss = proc.memory_info().rss
            paused = rss > pause if not self.paused else rss > target
            if paused != self.paused:
                self.paused = paused
                logger.warning(
                    "worker %s %s: %d MiB of %d MiB used",
                    self.address,
                    "paused" if paused else "resumed",
                    rss >> 20,
                    limit >> 20,
                )
                self._send({"op": "paused", "paused": paused})
                if not paused:
                    self._run_ready()

    # ------------------------------------------------------ scheduler orders
    def _scheduler_message(self, msg: Msg, frames: list[Buffer]) -> None:
        op = msg["op"]
        if op == "compute":
            self._compute(msg, frames)
        elif op == "free-keys":
            for key in get_str_list(msg, "keys"):
                self._free(key)
        elif op == "steal":
            key = get(msg, "key", str)
            t = self.tasks.get(key)
            stolen = t is not None and t.state in (FETCHING, READY)
            if stolen:
                self._free(key)
            self._send({"op": "steal-response", "key": key, "stolen": stolen})
        elif op == "interrupt":
            self._interrupt(get(msg, "key", str))
        elif op == "acquire-replicas":
            who_has: dict[str, list[str]] = get(msg, "who_has", dict)
            by_holder: dict[str, list[str]] = {}
            for key, holders in who_has.items():
                if key not in self.data and key not in self._inflight and holders:
                    by_holder.setdefault(holders[0], []).append(key)
            for holder, keys in by_holder.items():
                spawn(self._fetch(keys, who_has, first=holder), self.tasks_bg, "replicate")
        elif op == "drop-state":
            self._forget_tasks()
            for key in list(self.data):
                del self.data[key]
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

    def _compute(self, msg: Msg, frames: list[Buffer]) -> None:
        key = get(msg, "key", str)
        run_id = get(msg, "run", int)
        old = self.tasks.get(key)
        if old is not None:
            if old.state == CANCELLED:
                # Freed while its thread still runs (that cannot be stopped): once it is
                # done, this order is carried out, or else it would be lost.
                old.rerun = (msg, frames)
            else:
                # Sent again (a restarted scheduler): the run under way serves the new order.
                old.run_id = run_id
            return
        if key in self.data:
            self._send(
                {
                    "op": "task-finished",
                    "key": key,
                    "run": run_id,
                    "nbytes": self.data.size_of(key),
                    "type": type(self.data[key]).__name__,
                }
            )
            return
        who_has = get(msg, "who_has", dict)
        inputs = _inputs(msg)
        t = _Task(
            key,
            tuple(get(msg, "priority", list)),
            get(msg, "fnf", int),
            frames,
            who_has,
            run_id,
            inputs,
        )
        self.tasks[key] = t
        missing = [d for d in who_has if d not in self.data and d not in inputs]
        if missing:
            spawn(self._gather_deps(t, missing), self.tasks_bg, f"fetch-{key}")
        else:
            self._make_ready(t)

    def _make_ready(self, t: _Task) -> None:
        t.state = READY
        heapq.heappush(self._ready, (t.priority, next(self._seq), t.key))
        self._run_ready()

    def _free(self, key: str) -> None:
        if key in self.data:
            del self.data[key]
        t = self.tasks.get(key)
        if t is None:
            return
        if t.state in (EXECUTING, CANCELLED):
            t.state = CANCELLED  # the thread cannot be stopped; its result is dropped
            t.rerun = None
        else:
            t.state = CANCELLED
            del self.tasks[key]

    # ------------------------------------------------------------- fetching
    async def _gather_deps(self, t: _Task, missing: list[str]) -> None:
        waits: dict[str, asyncio.Future[BaseException | None]] = {}
        by_holder: dict[str, list[str]] = {}
        loop = asyncio.get_running_loop()
        for dep in missing:
            fut = self._inflight.get(dep)
            if fut is None:
                fut = self._inflight[dep] = loop.create_future()
                holders = t.who_has.get(dep) or []
                by_holder.setdefault(holders[0] if holders else "", []).append(dep)
            waits[dep] = fut
        for holder, keys in by_holder.items():
            spawn(self._fetch(keys, t.who_has, first=holder), self.tasks_bg, "fetch")
        outcomes = {dep: await fut for dep, fut in waits.items()}
        if t.state == CANCELLED or self.tasks.get(t.key) is not t:
            return
        failed = [dep for dep, why in outcomes.items() if why is not None and dep not in self.data]
        refusal = next(
            (outcomes[dep] for dep in failed if not isinstance(outcomes[dep], _Unavailable)), None
        )
        if refusal is not None:
            # A holder answered, but the value cannot travel (it does not pickle there, or
            # does not unpickle here): trying again would fail again, so the task errs.
            del self.tasks[t.key]
            t.state = CANCELLED
            blob, tb, text = _serialize_error(refusal)
            self._send(
                {"op": "task-erred", "key": t.key, "run": t.run_id, "text": text}, [blob, tb]
            )
            return
        if failed:
            del self.tasks[t.key]
            t.state = CANCELLED
            self._send(
                {
                    "op": "dependency-missing",
                    "key": t.key,
                    "dependency": failed[0],
                    "holders": t.who_has.get(failed[0]) or [],
                }
            )
            return
        self._make_ready(t)

    async def _fetch(self, keys: list[str], who_has: dict[str, list[str]], first: str) -> None:
        """Fetch ``keys`` from their holders, trying each in turn; resolve the in-flight futures."""
        remaining = list(keys)
        tried: set[str] = set()
        holder = first
        why: BaseException = _Unavailable(f"no holder of {keys} could send it")
        try:
            while remaining and holder:
                tried.add(holder)
                got, refusal = await self._get_data(holder, remaining)
                if refusal is not None:
                    why = refusal
                if got:
                    self._send({"op": "add-replicas", "keys": list(got)})
                for key in got:
                    fut = self._inflight.pop(key, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                remaining = [k for k in remaining if k not in got]
                holder = next(
                    (h for k in remaining for h in who_has.get(k) or [] if h not in tried), ""
                )
        finally:
            for key in remaining:
                fut = self._inflight.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(why)

    async def _get_data(
        self, holder: str, keys: list[str]
    ) -> tuple[list[str], BaseException | None]:
        """Fetch what ``holder`` has of ``keys``: the keys got, and the error if ``holder``
        answered but its data cannot reach us (it failed to serialize it, or we fail to
        deserialize it). Not being able to talk to ``holder`` is no such error."""
        idle_timeout = self.settings.heartbeat_timeout + 2
        streams = self.settings.transfer_streams

        async def striped(description: Any, frames: list[Buffer]) -> list[Buffer]:
            return await stripe.receive(
                self.peers, holder, description, frames, streams, idle_timeout
            )

        try:
            comm = await self.peers.get(holder)
            try:
                values = await shm.get_data(
                    comm, keys, self.host_id, idle_timeout, striped=striped, streams=streams
                )
            except stripe.PartsFailed as exc:
                if comm.closed or isinstance(exc.__cause__, TimeoutError):
                    raise  # the holder is gone, or not answering: asking again won't help
                # The holder is there but its parts did not come: once more, whole.
                logger.warning("fetching parts from %s failed (%s); fetching whole", holder, exc)
                values = await shm.get_data(comm, keys, self.host_id, idle_timeout)
        except (OSError, CommClosedError, TimeoutError, ProtocolError) as exc:
            logger.warning("could not fetch %d key(s) from %s: %s", len(keys), holder, exc)
            return [], None
        except Exception as exc:  # the holder's error reply, or one we cannot read
            logger.warning("%s cannot send %d key(s): %s", holder, len(keys), exc)
            return [], exc
        got: list[str] = []
        try:
            for key, parts in values:
                value = _loads(parts)
                self.data.set(key, value, sizeof(value))
                got.append(key)
        except Exception as exc:
            logger.warning("cannot deserialize data from %s: %r", holder, exc)
            return got, exc
        return got, None

    # ------------------------------------------------------------ execution
    def _task_thread(self) -> None:
        while True:
            t = self._work.get()
            if t is None:
                return
            outcome = self._execute(t)
            with self._outcomes_lock:
                self._outcomes.append((t, outcome))
                wake = not self._drain_scheduled
                self._drain_scheduled = True
            if wake and self._loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: we are stopping
                    self._loop.call_soon_threadsafe(self._drain_outcomes)

    def _drain_outcomes(self) -> None:
        with self._outcomes_lock:
            outcomes, self._outcomes = self._outcomes, []
            self._drain_scheduled = False
        for t, outcome in outcomes:
            self._task_done(t, outcome)

    def _run_ready(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            for thread in self._threads:
                thread.start()
        starting: list[_Task] = []
        # Short tasks: a few more per thread wait in the threads' queue, so that a thread
        # goes from one to the next without a round trip through this loop (two thread
        # switches, ~50 us per task on a busy 2-core machine). Trivial tasks on 2 workers:
        # ~5,700/s with none ahead, ~8,000 with 1, ~9,100 with 3. They are announced as
        # started too, so a death blames them as well: each is then run alone once, like
        # any suspect, and cleared. Long tasks are not held back this way (a queued one
        # could not be stolen by an idle worker).
        ahead = AHEAD if self._avg_duration < SHORT_TASK else 0
        limit = self.nthreads * (1 + ahead)
        while self._executing < limit and self._ready and not self.paused:
            _, _, key = heapq.heappop(self._ready)
            t = self.tasks.get(key)
            if t is None or t.state != READY:
                continue
            t.state = EXECUTING
            t.started = time.time()
            self._executing += 1
            starting.append(t)
        if not starting:
            return
        # The scheduler blames only tasks that really ran for a worker's death, so it must
        # hear of the start before the task can kill us: out on the socket first, then run.
        self._send({"op": "started", "keys": [t.key for t in starting]})
        if self.scheduler is not None:
            self.scheduler.flush()
        for t in starting:
            self._work.put(t)

    def _execute(self, t: _Task) -> tuple[bool, Any, float]:
        start = time.perf_counter()
        _thread_state.worker = self
        if t.state == CANCELLED:  # freed while it waited in the threads' queue
            return False, TaskInterrupted(f"{t.key!r} cancelled before it started"), 0.0
        try:
            fn_frames = t.frames[: t.fnf]
            fn_bytes = bytes(fn_frames[0]) if t.fnf == 1 else b""
            fn = self._fn_cache.get(fn_bytes) if fn_bytes else None
            with _unpickle_lock:
                if fn is None:
                    fn = loads(fn_frames)
                    if fn_bytes and len(self._fn_cache) < 256:
                        self._fn_cache[fn_bytes] = fn
                data: Mapping[str, Any] = self.data
                if t.inputs:
                    given = {k: loads([v]) for k, v in t.inputs.items() if k not in self.data}
                    data = ChainMap(given, self.data)
                args, kwargs = loads_with_refs(t.frames[t.fnf :], data)
            with t.lock:
                t.thread = threading.get_ident()
                t.in_user_code = True
            try:
                result = fn(*args, **kwargs)
            finally:
                # An interrupt can only be aimed at this thread while this flag is up.
                with t.lock:
                    t.in_user_code = False
            duration = time.perf_counter() - start
            t.nbytes = sizeof(result)
            t.inline = self._inline(result, t.nbytes)
            if shm.MEMFD and t.nbytes >= shm.MIN_BYTES and self.seal_results:
                result, t.sealed = _seal(result)
            return True, result, duration
        except BaseException as exc:
            return False, exc, time.perf_counter() - start

    def _inline(self, result: object, estimate: int) -> bytes | None:
        """``result`` serialized, if it is small enough to travel with its task's news."""
        limit = self.settings.inline_result_bytes
        if estimate > limit:
            return None
        try:
            frames = dumps(result)
        except Exception:
            # It stays here alone, as large results do; whoever fetches it gets the
            # pickling error then, with the holder named.
            return None
        if len(frames) != 1 or len(frames[0]) > limit:
            return None
        return bytes(frames[0])

    def _interrupt(self, key: str) -> None:
        """Stop a running task by raising TaskInterrupted in its thread."""
        t = self.tasks.get(key)
        if t is None:
            return
        if t.state != EXECUTING:
            self._free(key)
            return
        t.state = CANCELLED
        with t.lock:
            if t.in_user_code:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(t.thread), ctypes.py_object(TaskInterrupted)
                )
        spawn(self._interrupt_deadline(t), self.tasks_bg, f"interrupt-{key}")

    async def _interrupt_deadline(self, t: _Task) -> None:
        await asyncio.sleep(self.settings.cancel_grace)
        if self.tasks.get(t.key) is not t:
            return  # it stopped
        if not t.thread:
            return  # still queued behind another task: its thread will skip it
        if not self.nanny:
            logger.warning(
                "task %r ignores its cancellation and this worker has no nanny to restart it",
                t.key,
            )
            return
        reason = f"task {t.key!r} did not stop within {self.settings.cancel_grace} s of cancel"
        logger.warning("%s; exiting so that the nanny starts a fresh worker", reason)
        self._send({"op": "retiring", "reason": reason})
        if self.scheduler is not None:
            with contextlib.suppress(CommClosedError):
                await self.scheduler.drain()
        os._exit(75)

    def _task_done(self, t: _Task, outcome: tuple[bool, Any, float]) -> None:
        self._executing -= 1
        self.executed += 1
        ok, value, duration = outcome
        self._avg_duration = 0.9 * self._avg_duration + 0.1 * duration
        if t.state == CANCELLED and t.rerun is not None and ok:
            t.state = EXECUTING  # wanted again while it ran: its result counts after all
            t.run_id = get(t.rerun[0], "run", int)
        if t.state == CANCELLED:
            if self.tasks.get(t.key) is t:
                del self.tasks[t.key]
            if t.orphaned and ok and t.key not in self.data:
                self.data.set(t.key, value, t.nbytes, t.sealed)
            elif t.sealed is not None:
                t.sealed.close()
            if t.rerun is not None and not self.stopped.is_set():
                self._compute(*t.rerun)  # it failed (or was interrupted): run it anew
        else:
            del self.tasks[t.key]
            if ok:
                nbytes = t.nbytes
                self.data.set(t.key, value, nbytes, t.sealed)
                self._send(
                    {
                        "op": "task-finished",
                        "key": t.key,
                        "run": t.run_id,
                        "nbytes": nbytes,
                        "type": type(value).__name__,
                        "duration": duration,
                        **({} if t.inline is None else {"inline": t.inline}),
                    }
                )
            else:
                blob, tb, text = _serialize_error(value)
                self._send(
                    {
                        "op": "task-erred",
                        "key": t.key,
                        "run": t.run_id,
                        "text": text,
                        "duration": duration,
                    },
                    [blob, tb],
                )
        if not self.stopped.is_set():
            self._run_ready()

    # ------------------------------------------------------ peers & clients
    async def _handle_peer(self, comm: Connection) -> None:
        try:
            with contextlib.suppress(CommClosedError):
                while True:
                    msg, frames = await comm.recv()
                    try:
                        await self._peer_message(comm, msg, frames)
                    except Exception as exc:  # answer it: never leave the peer waiting
                        logger.warning("bad request from %s: %s", comm.peer, exc)
                        comm.reply(msg, error_reply(exc))
        finally:
            # Whatever it borrowed and did not give back, it cannot be reading any more.
            self._lent.pop(comm, None)
            self.striped.forget(comm)

    def _discard_export(self, info: dict[str, Any]) -> None:
        self._exported.pop(str(info["path"]), None)
        shm.discard(info)

    def _lend(
        self, comm: Connection, groups: list[list[Buffer]]
    ) -> tuple[dict[str, Any] | None, list[list[Buffer]]]:
        """Lend the large buffers of ``groups`` (see protocol.lend): their addresses, and
        the groups with those frames left empty."""
        described: list[list[int]] = []
        out = [list(g) for g in groups]
        for g, group in enumerate(groups):
            for f, frame in enumerate(group):
                if f == 0 or not lend.lendable(frame):
                    continue
                address = lend.address_of(frame)
                if address is not None:
                    described.append([g, f, address, memoryview(frame).nbytes])
                    out[g][f] = b""
        if not described:
            return None, groups
        lend_id = next(self._lend_ids)
        self._lent.setdefault(comm, {})[lend_id] = groups
        return {"pid": os.getpid(), "id": lend_id, "frames": described}, out

    async def _peer_message(self, comm: Connection, msg: Msg, frames: list[Buffer]) -> None:
        op = msg["op"]
        if op == "get-data":
            keys: list[str] = []
            groups: list[list[Buffer]] = []
            sealed: dict[str, Any] = {}
            same_host = bool(self.host_id) and msg.get("host") == self.host_id
            for key in get_str_list(msg, "keys"):
                if key not in self.data:
                    continue
                record = self.data.sealed_of(key) if same_host else None
                if record is not None:
                    # Its large buffers are mapped by the requester: nothing is copied.
                    sealed[str(len(groups))] = record.describe()
                    groups.append(list(record.frames))
                else:
                    groups.append(dumps(self.data[key]))
                keys.append(key)
            info = None
            lent: dict[str, Any] | None = None
            if same_host and msg.get("vm") and lend.usable:
                # The requester copies large buffers straight out of our memory: keep
                # them alive until it says it is done (or its connection closes).
                lent, groups = self._lend(comm, groups)
            if same_host:
                # Same host: other large buffers go through /dev/shm, one memcpy, no socket.
                groups, info = shm.export(groups)
                if info is not None:
                    # Should the requester never map it, the file must not outlive us long.
                    self._exported[str(info["path"])] = info
                    asyncio.get_running_loop().call_later(60, self._discard_export, info)
            out = [frame for group in groups for frame in group]
            reply = {"keys": keys, "nf": [len(g) for g in groups], "shm": info}
            streams = msg.get("streams")
            if not same_host and isinstance(streams, int) and streams > 1:
                # Its large frames go by several connections: see protocol.stripe.
                out, kept = stripe.split(out, self.settings.stripe_bytes)
                if kept:
                    reply["striped"] = stripe.describe(self.striped.keep(comm, kept), kept)
            if sealed:
                reply["sealed"] = sealed
            if lent:
                reply["lent"] = lent
            comm.reply(msg, reply, out)
            await comm.drain()
        elif op == "get-part":
            comm.reply(msg, {}, [self.striped.part(msg)])
            await comm.drain()
        elif op == "parts-done":
            self.striped.done(get(msg, "id", int))
        elif op == "lent-done":
            self._lent.get(comm, {}).pop(get(msg, "id", int), None)
        elif op == "put-data":
            keys = get_str_list(msg, "keys")
            counts = get(msg, "nf", list)
            if len(keys) != len(counts) or sum(counts) != len(frames):
                raise ProtocolError("put-data: keys, counts and frames disagree")
            pos = 0
            values: dict[str, Any] = {}
            for key, nf in zip(keys, counts, strict=True):
                # All or nothing: if one value cannot be unpickled, none is kept.
                values[key] = _loads(frames[pos : pos + nf])
                pos += nf
            nbytes: dict[str, int] = {}
            types: dict[str, str] = {}
            for key, value in values.items():
                nbytes[key] = sizeof(value)
                self.data.set(key, value, nbytes[key])
                types[key] = type(value).__name__
            comm.reply(msg, {"nbytes": nbytes, "types": types})
        elif op == "run":
            ok, out = await asyncio.to_thread(_run_function, frames, self)
            comm.reply(msg, {"ok": ok}, out)
        elif op == "ping":
            comm.reply(msg, {"address": self.address})
        elif op == "hello-peer":
            pass
        else:
            raise ProtocolError(f"unknown op {op!r}")


def _run_function(frames: list[Buffer], worker: Worker) -> tuple[bool, list[Buffer]]:
    _thread_state.worker = worker
    try:
        fn, args, kwargs = _loads(frames)
        return True, dumps(fn(*args, **kwargs))
    except BaseException as exc:
        blob, _, _ = _serialize_error(exc)
        return False, [blob]
    finally:
        _thread_state.worker = None
