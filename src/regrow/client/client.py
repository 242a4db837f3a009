"""The client: submit functions, hold futures, gather results.

``Client`` is one async session with a sync facade. Its IO happens inside ``_Session``,
which owns the scheduler connection and the connections to workers (results are
fetched from workers directly, never through the scheduler). The session runs in a
shared loop thread (``loop.py``), whose blocking methods wait on its coroutines; or,
with ``asynchronous=True``, in the caller's running event loop, where the same methods
return those coroutines to await.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from regrow.client.futures import (
    CANCELLED,
    ERROR,
    FINISHED,
    Future,
    FutureState,
    _left,
    settle_all,
    settle_all_async,
)
from regrow.client.loop import CallerLoop, ClientLoop, deferred, shared_loop
from regrow.config import Settings
from regrow.errors import CommClosedError, SchedulerLostError
from regrow.protocol import shm
from regrow.protocol.comm import Connection, ConnectionPool, connect, spawn
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Msg, get, get_str_list
from regrow.protocol.serialize import digest, dumps, dumps_with_refs, loads, sizeof

logger = logging.getLogger("regrow.client")

_clients: weakref.WeakValueDictionary[str, Client] = weakref.WeakValueDictionary()
_default: list[Client] = []
_MAP_BATCH = 1000
T = TypeVar("T")
# Sessions of asynchronous clients closing after their client was garbage-collected.
_closing_sessions: set[asyncio.Task[Any]] = set()
# Requests that may be sent again after the scheduler was lost (they change nothing,
# or nothing more the second time).
_REPEATABLE = frozenset({"who-has", "scheduler-info", "ping", "cancel"})


def default_client_for(scheduler_address: str) -> Client:
    """The most recent live client of this scheduler (used when a Future is unpickled)."""
    for client in reversed(_default):
        if client.status == "running" and client.scheduler_address == scheduler_address:
            return client
    for client in list(_clients.values()):
        if client.status == "running" and client.scheduler_address == scheduler_address:
            return client
    raise ValueError(
        f"a Future of the scheduler at {scheduler_address} was unpickled in a process "
        "with no client connected to it"
    )


def get_client() -> Client:
    """The default client of this process (the last one created)."""
    for client in reversed(_default):
        if client.status == "running":
            return client
    raise ValueError("no regrow Client is running in this process")


def _funcname(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else str(name)


class _Session:
    """The client's async half: lives in the loop thread."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.comm: Connection | None = None
        self.pool = ConnectionPool(token=client.token, settings=client.settings)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.release_buffer: list[str] = []
        self.release_scheduled = False
        # Submissions the scheduler has not yet confirmed (journaled): sent again after
        # a reconnect, so a scheduler that died before writing them still gets them.
        self.unacked: dict[int, tuple[Msg, list[Buffer] | tuple[()]]] = {}
        self.seq = itertools.count(1)
        self.scheduler_id = ""
        self.journaled = False
        self.connected = asyncio.Event()

    async def _register(self, timeout: float, reattach: bool) -> Connection:
        c = self.client
        comm = await connect(
            c.scheduler_address, token=c.token, settings=c.settings, timeout=timeout
        )
        msg: Msg = {"op": "register-client", "client": c.id, "reattach": reattach}
        if reattach:
            # The keys we still hold: a scheduler back from its journal lets go of any
            # other it has us want (a release it lost with its death).
            msg["keys"] = self._held_keys()
        comm.send(msg)
        reply, _ = await comm.recv()
        if reply["op"] != "registered":
            await comm.close()
            raise OSError(f"scheduler refused this client: {reply.get('error')}")
        previous = self.scheduler_id
        self.scheduler_id = str(reply.get("id", ""))
        self.journaled = bool(reply.get("journal"))
        self.comm = comm
        if reattach:
            self._reattach(same=self.journaled and self.scheduler_id == previous)
        self.connected.set()
        if self.release_buffer:
            self._flush_releases()  # futures released while the scheduler was away
        spawn(self._listen(comm), self.tasks, "client-listen")
        return comm

    async def start(self, timeout: float) -> None:
        try:
            await self._register(timeout, reattach=False)
        except (OSError, TimeoutError, CommClosedError) as exc:
            raise OSError(
                f"could not connect to a regrow scheduler at {self.client.scheduler_address} "
                f"within {timeout} s: {exc or type(exc).__name__}"
            ) from None

    def _held_keys(self) -> list[str]:
        """Keys of our futures, but for cancelled ones (the scheduler let those go), and
        keys we want without Futures for a while (``Client._want_unheld``)."""
        client = self.client
        with client._lock:
            held = [k for k, st in client._states.items() if st.status != CANCELLED]
            return held + [k for k in client._unheld if k not in client._states]

    def _reattach(self, same: bool) -> None:
        """Back on a scheduler after losing it: pick our futures up where they were."""
        client = self.client
        keys = self._held_keys()
        if same:
            # It rebuilt its state from its journal: resend what it may not have written,
            # and ask where each of our keys stands (the answers settle waiting futures).
            held = set(keys)
            for seq in sorted(self.unacked):
                msg, frames = self.unacked[seq]
                wanted = get_str_list(msg, "wanted")
                if any(k not in held for k in wanted):
                    # Released or cancelled since: send the tasks, but want only the rest.
                    msg = {**msg, "wanted": [k for k in wanted if k in held]}
                assert self.comm is not None
                self.comm.send(msg, frames)
            if keys:
                self.send({"op": "desire-keys", "keys": keys})
            logger.info("reattached to the scheduler (journaled): %d futures", len(keys))
        else:
            self.unacked.clear()
            client._fail_pending(
                "the scheduler restarted without a journal, so the work it held is gone"
            )
            client._record_event("workers", "reconnected to a scheduler that lost its state")

    async def _reconnect(self, reason: str) -> None:
        client = self.client
        self.connected.clear()
        client.status = "reconnecting"
        client._record_event("workers", f"lost the scheduler ({reason}); reconnecting")
        deadline = time.monotonic() + client.settings.reconnect_timeout
        delay = 0.05
        while time.monotonic() < deadline and client.status == "reconnecting":
            try:
                await self._register(min(5.0, max(0.1, deadline - time.monotonic())), True)
                client.status = "running"
                client._record_event("workers", "reconnected to the scheduler")
                return
            except (OSError, TimeoutError, CommClosedError) as exc:
                logger.info("scheduler unreachable (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.5)
        if client.status == "reconnecting":
            client._scheduler_gone(
                f"{reason}, and no scheduler came back within {client.settings.reconnect_timeout} s"
            )

    async def _listen(self, comm: Connection) -> None:
        states = self.client._states
        try:
            while True:
                msg, frames = await comm.recv()
                op = msg["op"]
                st = states.get(msg.get("key", ""))
                if op == "key-in-memory":
                    if st is not None:
                        inline = msg.get("inline")
                        st.finish(
                            str(msg.get("type", "")),
                            int(msg.get("nbytes", 0)),
                            inline if isinstance(inline, bytes) else None,
                        )
                elif op == "key-erred":
                    if st is not None:
                        st.set_error(
                            exception=bytes(frames[0]) if frames else b"",
                            traceback=bytes(frames[1]) if len(frames) > 1 else b"",
                            text=str(msg.get("text", "")),
                            kind=str(msg.get("kind", "")),
                            blame=str(msg.get("blame", "")),
                            workers=tuple(msg.get("workers") or ()),
                        )
                elif op == "key-cancelled":
                    if st is not None:
                        st.cancel()
                elif op == "key-lost":
                    if st is not None:
                        st.lost()
                elif op == "key-interrupted":
                    for listener in list(self.client._interrupt_listeners):
                        listener(str(msg.get("key")), str(msg.get("worker")))
                elif op == "event":
                    self.client._record_event(str(msg.get("topic")), str(msg.get("message")))
                elif op == "submit-ack":
                    upto = int(msg.get("seq", 0))
                    for seq in [s for s in self.unacked if s <= upto]:
                        del self.unacked[seq]
                elif op == "scheduler-closing":
                    pass  # the connection closes next; reconnecting decides what follows
                else:
                    logger.warning("unexpected message from scheduler: %r", op)
        except CommClosedError:
            if self.client.status in ("closing", "closed"):
                return
            spawn(self._reconnect("the connection closed"), self.tasks, "client-reconnect")

    def send(self, msg: Msg, frames: list[Buffer] | tuple[()] = ()) -> None:
        if self.comm is None or self.comm.closed:
            return
        self.comm.send(msg, frames)

    def submit(self, msg: Msg, frames: list[Buffer] | tuple[()]) -> None:
        seq = next(self.seq)
        msg["seq"] = seq
        self.unacked[seq] = (msg, frames)
        self.send(msg, frames)

    def release(self, key: str) -> None:
        self.release_buffer.append(key)
        if not self.release_scheduled:
            self.release_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_releases)

    def _flush_releases(self) -> None:
        self.release_scheduled = False
        if not self.connected.is_set() or self.comm is None or self.comm.closed:
            return  # kept until the scheduler is back (see _register)
        keys, self.release_buffer = self.release_buffer, []
        client = self.client
        with client._lock:
            # A key released and then re-acquired before this flush is still wanted.
            again = [k for k in dict.fromkeys(keys) if k in client._refcount]
            keys = [k for k in dict.fromkeys(keys) if k not in client._refcount]
        if keys:
            self.send({"op": "release-keys", "keys": keys})
        if again:
            # Its old state went with its last Future; the scheduler, which still counts
            # this client among those wanting it, would not report it again unasked.
            self.send({"op": "desire-keys", "keys": again})

    async def request(self, msg: Msg, timeout: float | None = None) -> tuple[Msg, list[Buffer]]:
        if not self.connected.is_set() and self.client.status == "reconnecting":
            async with asyncio.timeout(self.client.settings.reconnect_timeout):
                await self.connected.wait()
        comm = self.comm
        try:
            if comm is None or comm.closed:
                raise CommClosedError("not connected to the scheduler")
            return await comm.request(msg, timeout=timeout)
        except CommClosedError as exc:
            if not (self.journaled and msg.get("op") in _REPEATABLE):
                raise SchedulerLostError(str(exc)) from None
            lost = exc
        # A journaled scheduler comes back: wait for it (the connection's loss may not
        # have been noticed yet) and ask again, as the request can be repeated.
        deadline = time.monotonic() + self.client.settings.reconnect_timeout
        while not (self.connected.is_set() and self.comm is not comm):
            if self.client.status in ("lost", "closing", "closed") or time.monotonic() > deadline:
                raise SchedulerLostError(str(lost))
            await asyncio.sleep(0.01)
        return await self.request(msg, timeout)

    async def gather(self, keys: list[str]) -> dict[str, Any]:
        """Fetch results straight from the workers that hold them."""
        reply, _ = await self.request({"op": "who-has", "keys": keys})
        who_has: dict[str, list[str]] = get(reply, "who_has", dict)
        results: dict[str, Any] = {}
        # Each key's holders, starting at a different one per key to spread the load.
        untried: dict[str, list[str]] = {}
        for i, key in enumerate(keys):
            holders = list(who_has.get(key) or [])
            if holders:
                untried[key] = holders[i % len(holders) :] + holders[: i % len(holders)]
        # Holders that answered without a key the scheduler says they have.
        missing: dict[str, list[str]] = {}

        same_host = shm.HOST if self.client.settings.shared_memory else ""

        async def fetch(worker: str, ks: list[str]) -> None:
            try:
                comm = await self.pool.get(worker)
                # A frozen holder must not hold us up: its keys get recomputed elsewhere.
                values = await shm.get_data(
                    comm, ks, same_host, idle_timeout=self.client.settings.heartbeat_timeout + 2
                )
            except (OSError, CommClosedError, TimeoutError) as exc:
                logger.info("could not fetch from %s: %s", worker, exc)
                return
            for key, parts in values:
                results[key] = loads(parts)
            for key in ks:
                if key not in results:
                    missing.setdefault(key, []).append(worker)

        while untried:
            by_worker: dict[str, list[str]] = {}
            for key, holders in untried.items():
                by_worker.setdefault(holders.pop(0), []).append(key)
            await asyncio.gather(*(fetch(w, ks) for w, ks in by_worker.items()))
            untried = {k: hs for k, hs in untried.items() if hs and k not in results}
        if missing:
            # Tell the scheduler, or it would keep naming them and we would keep asking.
            self.send({"op": "missing-data", "missing": missing})
        return results

    async def scatter(
        self,
        items: list[tuple[str, list[Buffer], int, str]],
        targets: list[list[str]],
        replicas: int = 1,
    ) -> None:
        by_worker: dict[str, list[int]] = {}
        for i, workers in enumerate(targets):
            for w in workers:
                by_worker.setdefault(w, []).append(i)

        async def put(worker: str, idx: list[int]) -> None:
            comm = await self.pool.get(worker)
            frames: list[Buffer] = []
            for i in idx:
                frames.extend(items[i][1])
            await comm.request(
                {
                    "op": "put-data",
                    "keys": [items[i][0] for i in idx],
                    "nf": [len(items[i][1]) for i in idx],
                },
                frames,
            )

        await asyncio.gather(*(put(w, idx) for w, idx in by_worker.items()))
        await self.request(
            {
                "op": "scattered",
                "replicas": replicas,
                "keys": [
                    {"key": key, "nbytes": nbytes, "type": type_name, "workers": targets[i]}
                    for i, (key, _, nbytes, type_name) in enumerate(items)
                ],
            }
        )

    async def run(self, frames: list[Buffer], workers: list[str]) -> dict[str, tuple[bool, Any]]:
        async def one(worker: str) -> tuple[str, tuple[bool, Any]]:
            comm = await self.pool.get(worker)
            reply, out = await comm.request({"op": "run"}, frames)
            return worker, (bool(reply.get("ok")), loads(out))

        return dict(await asyncio.gather(*(one(w) for w in workers)))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.comm is not None:
            await self.comm.close()
        self.pool.close()


