"""The client: the object users hold, and how its parts fit together.

``Client`` is one async session with a sync facade. It owns its lifecycle (connecting,
starting an asynchronous client in the caller's loop, closing), the registry of live
clients (``get_client``), the public methods (each checks its arguments and hands its
work, a coroutine, to ``_sync``: waited for in the shared IO thread on a synchronous
client, returned to await on an asynchronous one), and the ``FutureOwner`` side of
its Futures: holding and releasing keys, fetching values, running callbacks.

The work itself is done elsewhere, and this module must not grow it back:
``session.py`` does the IO (scheduler and worker connections, reconnecting),
``keys.py`` counts the keys held, ``submission.py`` builds task entries, ``transfer.py``
decides gather and scatter, ``queries.py`` asks about the cluster, and
``dask_graph.py`` runs dask graphs.
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
import concurrent.futures
import contextlib
import dataclasses
import inspect
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from regrow import interrupts
from regrow.client import queries, transfer
from regrow.client.futures import (
    CANCELLED,
    ERROR,
    Future,
    FutureState,
    _futures_arg,
    set_owner_lookup,
)
from regrow.client.keys import KeyTable
from regrow.client.loop import CallerLoop, ClientLoop, deferred, shared_loop, within
from regrow.client.session import Session
from regrow.client.submission import (
    MAP_BATCH,
    Outbox,
    TaskBuilder,
    check_options,
    check_workers,
)
from regrow.config import Settings
from regrow.errors import SchedulerLostError, explain
from regrow.protocol.comm import client_tls, normalize_address, spawn
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import (
    CancelMsg,
    CloseClientMsg,
    CoordinateMsg,
    CoordinateReply,
    DesireKeysMsg,
    ExtraMsg,
    LogEventMsg,
    RebalanceMsg,
    ReplicateMsg,
    RestartMsg,
    RetryMsg,
    RunOnSchedulerMsg,
    ShutdownMsg,
    TaskEntry,
)
from regrow.protocol.reach import read_scheduler_file
from regrow.protocol.serialize import dumps
from regrow.security import Security

logger = logging.getLogger("regrow.client")

_clients: weakref.WeakValueDictionary[str, Client] = weakref.WeakValueDictionary()
_default: list[Client] = []
T = TypeVar("T")
P = ParamSpec("P")
# Sessions of asynchronous clients closing after their client was garbage-collected.
_closing_sessions: set[asyncio.Task[Any]] = set()


def _log_handler_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("an event handler raised", exc_info=task.exception())


def default_client_for(scheduler_address: str) -> Client | None:
    """The most recent live client of this scheduler (used when a Future is unpickled)."""
    for client in reversed(_default):
        if client.status == "running" and client.scheduler_address == scheduler_address:
            return client
    for client in list(_clients.values()):
        if client.status == "running" and client.scheduler_address == scheduler_address:
            return client
    return None


set_owner_lookup(default_client_for)


def get_client(timeout: float = 10.0) -> Client:
    """The default client of this process (the last one created). Inside a task on a
    worker with none, a client of that worker's scheduler, made once per worker process
    with the worker's token and TLS material and shared by its tasks (as
    dask.distributed's): a task may submit tasks and wait on them. A task that waits on
    others should ``secede()`` first (``worker_client()`` does both)."""
    for client in reversed(_default):
        if client.status == "running":
            return client
    from regrow.worker.execution import _thread_state

    worker = getattr(_thread_state, "worker", None)
    if worker is None:
        raise ValueError("no regrow Client is running in this process")
    with _task_client_lock:
        for client in reversed(_default):
            if client.status == "running":
                return client
        security = worker.security
        if security.tls_worker_cert and not security.tls_client_cert:
            # The worker's certificate serves as its tasks' client certificate.
            security = dataclasses.replace(
                security,
                tls_client_cert=security.tls_worker_cert,
                tls_client_key=security.tls_worker_key,
            )
        return Client(
            worker.scheduler_address,
            token=worker.token,
            security=security,
            settings=worker.settings,
            timeout=timeout,
            name=f"tasks-of-{worker.address}-{uuid.uuid4().hex[:8]}",
            _worker=worker.address,
        )


_task_client_lock = threading.Lock()


# dask.distributed's submit/map keywords regrow does not take: passed on to the function,
# they would fail only in the task, far from the call.
_DASK_ONLY = {
    "allow_other_workers": "workers= restricts a task to those workers, always",
    "actor": "regrow has no actors",
    "actors": "regrow has no actors",
    "fifo_timeout": "tasks run by priority, then in the order submitted",
}


def _refuse_dask_only(what: str, kwargs: Mapping[str, Any]) -> None:
    for name in kwargs:
        if name in _DASK_ONLY:
            raise TypeError(
                f"{what}(): {name}= is dask.distributed's, not taken here ({_DASK_ONLY[name]})"
            )


def _pickle(value: Any) -> bytes:
    import cloudpickle

    return bytes(cloudpickle.dumps(value, protocol=5))


def _resources(resources: Any) -> dict[str, float] | None:
    if resources is None:
        return None
    from regrow.worker.shell import check_resources

    return check_resources(resources, "resources=") or None


# get_dataset's default when none is given.
NO_DEFAULT: Any = object()


class Datasets(collections.abc.MutableMapping[str, Any]):
    """``client.datasets``: the published datasets as a mapping, as dask.distributed's."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getitem__(self, name: str) -> Any:
        return self.client.get_dataset(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.client.publish_dataset(value, name=name, override=True)

    def __delitem__(self, name: str) -> None:
        self.client.unpublish_dataset(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.client.list_datasets())

    def __len__(self) -> int:
        return len(self.client.list_datasets())


@contextlib.contextmanager
def worker_client(timeout: float = 10.0, separate_thread: bool = True) -> Iterator[Client]:
    """In a task: ``with worker_client() as client:`` submits and gathers tasks from it,
    as dask.distributed's. ``separate_thread`` (the default): the task secedes for the
    block, giving its thread's place to other tasks while it waits, and rejoins after."""
    from regrow.worker.execution import rejoin, secede

    client = get_client(timeout=timeout)
    if separate_thread:
        secede()
    try:
        yield client
    finally:
        if separate_thread:
            rejoin()


class Client:
    """Connect to a regrow cluster and run Python functions on it.

    ``Client(address_or_cluster)`` takes a scheduler address ('tcp://host:port', or
    'tls://host:port' with ``security=Security(...)``) or a ``LocalCluster``, whose token
    and security it takes; with no argument it starts a LocalCluster of its own.

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
        security: Security | None = None,
        scheduler_file: str | os.PathLike[str] | None = None,
        _worker: str = "",
    ) -> None:
        if scheduler_file is not None:
            if address is not None:
                raise ValueError("Client() takes an address or scheduler_file=, not both")
            address = read_scheduler_file(os.fspath(scheduler_file), timeout)
        self.status = "connecting"
        self.asynchronous = asynchronous
        self._own_cluster: Any = None
        self._timeout = timeout
        self._set_as_default = set_as_default
        self.id = name or f"client-{uuid.uuid4().hex[:12]}"
        # The worker whose process this client lives in (get_client in a task): its
        # death, reported by its nanny, ends this client at once (its leases go).
        self._worker = _worker
        self._keys = KeyTable()
        self._tasks = TaskBuilder(self._new_future)
        self._outbox = Outbox()
        # Re-entrant: a Future garbage-collected while this thread holds the lock releases
        # its key from inside the critical section (Future.__del__ -> release_key).
        self._releases_lock = threading.RLock()
        self._releases: list[str] = []
        self._releases_scheduled = False
        self._callbacks_lock = threading.Lock()
        self._callbacks: concurrent.futures.ThreadPoolExecutor | None = None
        # Called (key, worker) from the IO thread when a running task's worker died.
        self._interrupt_listeners: list[Callable[[str, str], None]] = []
        self._dashboard = ""  # where the scheduler serves its dashboard (it says so)
        self._plugins: set[str] = set()  # names of the plugins this client registered
        self._events: collections.deque[tuple[float, str, dict[str, Any]]] = collections.deque(
            maxlen=10_000
        )
        # subscribe_topic: topic -> handler; the tasks of coroutine handlers running.
        self._topic_handlers: dict[str, Callable[[tuple[float, dict[str, Any]]], Any]] = {}
        self._handler_tasks: set[asyncio.Future[Any]] = set()
        # The loop the session runs in: set here, or when an asynchronous client starts.
        self._loop: ClientLoop
        self._session: Session
        # Known once there is an address: an asynchronous client with none starts its own
        # cluster when awaited, and uses these arguments then.
        self.scheduler_address = ""
        self.cluster: Any = None
        self.token = token
        self.security = security or Security()
        self._address_args = (token, settings, security)
        self._starting: asyncio.Future[Client] | None = None
        if address is None and not asynchronous:
            from regrow.deploy import LocalCluster

            address = self._own_cluster = LocalCluster()
        if address is not None:
            self._use_address(address, token, settings, security)
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

    def _use_address(
        self,
        address: Any,
        token: str | None,
        settings: Settings | None,
        security: Security | None,
    ) -> None:
        scheduler_address = getattr(address, "scheduler_address", address)
        if not isinstance(scheduler_address, str):
            raise TypeError(
                "Client() takes a scheduler address like 'tcp://127.0.0.1:8786' or a "
                f"LocalCluster, got {type(address).__name__}"
            )
        if token is None:
            token = getattr(address, "token", None) or os.environ.get("REGROW_TOKEN") or None
        self.scheduler_address = normalize_address(scheduler_address)
        self.cluster = address if not isinstance(address, str) else None
        self.token = token
        # A cluster's security goes with it; else that of REGROW_TLS_* (as the token).
        self.security = (
            security or getattr(address, "security", None) or Security.from_env("client")
        )
        try:
            client_tls(self.scheduler_address, self.security, "client")
        except ValueError as exc:
            raise ValueError(f"Client: {exc}") from None
        # A LocalCluster's settings (reconnect timeout...) apply to its clients too.
        self.settings = settings or getattr(address, "settings", None) or Settings.from_env()
        self._tasks.max_frame_bytes = self.settings.scheduler_max_frame_bytes
        self._session = Session(self, self._keys)

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
        return deferred(self._loop.arun(within(coro, timeout)))

    # ------------------------------------------------- keys (FutureOwner)
    # What its Futures call (futures.FutureOwner says what each promises).
    def hold_key(self, key: str) -> FutureState:
        return self._keys.acquire(key)

    def release_key(self, key: str) -> None:
        if not self._keys.release(key):
            return
        if self.status in ("running", "reconnecting"):
            # While reconnecting the release waits in the session for the scheduler to
            # be back (dropping it would leave the key wanted for good).
            with self._releases_lock:
                self._releases.append(key)
                if self._releases_scheduled:
                    return
                self._releases_scheduled = True
            self._loop.call_soon(self._flush_releases)

    def _flush_releases(self) -> None:
        with self._releases_lock:
            keys, self._releases = self._releases, []
            self._releases_scheduled = False
        for key in keys:
            self._session.release(key)

    def want_keys(self, keys: list[str]) -> None:
        self._loop.call_soon(self._session.send, DesireKeysMsg(keys=keys))

    def fire_and_forget_keys(self, keys: list[str]) -> None:
        # Through the loop, as submissions go: sent after every one made before.
        self._check_running()
        self._loop.call_soon(self._session.fire_and_forget, keys)

    def fetch_values(self, futures: list[Future], timeout: float | None = None) -> dict[str, Any]:
        values, keys = transfer.inline_values(futures)
        if keys:
            values.update(self._loop.run(self._session.gather(keys), timeout=timeout))
        self._fetched(keys, values)
        return values

    def holders(self, key: str, timeout: float) -> list[str]:
        if self.asynchronous or self._loop.in_loop() or self.status != "running":
            return []
        try:
            who = self._loop.run(self._ask(queries.who_has, [key]), timeout=timeout)
        except Exception:
            return []  # a view: nothing to show beats an error
        return list(who.get(key) or [])

    async def fetch_values_async(
        self, futures: list[Future], timeout: float | None = None
    ) -> dict[str, Any]:
        values, keys = transfer.inline_values(futures)
        if keys:
            values.update(await within(self._loop.arun(self._session.gather(keys)), timeout))
        self._fetched(keys, values)
        return values

    def _fetched(self, keys: list[str], values: dict[str, Any]) -> None:
        missing = transfer.lost_keys(keys, values, self._keys)
        if missing:
            self.want_keys(missing)

    def run_done_callback(self, fn: Callable[[Future], Any], future: Future) -> None:
        self._in_callback_thread(fn, future, "done-callback")

    def _in_callback_thread(self, fn: Callable[[T], Any], arg: T, what: str) -> None:
        """Call ``fn(arg)`` in the client's callback thread (one, so in order); log what
        it raises."""
        with self._callbacks_lock:
            if self._callbacks is None:
                self._callbacks = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="regrow-callback"
                )
            pool = self._callbacks

        def call() -> None:
            try:
                fn(arg)
            except Exception:
                logger.exception("%s %r raised", what, fn)

        try:
            pool.submit(call)
        except RuntimeError:
            call()  # pool shut down with the client: run inline

    # ---------------------------------------------------------------- events
    def _record_event(self, topic: str, text: str, data: dict[str, Any] | None = None) -> None:
        # The event's own record (docs/events.md); from an older scheduler, its text only.
        message = dict(data) if data else {"action": "", "text": text}
        stamp = message.pop("time", None)
        event = (stamp if isinstance(stamp, float) else time.time(), topic, message)
        self._events.append(event)
        logger.info("[%s] %s", topic, text)
        handler = self._topic_handlers.get(topic)
        if handler is None:
            return
        if inspect.iscoroutinefunction(handler):
            task = asyncio.ensure_future(handler((event[0], event[2])))
            task.add_done_callback(_log_handler_failure)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_tasks.discard)
        else:
            self._in_callback_thread(handler, (event[0], event[2]), f"handler of topic {topic!r}")

    def subscribe_topic(
        self, topic: str, handler: Callable[[tuple[float, dict[str, Any]]], Any]
    ) -> None:
        """Call ``handler((time, event))`` for every event on ``topic`` from now on, as
        dask.distributed's: in the client's callback thread, in order; a coroutine
        function is run in the client's loop (an asynchronous client). One handler per
        topic: a new one replaces the last. Topics and events: see ``get_events``."""
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"subscribe_topic() takes a topic name, got {topic!r}")
        if not callable(handler):
            raise TypeError(f"subscribe_topic() takes a callable handler, got {handler!r}")
        if inspect.iscoroutinefunction(handler) and not self.asynchronous:
            raise TypeError(
                "a coroutine function handles events on an asynchronous Client only; "
                "give this client a plain function"
            )
        self._topic_handlers[topic] = handler

    def unsubscribe_topic(self, topic: str) -> None:
        """Stop calling the handler of ``topic``; ValueError if it has none."""
        if self._topic_handlers.pop(topic, None) is None:
            raise ValueError(f"no handler subscribed to topic {topic!r}")

    def log_event(self, topic: str, msg: Any) -> Any:
        """Log an event on ``topic`` at the scheduler, as dask.distributed's: it joins the
        cluster's timeline (the dashboard shows it) and every client's ``get_events``.
        ``msg`` is a dict of plain values (str, numbers, bools, lists, dicts), or any
        other plain value, kept as ``{"text": str(msg)}``; ``action`` and ``text`` in
        it name and describe the event."""
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"log_event() takes a topic name, got {topic!r}")
        data = dict(msg) if isinstance(msg, dict) else {"text": str(msg)}
        if not all(isinstance(k, str) for k in data):
            raise TypeError("log_event() takes a dict with str keys")
        return self._sync(self._send(LogEventMsg(topic=topic, data=data)))

    async def _send(self, msg: LogEventMsg) -> None:
        self._session.send(msg)

    def get_events(self, topic: str | None = None) -> list[tuple[float, str, dict[str, Any]]]:
        """What the scheduler told this client happened: ``(time, topic, event)``, oldest
        first; ``time`` is wall-clock seconds when it happened.

        Each ``event`` is a dict: ``action`` (what happened, e.g. ``"worker-lost"``),
        ``text`` (one line for people), ``seq`` (its number at this scheduler) and the
        action's own fields (docs/events.md lists them all). Topics: ``workers``
        (joined, lost, retired, replaced), ``recovery`` (results computed again, tasks
        suspected, isolated or blamed, a scheduler restored from its journal) and
        ``warnings`` (an impure task computed a second time).
        """
        return [e for e in list(self._events) if topic is None or e[1] == topic]

    def _scheduler_gone(self, reason: str) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "lost"
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        for st in self._keys.states():
            if not st.done():
                st.set_local_error(
                    SchedulerLostError(
                        f"{reason} before this future finished ({self.scheduler_address})"
                    )
                )

    def _check_running(self) -> None:
        if self.status not in ("running", "reconnecting"):
            raise RuntimeError(f"this client is {self.status}; it cannot send work")

    # ----------------------------------------------------------- submitting
    def submit(
        self,
        func: Callable[..., Any],
        *args: Any,
        key: str | None = None,
        pure: bool = True,
        workers: str | Iterable[str] | None = None,
        retries: int = 0,
        priority: int = 0,
        resources: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; returns a Future at once.
        ``resources={"GPU": 1}``: it runs only on a worker with that much of each free
        (``regrow worker --resources GPU=2``), taking it while it runs."""
        if not callable(func):
            raise TypeError(f"submit() needs a callable first argument, got {type(func).__name__}")
        _refuse_dask_only("submit", kwargs)
        retries, priority = check_options(retries, priority)
        self._check_running()
        return self._tasks.submit(
            func,
            args,
            kwargs,
            key=key,
            pure=pure,
            workers=check_workers(workers),
            retries=retries,
            priority=priority,
            send=self._send_tasks,
            resources=_resources(resources),
        )

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | list[str] | None = None,
        pure: bool = True,
        workers: str | Iterable[str] | None = None,
        retries: int = 0,
        priority: int = 0,
        batch_size: int = MAP_BATCH,
        resources: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> list[Future]:
        """``submit`` for each item of the zipped iterables, sent in batches."""
        if not callable(func):
            raise TypeError(f"map() needs a callable first argument, got {type(func).__name__}")
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        _refuse_dask_only("map", kwargs)
        for it in iterables:
            if isinstance(it, Mapping) or not isinstance(it, Iterable):
                raise TypeError(f"map() takes iterables (not {type(it).__name__})")
        retries, priority = check_options(retries, priority)
        self._check_running()
        return self._tasks.map(
            func,
            iterables,
            kwargs,
            key=key,
            pure=pure,
            workers=check_workers(workers),
            retries=retries,
            priority=priority,
            batch_size=batch_size,
            send=self._send_tasks,
            resources=_resources(resources),
        )

    def _new_future(self, key: str) -> Future:
        future = Future(key, self)
        if future._state.status == CANCELLED:
            future._state.reset()  # submitted again after a cancel or restart: it runs anew
        return future

    def _fn_frames(self, fn: Callable[..., Any]) -> list[Buffer]:
        return self._tasks.fn_frames(fn)

    def _send_tasks(
        self, entries: list[TaskEntry], frames: list[Buffer], wanted: list[str]
    ) -> None:
        if self._outbox.put(entries, frames, wanted):
            self._loop.call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        for msg, frames in self._outbox.take():
            self._session.submit(msg, frames)

    # ------------------------------------------------------------- results
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
            return self._sync(transfer.gather_async(self, futures, errors, timeout))
        return transfer.gather(self, futures, errors, timeout)

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

        A worker that dies, refuses or stops answering while its share is sent is
        skipped, and its share goes to the other live workers (of ``workers``, if
        given); a journaled scheduler that restarts meanwhile is waited for. Raises
        RuntimeError when no worker can take the data (waiting ``timeout``, else
        ``connect_timeout``, for one to come), TimeoutError after ``timeout`` s.
        """
        self._check_running()
        if not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive int, got {replicas!r}")
        if isinstance(data, Iterator):
            data = list(data)
        wanted = check_workers(workers)
        names, items = transfer.scatter_items(data, hash)
        placed = transfer.scatter(
            self._session,
            self._new_future,
            data,
            names,
            items,
            wanted,
            broadcast,
            replicas,
            timeout,
        )
        # The scatter keeps its own timeout: it registers what it placed before it raises.
        return self._sync(placed)

    # ------------------------------------------------------------- control
    # Each blocking method checks its arguments, then hands its work, a coroutine, to
    # _sync: waited for on a synchronous client, returned on an asynchronous one.
    async def _ask(
        self,
        query: Callable[Concatenate[Session, P], Coroutine[Any, Any, T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``query(session, ...)``, one of ``queries``: the session is looked up when it
        runs (an asynchronous client that was never started has none)."""
        return await query(self._session, *args, **kwargs)

    def cancel(self, futures: Future | Iterable[Future], force: bool = False) -> None:
        """Cancel futures: not-started work is dropped, finished results are freed."""
        fs = [futures] if isinstance(futures, Future) else list(futures)
        return self._sync(self._cancel(fs, force))

    async def _cancel(self, fs: list[Future], force: bool) -> None:
        keys = [f.key for f in fs]
        if not keys:
            return
        await self._session.request(CancelMsg(keys=keys, force=bool(force)))
        for f in fs:
            if f.key in self._keys and not f.done():
                f._state.cancel()

    def retry(self, futures: Future | Iterable[Future]) -> None:
        """Compute erred futures again, as dask.distributed's: each erred task, and the
        erred inputs it erred through, runs again (other futures are left as they are).
        Once this returns they are pending; awaitable on an asynchronous client."""
        fs = _futures_arg(futures, "retry()")
        for f in fs:
            if f.client is not self:
                raise ValueError(f"retry(): future {f.key!r} belongs to another client")
        self._check_running()
        return self._sync(self._retry(fs))

    async def _retry(self, fs: list[Future]) -> None:
        keys = list(dict.fromkeys(f.key for f in fs if f.status == ERROR))
        if not keys:
            return
        # Pending from now on (in the loop, where the news of keys is handled): the
        # scheduler's answers settle them again, the first of which may come before
        # the reply to this request.
        for key in keys:
            st = self._keys.state(key)
            if st is not None and st.status == ERROR:
                st.reset()
        await self._session.request(RetryMsg(keys=keys))

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
        wanted = check_workers(workers)
        return self._sync(self._ask(queries.run, dumps((function, args, kwargs)), wanted))

    def who_has(self, futures: Future | Iterable[Future] | None = None) -> dict[str, list[str]]:
        if futures is None:
            keys = self._keys.keys()
        elif isinstance(futures, Future):
            keys = [futures.key]
        else:
            keys = [f.key for f in futures]
        return self._sync(self._ask(queries.who_has, keys))

    def scheduler_info(self) -> dict[str, Any]:
        return self._sync(self._ask(queries.scheduler_info))

    def nthreads(self, workers: str | Iterable[str] | None = None) -> dict[str, int]:
        """``{worker address: its threads}``, of every worker or of ``workers``
        (addresses or names; unknown ones are left out)."""
        wanted = _worker_list(workers, "nthreads()")
        return self._sync(self._ask(queries.nthreads, wanted))

    ncores = nthreads  # dask.distributed's older name

    def has_what(self, workers: str | Iterable[str] | None = None) -> dict[str, list[str]]:
        """``{worker address: [keys of the results it holds]}``, of every worker or of
        ``workers`` (addresses or names; an unknown one holds nothing), as
        dask.distributed's; ``who_has`` is the other way round."""
        wanted = _worker_list(workers, "has_what()")
        return self._sync(self._ask(queries.has_what, wanted))

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        return self._sync(self._ask(queries.wait_for_workers, n_workers, timeout))

    def nannies(self) -> dict[str, str]:
        """``{nanny address: its current worker's address}``: stable names across restarts."""
        return self._sync(self._ask(queries.nannies))

    def replicate(
        self, futures: Future | Iterable[Future], n: int | None = None, timeout: float = 60.0
    ) -> None:
        """Keep ``n`` copies (None: one on every worker) of each future's result, on as
        many workers: waits for the futures, then until the copies exist. Unlike
        dask.distributed's, the scheduler keeps that many from then on: a copy lost with
        its worker is made again elsewhere."""
        fs = [futures] if isinstance(futures, Future) else list(futures)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n must be an int >= 1 or None, got {n!r}")
        for f in fs:
            if not isinstance(f, Future):
                raise TypeError(f"replicate takes futures, got {type(f).__name__}")
        return self._sync(self._replicate(fs, n, timeout))

    async def _replicate(self, fs: list[Future], n: int | None, timeout: float) -> None:
        from regrow.client.futures import ALL_COMPLETED, _wait_async

        if not fs:
            return
        await _wait_async(fs, timeout, ALL_COMPLETED)
        keys = [f.key for f in fs]
        await self._session.request(ReplicateMsg(keys=keys, n=n or 0))
        deadline = time.monotonic() + timeout
        while True:
            workers = len((await queries.scheduler_info(self._session))["workers"])
            want = min(n or workers, workers)
            holders = await queries.who_has(self._session, keys)
            if all(len(holders.get(k, [])) >= want for k in keys):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicate: {want} copies not made within {timeout} s")
            await asyncio.sleep(0.05)

    def rebalance(
        self,
        futures: Future | Iterable[Future] | None = None,
        workers: str | Iterable[str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        """Spread the results of ``futures`` (None: all) evenly over ``workers`` (None:
        all), as dask.distributed's: from workers holding more than their share to
        those holding less, each moved as a copy and then a drop (nothing recomputed).
        Returns once the moves are over."""
        keys = None
        if futures is not None:
            fs = [futures] if isinstance(futures, Future) else list(futures)
            if not all(isinstance(f, Future) for f in fs):
                raise TypeError("rebalance takes futures (or None for every result)")
            keys = [f.key for f in fs]
        return self._sync(self._rebalance(keys, check_workers(workers), timeout))

    async def _rebalance(
        self, keys: list[str] | None, workers: list[str] | None, timeout: float
    ) -> None:
        await self._session.request(RebalanceMsg(keys=keys, workers=workers))
        deadline = time.monotonic() + timeout
        while (await queries.scheduler_info(self._session)).get("rebalancing"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rebalance: moves not over within {timeout} s")
            await asyncio.sleep(0.05)

    # ------------------------------------------- code for workers and scheduler
    def upload_file(self, filename: str | os.PathLike[str], load: bool = True) -> None:
        """Send a .py, .zip or .egg file to every worker, and to every worker that joins
        later: a .py is imported (again, if it was), a .zip or .egg put on sys.path, as
        dask.distributed's. Raises if a worker could not take it (a SyntaxError...)."""
        path = os.fspath(filename)
        if os.path.splitext(path)[1] not in (".py", ".zip", ".egg"):
            raise ValueError(f"upload_file takes a .py, .zip or .egg file, got {path!r}")
        with open(path, "rb") as f:
            payload = f.read()
        return self._sync(self._extra("file", os.path.basename(path), payload))

    def register_plugin(
        self, plugin: Any, name: str | None = None, idempotent: bool = False
    ) -> None:
        """Register a ``WorkerPlugin`` (set up in every worker, now and later) or a
        ``SchedulerPlugin`` (refused unless the scheduler allows clients' code:
        ``regrow scheduler --allow-scheduler-code``), as dask.distributed's. One per
        name (``name``, else the plugin's ``name`` attribute, else its class): a new one
        replaces the old, unless ``idempotent``."""
        from regrow.client.plugins import plugin_kind

        kind = plugin_kind(plugin)
        label = name or getattr(plugin, "name", None) or f"{type(plugin).__name__}"
        if not isinstance(label, str):
            raise TypeError(f"a plugin's name must be a str, got {label!r}")
        try:
            payload = _pickle(plugin)
        except Exception as exc:
            raise TypeError(f"the plugin cannot be pickled: {explain(exc)}") from exc
        if idempotent and label in self._plugins:
            return None
        self._plugins.add(label)
        return self._sync(self._extra(kind, label, payload))

    register_worker_plugin = register_plugin

    async def _extra(self, kind: str, name: str, payload: bytes) -> None:
        reply, _ = await self._session.request(ExtraMsg(kind=kind, name=name, payload=payload))
        if reply.errors:
            where, error = next(iter(sorted(reply.errors.items())))
            more = f" (and {len(reply.errors) - 1} other(s))" if len(reply.errors) > 1 else ""
            raise RuntimeError(f"{kind} {name!r} failed on {where}{more}: {error}")

    def run_on_scheduler(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` in the scheduler (with ``dask_scheduler=``
        the scheduler, if it takes it). Refused, with the reason, unless the scheduler
        was started with ``--allow-scheduler-code``."""
        if not callable(function):
            raise TypeError(f"run_on_scheduler needs a callable, got {type(function).__name__}")
        return self._sync(self._run_on_scheduler(_pickle((function, args, kwargs))))

    async def _run_on_scheduler(self, payload: bytes) -> Any:
        import cloudpickle

        reply, frames = await self._session.request(RunOnSchedulerMsg(payload=payload))
        value = cloudpickle.loads(b"".join(bytes(f) for f in frames))
        if not reply.ok:
            raise value
        return value

    # ------------------------------------------------------- coordination
    async def _coordinate(self, msg: CoordinateMsg, timeout: float | None) -> CoordinateReply:
        """A request to a lock, queue, variable... held by the scheduler
        (client/coordination.py). Its call id, made here, stays the same if it is asked
        again after the scheduler was lost: a change is made once."""
        if not msg.call:
            msg.call = uuid.uuid4().hex
        reply, _ = await self._session.request(msg, timeout=timeout)
        return reply

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False,
                        **kwargs: Any) -> None:  # fmt: skip
        """Publish values (futures kept computed, or any picklable value) under names, for
        any client of the cluster to ``get_dataset``, as dask.distributed's:
        ``publish_dataset(x, name="x")`` or ``publish_dataset(x=x, y=y)``. A name taken
        already is an error unless ``override``."""
        from regrow.client.coordination import pack

        if args:
            if name is None:
                raise TypeError("publish_dataset(value) needs name=...; or use keywords")
            if len(args) != 1:
                raise TypeError("publish_dataset takes one positional value (with name=)")
            kwargs[name] = args[0]
        for label in kwargs:
            if not label:
                raise TypeError("a dataset's name must be a non-empty str")
        items = {label: pack(value) for label, value in kwargs.items()}
        return self._sync(self._publish(items, override))

    async def _publish(self, items: dict[str, tuple[bytes, list[str]]], override: bool) -> None:
        for label, (payload, keys) in items.items():
            msg = CoordinateMsg(
                kind="dataset",
                name=label,
                action="publish",
                payload=payload,
                keys=keys,
                number=float(override),
            )
            reply = await self._coordinate(msg, None)
            if reply.error:
                raise KeyError(reply.error)

    def get_dataset(self, name: str, default: Any = NO_DEFAULT) -> Any:
        """A published dataset (``KeyError`` if there is none, unless ``default``)."""
        return self._sync(self._get_dataset(name, default))

    async def _get_dataset(self, name: str, default: Any) -> Any:
        import cloudpickle

        reply = await self._coordinate(CoordinateMsg(kind="dataset", name=name, action="get"), None)
        if not reply.ok:
            if default is not NO_DEFAULT:
                return default
            raise KeyError(reply.error or f"no dataset named {name!r}")
        return cloudpickle.loads(reply.payload or b"")

    def unpublish_dataset(self, name: str) -> None:
        return self._sync(self._unpublish(name))

    async def _unpublish(self, name: str) -> None:
        msg = CoordinateMsg(kind="dataset", name=name, action="unpublish")
        reply = await self._coordinate(msg, None)
        if not reply.ok:
            raise KeyError(reply.error or f"no dataset named {name!r}")

    def list_datasets(self) -> Any:
        """The names of the published datasets, sorted."""
        return self._sync(self._list_datasets())

    async def _list_datasets(self) -> list[str]:
        reply = await self._coordinate(CoordinateMsg(kind="dataset", name="", action="list"), None)
        return [n for n in (reply.payload or b"").decode().split("\n") if n]

    @property
    def datasets(self) -> Datasets:
        """The published datasets as a mapping: ``client.datasets["x"]``."""
        return Datasets(self)

    def restart(self, timeout: float = 30.0) -> None:
        """Restart every worker and clear the scheduler (the seed's five steps).

        Every future of every client goes to 'cancelled'; each worker is killed hard
        through its nanny (so a frozen or swamped worker is no obstacle) and replaced;
        returns once the fresh workers have registered.
        """
        if not isinstance(timeout, int | float) or not 0 < timeout <= 1e9:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._check_running()
        return self._sync(self._restart(timeout), timeout=timeout + 10)

    async def _restart(self, timeout: float) -> None:
        await self._session.request(RestartMsg(timeout=timeout), timeout=timeout + 5)
        for st in self._keys.states():
            if st.status != CANCELLED:  # a cancelled state is settled already
                st.cancel()

    def retire_workers(
        self,
        workers: list[str] | None = None,
        *,
        close_workers: bool = True,
        timeout: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Take ``workers`` (a list of addresses or names) out of the cluster gracefully,
        as dask.distributed's ``retire_workers``: ``{address: worker info}`` of those
        retired (their ``scheduler_info()`` entries from just before).

        A retiring worker takes no new tasks; what only it holds is copied to other
        workers first, so no future loses its result and nothing is recomputed; then it
        is stopped through its nanny, which does not replace it. A worker that would
        take the last copy of a result with it (no other worker left to take it) stays,
        and is left out of the answer, as are unknown names. ``timeout`` bounds the
        wait for the answer only: the retirement itself goes on.
        """
        if workers is None:
            raise TypeError(
                "retire_workers() needs the workers to retire: a list of addresses or names"
            )
        if isinstance(workers, str | bytes):
            raise TypeError(
                f"retire_workers() takes a list of worker addresses or names, got the "
                f"string {workers!r}; use [{workers!r}]"
            )
        try:
            wanted = list(workers)
        except TypeError:
            raise TypeError(
                "retire_workers() takes a list of worker addresses or names, got "
                f"{type(workers).__name__}"
            ) from None
        if not all(isinstance(w, str) for w in wanted):
            raise TypeError(
                f"retire_workers() takes worker addresses or names (strings), got {wanted!r}"
            )
        if not wanted:
            raise ValueError("retire_workers() got an empty list of workers")
        if close_workers is not True:
            raise NotImplementedError(
                "retire_workers(close_workers=False) is not supported: a retired worker's "
                "process is always stopped"
            )
        self._check_running()
        return self._sync(self._ask(queries.retire_workers, wanted), timeout=timeout)

    def get_executor(self, **kwargs: Any) -> concurrent.futures.Executor:
        """A ``concurrent.futures.Executor`` that runs on this cluster."""
        from regrow.client.executor import ClientExecutor

        return ClientExecutor(self, **kwargs)

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

        return dask_graph.get(
            self, dsk, keys, workers=workers, retries=retries, priority=priority, sync=sync
        )

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
        if not _installed("dask"):
            raise ImportError(
                f"Client.{what} of dask collections needs dask: pip install 'regrow[dask]'"
            )
        from regrow.client import dask_graph

        return dask_graph.compute_or_persist(
            self, what, collections, sync, optimize_graph, workers, retries, priority
        )

    def _want_unheld(self, keys: list[str]) -> None:
        """Note ``keys`` as wanted by a submission without Futures for them: kept wanted
        across a reconnect to a journaled scheduler until ``_release_unheld``."""
        self._keys.want_unheld(keys)

    def _release_unheld(self, keys: list[str]) -> None:
        """Tell the scheduler this client no longer wants ``keys`` (ones it asked for in
        a submission without making Futures for them)."""

        self._loop.call_soon(self._session.release_unheld, keys)

    # --------------------------------------------------------------- closing
    def shutdown(self) -> None:
        """Stop the whole cluster (scheduler and workers), then close this client."""
        if self.asynchronous:
            return self._sync(self._shutdown())
        with contextlib.suppress(Exception):
            self._loop.run(self._session.request(ShutdownMsg()), timeout=10)
        self.close()

    async def _shutdown(self) -> None:
        with contextlib.suppress(Exception):
            await within(self._session.request(ShutdownMsg()), 10)
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
            await within(self._loop.arun(self._disconnect()), timeout)
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
        self._session.send(CloseClientMsg())
        await self._session.close()

    def _closed(self) -> None:
        for st in self._keys.states():
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
            # An asynchronous client's close must not block (maybe in its own loop).
            interrupts.quietly(
                lambda: self._close_soon() if self.asynchronous else self.close(timeout=2)
            )

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard (None: it serves none), with the token in the link
        when it is off loopback, as Jupyter's links; the terminal and Jupyter show it."""
        from regrow.protocol.health import dashboard_link

        return dashboard_link(self._dashboard, self.token) or None

    def __repr__(self) -> str:
        link = f" dashboard={self.dashboard_link}" if self._dashboard else ""
        return f"<Client {self.id} scheduler={self.scheduler_address!r} status={self.status}{link}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: the scheduler, the status and the dashboard's link."""
        from html import escape

        link = self.dashboard_link
        dashboard = (
            f'<a href="{escape(link)}" target="_blank">{escape(link)}</a>' if link else "none"
        )
        return (
            f"<div><strong>regrow Client</strong> {escape(self.id)}<br>"
            f"scheduler: {escape(str(self.scheduler_address))} ({escape(self.status)})<br>"
            f"dashboard: {dashboard}</div>"
        )


def _worker_list(workers: Any, what: str) -> list[str] | None:
    """A ``workers=`` argument (an address or name, or a list of them; None: all) as a
    list; TypeError naming ``what`` for anything else."""
    if workers is not None and not isinstance(workers, str | Iterable):
        raise TypeError(
            f"{what} takes a worker address or name, or a list of them, "
            f"got {type(workers).__name__}"
        )
    try:
        return check_workers(workers)
    except TypeError:
        raise TypeError(f"{what} takes worker addresses or names, got {workers!r}") from None


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