class Client:
    """Connect to a regrow cluster and run Python functions on it.

    ``Client(address_or_cluster)`` takes a scheduler address ('tcp://host:port')
    or a ``LocalCluster``; with no argument it starts a LocalCluster of its own.

    ``Client(..., asynchronous=True)``, as dask.distributed's, is for code running in
    an event loop: it connects when awaited (``await Client(...)`` or ``async with``),
    its session runs in that loop (no thread), and its blocking methods (``gather``,
    ``scatter``, ``cancel``, ``run``, ``scheduler_info``, ``close``... and its futures'
    ``result``) return awaitables. ``submit`` and ``map`` return Futures at once in
    both modes, and ``await future`` gives a result in both.
    """

    def __init__(
        self,
        address: Any = None,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        name: str | None = None,
        set_as_default: bool = True,
        settings: Settings | None = None,
        asynchronous: bool = False,
    ) -> None:
        self.status = "connecting"
        self.asynchronous = asynchronous
        self._own_cluster: Any = None
        self._timeout = timeout
        self._set_as_default = set_as_default
        self.id = name or f"client-{uuid.uuid4().hex[:12]}"
        # Re-entrant: a Future garbage-collected while this thread holds the lock releases
        # its key from inside the critical section (Future.__del__ -> _release).
        self._lock = threading.RLock()
        self._outbox_lock = threading.RLock()
        self._outbox: list[tuple[list[Msg], list[Buffer], list[str]]] = []
        self._outbox_scheduled = False
        self._releases: list[str] = []
        self._releases_scheduled = False
        self._unique = itertools.count()
        self._uid = uuid.uuid4().hex[:16]
        self._refcount: dict[str, int] = {}
        self._states: dict[str, FutureState] = {}
        # Keys wanted with no Future for them, until _release_unheld: a dask graph's
        # keys that a later message of the same graph reads.
        self._unheld: set[str] = set()
        self._fn_cache: dict[Any, list[Buffer]] = {}
        self._callbacks: concurrent.futures.ThreadPoolExecutor | None = None
        # Called (key, worker) from the IO thread when a running task's worker died.
        self._interrupt_listeners: list[Callable[[str, str], None]] = []
        self._events: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=10_000)
        # The loop the session runs in: set here, or when an asynchronous client starts.
        self._loop: ClientLoop
        self._session: _Session
        # Known once there is an address: an asynchronous client with none starts its own
        # cluster when awaited, and uses these arguments then.
        self.scheduler_address = ""
        self.cluster: Any = None
        self.token = token
        self._address_args = (token, settings)
        self._starting: asyncio.Future[Client] | None = None
        if address is None and not asynchronous:
            from regrow.deploy import LocalCluster

            address = self._own_cluster = LocalCluster()
        if address is not None:
            self._use_address(address, token, settings)
        else:
            self.settings = settings or Settings.from_env()
        if asynchronous:
            return  # it connects when awaited (_start)
        self._loop = shared_loop()
        try:
            self._loop.run(self._connect(), timeout=timeout + 10)
        except BaseException:
            if self._own_cluster is not None:
                self._own_cluster.close()
            raise
        self._started()

    def _use_address(self, address: Any, token: str | None, settings: Settings | None) -> None:
        scheduler_address = getattr(address, "scheduler_address", address)
        if not isinstance(scheduler_address, str):
            raise TypeError(
                "Client() takes a scheduler address like 'tcp://127.0.0.1:8786' or a "
                f"LocalCluster, got {type(address).__name__}"
            )
        if token is None:
            token = getattr(address, "token", None) or os.environ.get("REGROW_TOKEN") or None
        self.scheduler_address = (
            scheduler_address
            if scheduler_address.startswith("tcp://")
            else f"tcp://{scheduler_address}"
        )
        self.cluster = address if not isinstance(address, str) else None
        self.token = token
        # A LocalCluster's settings (reconnect timeout...) apply to its clients too.
        self.settings = settings or getattr(address, "settings", None) or Settings.from_env()
        self._session = _Session(self)

    async def _connect(self) -> None:
        """Register with the scheduler (in the session's loop); on failure close the session."""
        try:
            async with asyncio.timeout(self._timeout + 5):
                await self._session.start(self._timeout)
        except BaseException:
            await self._session.close()
            raise

    def _started(self) -> None:
        self.status = "running"
        _clients[self.id] = self
        if self._set_as_default:
            _default.append(self)
            _set_ecosystem_defaults(self)

    async def _start(self) -> Client:
        """Connect an asynchronous client, in the running loop: once, however many await
        it at the same time; then a no-op."""
        if self.status == "closed":
            raise RuntimeError("this client is closed")
        if self.status != "connecting":
            return self
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start_once())
        return await self._starting

    async def _start_once(self) -> Client:
        try:
            if self._own_cluster is None and not self.scheduler_address:
                from regrow.deploy import LocalCluster

                # Starting processes blocks: not in the loop (a short-lived helper thread).
                self._own_cluster = await asyncio.to_thread(LocalCluster)
                self._use_address(self._own_cluster, *self._address_args)
            self._loop = CallerLoop()
            await self._connect()
        except BaseException:
            self.status = "closed"
            if self._own_cluster is not None:
                await asyncio.to_thread(self._own_cluster.close)
            raise
        self._started()
        return self

    def _sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """A blocking method's work: on a synchronous client, run in the IO thread and
        waited for; on an asynchronous one, the coroutine itself, for the caller to await
        (typed as its result, see ``deferred``)."""
        if not self.asynchronous:
            return self._loop.run(coro, timeout=timeout)
        if self.status == "connecting":
            coro.close()
            raise RuntimeError(
                "an asynchronous Client must be started first: 'await Client(...)' "
                "or 'async with Client(...)'"
            )
        return deferred(self._loop.arun(_within(coro, timeout)))

    # ------------------------------------------------------------ refcounts
    def _acquire(self, key: str) -> FutureState:
        with self._lock:
            self._refcount[key] = self._refcount.get(key, 0) + 1
            st = self._states.get(key)
            if st is None:
                st = self._states[key] = FutureState()
            return st

    def _release(self, key: str) -> None:
        with self._lock:
            n = self._refcount.get(key, 0) - 1
            if n > 0:
                self._refcount[key] = n
                return
            self._refcount.pop(key, None)
            self._states.pop(key, None)
        if self.status in ("running", "reconnecting"):
            # While reconnecting the release waits in the session for the scheduler to
            # be back (dropping it would leave the key wanted for good).
            with self._outbox_lock:
                self._releases.append(key)
                if self._releases_scheduled:
                    return
                self._releases_scheduled = True
            self._loop.call_soon(self._flush_releases)

    def _flush_releases(self) -> None:
        with self._outbox_lock:
            keys, self._releases = self._releases, []
            self._releases_scheduled = False
        for key in keys:
            self._session.release(key)

    def _desire(self, keys: list[str]) -> None:
        self._loop.call_soon(self._session.send, {"op": "desire-keys", "keys": keys})

    def _record_event(self, topic: str, message: str) -> None:
        self._events.append((time.time(), topic, message))
        logger.info("[%s] %s", topic, message)

    def get_events(self, topic: str | None = None) -> list[tuple[float, str, str]]:
        """What the scheduler told this client happened: ``(time, topic, message)``.

        Topics: ``workers`` (joined, lost, and what was recovered), ``warnings``
        (for example an impure task computed a second time).
        """
        return [e for e in list(self._events) if topic is None or e[1] == topic]

    def _scheduler_gone(self, reason: str) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "lost"
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            states = list(self._states.values())
        for st in states:
            if not st.done():
                st.set_local_error(
                    SchedulerLostError(
                        f"{reason} before this future finished ({self.scheduler_address})"
                    )
                )

    def _run_callback(self, fn: Callable[[Future], Any], future: Future) -> None:
        with self._lock:
            if self._callbacks is None:
                self._callbacks = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="regrow-callback"
                )
            pool = self._callbacks

        def call() -> None:
            try:
                fn(future)
            except Exception:
                logger.exception("done-callback %r raised", fn)

        try:
            pool.submit(call)
        except RuntimeError:
            call()  # pool shut down with the client: run inline

    def _check_running(self) -> None:
        if self.status not in ("running", "reconnecting"):
            raise RuntimeError(f"this client is {self.status}; it cannot send work")

    # ----------------------------------------------------------- submitting
    def _ref_of(self, obj: object) -> str | None:
        return obj.key if isinstance(obj, Future) else None

    def _fn_frames(self, fn: Callable[..., Any]) -> list[Buffer]:
        try:
            cached = self._fn_cache.get(fn)
        except TypeError:  # unhashable callable
            return dumps(fn)
        if cached is None:
            cached = dumps(fn)
            if len(self._fn_cache) > 1000:
                self._fn_cache.clear()
            self._fn_cache[fn] = cached
        return cached

    @staticmethod
    def _check_workers(workers: Any) -> list[str] | None:
        if workers is None:
            return None
        if isinstance(workers, str):
            return [workers]
        ws = list(workers)
        if not all(isinstance(w, str) for w in ws):
            raise TypeError(f"workers= takes worker addresses or names, got {workers!r}")
        return ws

    def _task(
        self,
        fn: Callable[..., Any],
        fn_frames: list[Buffer],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        key: str | None,
        pure: bool,
        workers: list[str] | None,
        retries: int,
        priority: int,
    ) -> tuple[Msg, list[Buffer]]:
        arg_frames, deps = dumps_with_refs((args, dict(kwargs)), self._ref_of)
        if key is None:
            if pure:
                key = f"{_funcname(fn)}-{digest([*fn_frames, *arg_frames])}"
            else:
                # Unique without a uuid4 per task (os.urandom is a syscall): this client's
                # id is random, a counter numbers its tasks.
                key = f"{_funcname(fn)}-{self._uid}{next(self._unique):x}"
        elif not isinstance(key, str):
            raise TypeError(f"key must be a string, got {type(key).__name__}")
        frames = [*fn_frames, *arg_frames]
        entry: Msg = {"k": key, "d": deps, "fnf": len(fn_frames), "nf": len(frames)}
        if priority:
            entry["p"] = int(priority)
        if retries:
            entry["r"] = int(retries)
        if workers:
            entry["w"] = workers
        if not pure:
            entry["pure"] = False
        return entry, frames

    def _send_tasks(self, entries: list[Msg], frames: list[Buffer], wanted: list[str]) -> None:
        # Waking the IO thread costs a syscall: submissions made before it runs share one.
        with self._outbox_lock:
            self._outbox.append((entries, frames, wanted))
            if self._outbox_scheduled:
                return
            self._outbox_scheduled = True
        self._loop.call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        with self._outbox_lock:
            batch, self._outbox = self._outbox, []
            self._outbox_scheduled = False
        entries: list[Msg] = []
        frames: list[Buffer] = []
        wanted: list[str] = []
        for e, f, w in batch:
            entries.extend(e)
            frames.extend(f)
            wanted.extend(w)
            if len(entries) >= _MAP_BATCH:
                self._session.submit({"op": "submit", "tasks": entries, "wanted": wanted}, frames)
                entries, frames, wanted = [], [], []
        if entries:
            self._session.submit({"op": "submit", "tasks": entries, "wanted": wanted}, frames)

    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: str | None = None,
        pure: bool = True,
        workers: str | Iterable[str] | None = None,
        retries: int = 0,
        priority: int = 0,
        **kwargs: Any,
    ) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; returns a Future at once."""
        if not callable(func):
            raise TypeError(f"submit() needs a callable first argument, got {type(func).__name__}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative int, got {retries!r}")
        self._check_running()
        entry, frames = self._task(
            func,
            self._fn_frames(func),
            args,
            kwargs,
            key=key,
            pure=pure,
            workers=self._check_workers(workers),
            retries=retries,
            priority=priority,
        )
        future = self._new_future(entry["k"])
        self._send_tasks([entry], frames, [future.key])
        return future

    def _new_future(self, key: str) -> Future:
        future = Future(key, self)
        if future._state.status == CANCELLED:
            future._state.reset()  # submitted again after a cancel or restart: it runs anew
        return future

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[str] | None = None,
        pure: bool = True,
        workers: str | Iterable[str] | None = None,
        retries: int = 0,
        priority: int = 0,
        batch_size: int = _MAP_BATCH,
        **kwargs: Any,
    ) -> list[Future]:
        """``submit`` for each item of the zipped iterables, sent in batches."""
        if not callable(func):
            raise TypeError(f"map() needs a callable first argument, got {type(func).__name__}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        for it in iterables:
            if isinstance(it, Mapping) or not isinstance(it, Iterable):
                raise TypeError(f"map() takes iterables (not {type(it).__name__})")
        self._check_running()
        fn_frames = self._fn_frames(func)
        ws = self._check_workers(workers)
        if isinstance(key, list | tuple):
            keys: Iterator[str | None] = iter(key)
            name_prefix = None
        else:
            keys = itertools.repeat(None)
            name_prefix = key
        futures: list[Future] = []
        entries: list[Msg] = []
        frames: list[Buffer] = []
        wanted: list[str] = []
        for args in zip(*iterables, strict=False):
            k = next(keys, None)
            entry, fr = self._task(
                func,
                fn_frames,
                args,
                kwargs,
                key=k,
                pure=pure,
                workers=ws,
                retries=retries,
                priority=priority,
            )
            if name_prefix is not None:
                entry["k"] = f"{name_prefix}-{entry['k'].rpartition('-')[2]}"
            fut = self._new_future(entry["k"])
            futures.append(fut)
            entries.append(entry)
            frames.extend(fr)
            wanted.append(fut.key)
            if len(entries) >= batch_size:
                self._send_tasks(entries, frames, wanted)
                entries, frames, wanted = [], [], []
        if entries:
            self._send_tasks(entries, frames, wanted)
        return futures

    # ------------------------------------------------------------- results
    # Waiting and fetching are written twice, the one place they are: a synchronous
    # client waits on all its futures with one thread wake-up and fetches nothing for
    # small results (7,000 tasks/s submit+gather); an asynchronous client awaits the same
    # (see futures.settle_all_async). What they decide from what they got is shared.
    def _fetch(self, futures: list[Future], timeout: float | None = None) -> dict[str, Any]:
        values, keys = _inline_values(futures)
        if keys:
            values.update(self._loop.run(self._session.gather(keys), timeout=timeout))
        self._fetched(keys, values)
        return values

    async def _fetch_async(
        self, futures: list[Future], timeout: float | None = None
    ) -> dict[str, Any]:
        values, keys = _inline_values(futures)
        if keys:
            values.update(await _within(self._loop.arun(self._session.gather(keys)), timeout))
        self._fetched(keys, values)
        return values

    def _fetched(self, keys: list[str], values: dict[str, Any]) -> None:
        missing = [k for k in keys if k not in values]
        for key in missing:
            # Held nowhere although reported finished: it was lost; ask where it stands.
            st = self._states.get(key)
            if st is not None and st.status == FINISHED:
                st.reset()
        if missing:
            self._desire(missing)

    def gather(self, futures: Any, errors: str = "raise", timeout: float | None = None) -> Any:
        """Results of futures in any nested list/tuple/set/dict structure, same shape.

        ``errors="raise"`` raises the first erred future's exception;
        ``errors="skip"`` leaves erred (and cancelled) futures out.
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if isinstance(futures, Iterator):
            futures = list(futures)
        if self.asynchronous:
            return self._sync(self._gather_async(futures, errors, timeout))
        flat: list[Future] = []
        _collect(futures, flat)
        deadline = None if timeout is None else time.monotonic() + timeout
        values: dict[str, Any] = {}
        todo = list({f.key: f for f in flat}.values())
        while todo:
            settled = settle_all(
                [f._state for f in todo], _left(deadline), stop_on_error=errors == "raise"
            )
            ready = _settled(todo, settled, errors, timeout)
            if ready:
                values.update(self._fetch(ready, timeout=_left(deadline)))
            todo = _still_todo(todo, values)
        return _gathered(futures, flat, values)

    async def _gather_async(self, futures: Any, errors: str, timeout: float | None) -> Any:
        flat: list[Future] = []
        _collect(futures, flat)
        deadline = None if timeout is None else time.monotonic() + timeout
        values: dict[str, Any] = {}
        todo = list({f.key: f for f in flat}.values())
        while todo:
            settled = await settle_all_async(
                [f._state for f in todo], _left(deadline), stop_on_error=errors == "raise"
            )
            ready = _settled(todo, settled, errors, timeout)
            if ready:
                values.update(await self._fetch_async(ready, timeout=_left(deadline)))
            todo = _still_todo(todo, values)
        return _gathered(futures, flat, values)

    # -------------------------------------------------------------- scatter
    def scatter(
        self,
        data: Any,
        workers: str | Iterable[str] | None = None,
        broadcast: bool = False,
        hash: bool = True,
        timeout: float | None = None,
        replicas: int = 1,
    ) -> Any:
        """Put local data on workers; returns Futures shaped like ``data``.

        A list/tuple/set gives a list of Futures, a dict a dict of Futures (its
        keys become the Futures' keys), anything else a single Future.
        ``replicas=k`` keeps k copies on distinct workers, and the scheduler makes a
        new copy whenever one is lost; unreplicated data lost with its worker makes
        its futures err with LostDataError.
        """
        self._check_running()
        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive int, got {replicas!r}")
        if isinstance(data, Iterator):
            data = list(data)
        if isinstance(data, dict):
            names = list(data.keys())
            values = list(data.values())
        elif isinstance(data, list | tuple | set | frozenset):
            names = None
            values = list(data)
        else:
            names = None
            values = [data]
        wanted = self._check_workers(workers)
        # Pickled here, in the caller's thread: not in the IO thread.
        items: list[tuple[str, list[Buffer], int, str]] = []
        for i, value in enumerate(values):
            frames = dumps(value)
            tname = type(value).__name__
            if names is not None:
                key = str(names[i])
            elif hash:
                key = f"{tname}-{digest(frames)}"
            else:
                key = f"{tname}-{uuid.uuid4().hex}"
            items.append((key, frames, sizeof(value), tname))
        return self._sync(
            self._scatter(data, names, items, wanted, broadcast, replicas), timeout=timeout
        )

    async def _scatter(
        self,
        data: Any,
        names: list[Any] | None,
        items: list[tuple[str, list[Buffer], int, str]],
        wanted: list[str] | None,
        broadcast: bool,
        replicas: int,
    ) -> Any:
        all_workers = (await self._scheduler_info())["workers"]
        if wanted is not None:
            by_name = {w["name"]: a for a, w in all_workers.items()}
            targets = [by_name.get(w, w) for w in wanted]
            unknown = [t for t in targets if t not in all_workers]
            if unknown:
                raise ValueError(f"scatter: no such worker(s): {unknown}")
        else:
            targets = sorted(all_workers, key=lambda a: all_workers[a]["memory"])
        if not targets:
            raise RuntimeError("scatter: the cluster has no workers")
        n, k = len(targets), min(replicas, len(targets))
        placement = [
            list(targets) if broadcast else [targets[(i + j) % n] for j in range(k)]
            for i in range(len(items))
        ]
        futures = [self._new_future(key) for key, _, _, _ in items]
        await self._session.scatter(items, placement, replicas=n if broadcast else replicas)
        # Shaped like the data: a dict of futures, a list, or one.
        if isinstance(data, dict):
            return dict(zip(names or [], futures, strict=True))
        if isinstance(data, list | tuple | set | frozenset):
            return futures
        return futures[0]

    # ------------------------------------------------------------- control
    # Each blocking method checks its arguments, then hands its work, a coroutine, to
    # _sync: waited for on a synchronous client, returned on an asynchronous one.
    def cancel(self, futures: Future | Iterable[Future], force: bool = False) -> None:
        """Cancel futures: not-started work is dropped, finished results are freed."""
        fs = [futures] if isinstance(futures, Future) else list(futures)
        return self._sync(self._cancel(fs, force))

    async def _cancel(self, fs: list[Future], force: bool) -> None:
        keys = [f.key for f in fs]
        if not keys:
            return
        await self._session.request({"op": "cancel", "keys": keys, "force": force})
        for f in fs:
            if f.key in self._states and not f.done():
                f._state.cancel()

    def run(
        self,
        function: Callable[..., Any],
        *args: Any,
        workers: str | Iterable[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run ``function(*args, **kwargs)`` once on each worker: ``{address: result}``."""
        if not callable(function):
            raise TypeError(f"run() needs a callable, got {type(function).__name__}")
        wanted = self._check_workers(workers)
        return self._sync(self._run(dumps((function, args, kwargs)), wanted))

    async def _run(self, frames: list[Buffer], wanted: list[str] | None) -> dict[str, Any]:
        info = (await self._scheduler_info())["workers"]
        if wanted is None:
            targets = list(info)
        else:
            by_name = {w["name"]: a for a, w in info.items()}
            targets = [by_name.get(w, w) for w in wanted]
        results = await self._session.run(frames, targets)
        out: dict[str, Any] = {}
        for worker, (ok, value) in results.items():
            if not ok:
                raise value
            out[worker] = value
        return out

    def who_has(self, futures: Future | Iterable[Future] | None = None) -> dict[str, list[str]]:
        if futures is None:
            keys = list(self._states)
        elif isinstance(futures, Future):
            keys = [futures.key]
        else:
            keys = [f.key for f in futures]
        return self._sync(self._who_has(keys))

    async def _who_has(self, keys: list[str]) -> dict[str, list[str]]:
        reply, _ = await self._session.request({"op": "who-has", "keys": keys})
        return dict(reply["who_has"])

    def scheduler_info(self) -> dict[str, Any]:
        return self._sync(self._scheduler_info())

    async def _scheduler_info(self) -> dict[str, Any]:
        reply, _ = await self._session.request({"op": "scheduler-info"})
        reply.pop("rid", None)
        reply.pop("op", None)
        return reply

    def nthreads(self) -> dict[str, int]:
        return self._sync(self._nthreads())

    async def _nthreads(self) -> dict[str, int]:
        return {a: w["nthreads"] for a, w in (await self._scheduler_info())["workers"].items()}

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        return self._sync(self._wait_for_workers(n_workers, timeout))

    async def _wait_for_workers(self, n_workers: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while len((await self._scheduler_info())["workers"]) < n_workers:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n_workers} workers after {timeout} s")
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ dask
    def get(
        self,
        dsk: Any,
        keys: Any,
        *,
        workers: str | Iterable[str] | None = None,
        retries: int | None = None,
        priority: int = 0,
        resources: Any = None,
        sync: bool = True,
        allow_other_workers: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """dask's scheduler interface: run the graph ``dsk``, return the values of ``keys``
        (nested in lists as given). ``sync=False`` returns Futures instead.

        dask's annotations ``retries``, ``priority`` and ``workers`` are honoured, and so
        are the same keywords here (an annotation wins for its keys). ``resources`` and
        other keywords dask passes to every scheduler are accepted and ignored.
        """
        from regrow.client import dask_graph

        if self.asynchronous:
            raise RuntimeError(
                "an asynchronous Client cannot run dask's synchronous compute(); "
                "use 'await client.compute(collection)' instead"
            )
        futures = dask_graph.submit_graph(
            self, dsk, keys, retries=retries, priority=priority, workers=workers
        )
        packed = dask_graph.to_values(keys, futures)
        if not sync:
            return packed
        try:
            return self.gather(packed)
        finally:
            for f in futures.values():
                f.release()

    def compute(
        self,
        collections: Any,
        sync: bool = False,
        optimize_graph: bool = True,
        workers: str | Iterable[str] | None = None,
        retries: int | None = None,
        priority: int = 0,
        resources: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Start computing dask collections: a Future for each (its finished value),
        or a list of Futures for a list; ``sync=True`` returns the values."""
        return self._dask_call(
            "compute", collections, sync, optimize_graph, workers, retries, priority
        )

    def persist(
        self,
        collections: Any,
        optimize_graph: bool = True,
        workers: str | Iterable[str] | None = None,
        retries: int | None = None,
        priority: int = 0,
        resources: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Start computing dask collections and return the same collections, each
        backed by Futures of its pieces on the cluster (a list for a list)."""
        return self._dask_call(
            "persist", collections, False, optimize_graph, workers, retries, priority
        )

    def _dask_call(
        self,
        what: str,
        collections: Any,
        sync: bool,
        optimize_graph: bool,
        workers: str | Iterable[str] | None,
        retries: int | None,
        priority: int,
    ) -> Any:
        try:
            import dask.config
            from dask.base import compute, persist
        except ImportError:
            raise ImportError(
                f"Client.{what} of dask collections needs dask: pip install 'regrow[dask]'"
            ) from None
        from regrow.client import dask_graph

        self._check_running()
        single = not isinstance(collections, list | tuple | set | frozenset)
        items = [collections] if single else list(collections)
        schedule = dask_graph.futures_scheduler(
            self, retries=retries, priority=priority, workers=workers
        )
        run: Callable[..., tuple[Any, ...]] = compute if what == "compute" else persist
        with dask.config.set(dask_graph.cluster_methods()):
            results = list(run(*items, scheduler=schedule, optimize_graph=optimize_graph))
        if sync and self.asynchronous:
            return self._unpacked(self.gather(results), single)
        if sync:
            results = self.gather(results)
        return results[0] if single else results

    @staticmethod
    async def _unpacked(values: Any, single: bool) -> Any:
        got = await values
        return got[0] if single else got

    def _want_unheld(self, keys: list[str]) -> None:
        """Note ``keys`` as wanted by a submission without Futures for them: kept wanted
        across a reconnect to a journaled scheduler until ``_release_unheld``."""
        with self._lock:
            self._unheld.update(keys)

    def _release_unheld(self, keys: list[str]) -> None:
        """Tell the scheduler this client no longer wants ``keys`` (ones it asked for in
        a submission without making Futures for them)."""

        def release() -> None:
            with self._lock:
                self._unheld.difference_update(keys)
            for key in keys:
                self._session.release(key)

        self._loop.call_soon(release)

    def get_executor(self, **kwargs: Any) -> concurrent.futures.Executor:
        """A ``concurrent.futures.Executor`` that runs on this cluster."""
        from regrow.client.executor import ClientExecutor

        return ClientExecutor(self, **kwargs)

    def restart(self, timeout: float = 30.0) -> None:
        """Restart every worker and clear the scheduler (the seed's five steps).

        Every future of every client goes to 'cancelled'; each worker is killed hard
        through its nanny (so a frozen or swamped worker is no obstacle) and replaced;
        returns once the fresh workers have registered.
        """
        self._check_running()
        return self._sync(self._restart(timeout), timeout=timeout + 10)

    async def _restart(self, timeout: float) -> None:
        await self._session.request({"op": "restart", "timeout": timeout}, timeout=timeout + 5)
        with self._lock:
            states = list(self._states.values())
        for st in states:
            if not st.done() or st.status != CANCELLED:
                st.cancel()

    def nannies(self) -> dict[str, str]:
        """``{nanny address: its current worker's address}``: stable names across restarts."""
        return self._sync(self._nannies())

    async def _nannies(self) -> dict[str, str]:
        workers = (await self._scheduler_info())["workers"]
        return {w["nanny"]: a for a, w in workers.items() if w.get("nanny")}

    def shutdown(self) -> None:
        """Stop the whole cluster (scheduler and workers), then close this client."""
        if self.asynchronous:
            return self._sync(self._shutdown())
        with contextlib.suppress(Exception):
            self._loop.run(self._session.request({"op": "shutdown"}), timeout=10)
        self.close()

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await _within(self._session.request({"op": "shutdown"}), 10)
        await self._close()

    # Closing is the other thing written for each mode: a synchronous client's session is
    # closed from outside its loop, and so is its cluster; an asynchronous one's from
    # inside, without blocking on the cluster's processes. The steps are shared.
    def close(self, timeout: float | None = 10.0) -> None:
        """Disconnect and cancel this client's pending futures (and stop the cluster it
        started itself); awaitable on an asynchronous client."""
        if self.asynchronous:
            return deferred(self._close(timeout))
        if not self._closing():
            return
        with contextlib.suppress(Exception):
            self._loop.run(self._disconnect(), timeout=timeout)
        self._closed()
        if self._own_cluster is not None:
            self._own_cluster.close()

    async def _close(self, timeout: float | None = 10.0) -> None:
        if not self._closing():
            return
        with contextlib.suppress(Exception):
            await _within(self._loop.arun(self._disconnect()), timeout)
        self._closed()
        if self._own_cluster is not None:
            await asyncio.to_thread(self._own_cluster.close)

    def _closing(self) -> bool:
        """Mark the client closing: whether there is anything to close."""
        if self.status in ("closing", "closed"):
            return False
        if self.status == "connecting":  # an asynchronous client never started
            self.status = "closed"
            return False
        self.status = "closing"
        return True

    async def _disconnect(self) -> None:
        self._session.send({"op": "close-client"})
        await self._session.close()

    def _closed(self) -> None:
        with self._lock:
            states = list(self._states.values())
        for st in states:
            if not st.done():
                st.cancel()
        if self._callbacks is not None:
            self._callbacks.shutdown(wait=False)
        if self in _default:
            _default.remove(self)
        _unset_ecosystem_defaults(self)
        self.status = "closed"

    def _close_soon(self) -> None:
        """Close without waiting (an asynchronous client being garbage-collected, in any
        thread): its session closes in its loop, if that still runs."""
        if not self._closing():
            return
        self._loop.call_soon(self._spawn_disconnect)
        self._closed()
        # Its own cluster, if any, is closed by its own finalizer (LocalCluster.__del__).

    def _spawn_disconnect(self) -> None:
        spawn(self._disconnect(), _closing_sessions, "client-close")

    def __enter__(self) -> Client:
        if self.asynchronous:
            raise RuntimeError("an asynchronous Client is used with 'async with'")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __await__(self) -> Generator[Any, None, Client]:
        """``await Client(..., asynchronous=True)``: the connected client."""
        return self._start().__await__()

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        if self.asynchronous:
            await self._close()
        else:
            self.close()

    def __del__(self) -> None:
        if getattr(self, "status", "closed") == "running":
            with contextlib.suppress(Exception):
                if self.asynchronous:
                    self._close_soon()  # it must not block, maybe in its own loop
                else:
                    self.close(timeout=2)

    def __repr__(self) -> str:
        return f"<Client {self.id} scheduler={self.scheduler_address!r} status={self.status}>"


async def _within(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """Await ``coro``, cancelling it after ``timeout`` s (raising TimeoutError, as
    ``LoopThread.run`` does for a synchronous client)."""
    if timeout is None:
        return await coro
    try:
        async with asyncio.timeout(timeout) as scope:
            return await coro
    except TimeoutError:
        if scope.expired():
            raise TimeoutError(f"operation did not finish within {timeout} s") from None
        raise


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def _set_ecosystem_defaults(client: Client) -> None:
    """As dask.distributed's Client does: while this client is open it is dask's
    scheduler, and joblib knows the "regrow" backend (each only if installed)."""
    if _installed("dask"):
        from regrow.client import dask_graph

        dask_graph.set_default(client)
    if _installed("joblib"):
        from regrow.client import joblib_backend

        joblib_backend.register()


def _unset_ecosystem_defaults(client: Client) -> None:
    import sys

    if "regrow.client.dask_graph" in sys.modules:
        sys.modules["regrow.client.dask_graph"].unset_default(client)


def _inline_values(futures: list[Future]) -> tuple[dict[str, Any], list[str]]:
    """The values of futures whose (small) result came with the news that they finished,
    and the keys of the others, to fetch from the workers."""
    keys = list(dict.fromkeys(f.key for f in futures))
    values: dict[str, Any] = {}
    for f in futures:
        blob = f._state.inline
        if blob is not None and f.key not in values:
            # Each call unpickles anew: like a fetch, it hands out a fresh object.
            values[f.key] = loads([blob])
    return values, [k for k in keys if k not in values]


def _settled(todo: list[Future], settled: bool, errors: str, timeout: float | None) -> list[Future]:
    """After gather waited on ``todo``: raise for a failed future (``errors="raise"``) or
    the timeout; else the finished futures, to fetch."""
    for f in todo:
        if f.status in (ERROR, CANCELLED) and errors == "raise":
            f._raise_if_failed()
    if not settled:
        late = next(f.key for f in todo if not f.done())
        raise TimeoutError(f"gather: {late!r} not done within {timeout} s")
    return [f for f in todo if f.status == FINISHED]


def _still_todo(todo: list[Future], values: dict[str, Any]) -> list[Future]:
    """What gather waits for again: finished but not fetched (lost meanwhile), or not
    settled (lost and being computed again)."""
    return [f for f in todo if f.status == FINISHED and f.key not in values] + [
        f for f in todo if f.status not in (FINISHED, ERROR, CANCELLED)
    ]


def _gathered(futures: Any, flat: list[Future], values: dict[str, Any]) -> Any:
    skip = {f.key for f in flat if f.status in (ERROR, CANCELLED)}
    return _substitute(futures, values, skip)


def _collect(obj: Any, out: list[Future]) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, list | tuple | set | frozenset):
        for x in obj:
            _collect(x, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out)


_SKIP = object()


def _substitute(obj: Any, values: dict[str, Any], skip: set[str]) -> Any:
    if isinstance(obj, Future):
        return _SKIP if obj.key in skip else values[obj.key]
    if isinstance(obj, list | tuple | set | frozenset):
        items = [_substitute(x, values, skip) for x in obj]
        items = [x for x in items if x is not _SKIP]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            value = _substitute(v, values, skip)
            if value is not _SKIP:
                out[k] = value
        return type(obj)(out) if type(obj) is not dict else out
    return obj
