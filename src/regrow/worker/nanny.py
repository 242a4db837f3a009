"""The nanny: starts a worker process, watches it, and starts a fresh one when it dies.

Owns one worker process at a time. Enforces the memory limit (a worker above
``kill_fraction`` of it is killed and replaced), tells the scheduler why each
worker died (exit code, signal, memory limit), and kills its worker hard when the
scheduler asks (restart, a task that will not stop). Its own address stays the
same across worker restarts. It never runs user code. With ``dashboard_address`` it
serves GET /health (``protocol.health``): healthy while it is registered with the
scheduler and its worker process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import tempfile
import time
from typing import Any

import psutil

from regrow.config import Settings
from regrow.errors import CommClosedError, ProtocolError, explain
from regrow.protocol.comm import (
    Connection,
    Listener,
    cancel_others,
    close_once,
    refuse,
    spawn,
)
from regrow.protocol.health import HealthServer, parse_http_address
from regrow.protocol.messages import (
    Ack,
    CloseMsg,
    ExtraMsg,
    ExtraReply,
    KillWorkerMsg,
    LeavingMsg,
    LeftMsg,
    Message,
    NannyRegisteredMsg,
    PingMsg,
    PingReply,
    RegisterNannyMsg,
    WorkerDiedMsg,
    op_of,
)
from regrow.protocol.reach import (
    advertise,
    reconnect,
    register_with,
    split_contact,
    until_reached,
)
from regrow.security import Security
from regrow.worker import memory
from regrow.worker.prefork import Forked

logger = logging.getLogger("regrow.nanny")


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    if returncode == 0:
        return "exited cleanly"
    return f"exited with code {returncode}"


def _told(
    waiting: asyncio.subprocess.Process | Forked | None, argv: list[str], env: dict[str, str]
) -> asyncio.subprocess.Process | Forked | None:
    """``waiting`` (a copy forked at start, or an interpreter started ahead) if it is
    still there, a copy having taken ``argv`` and ``env``; else None (its pipe closed)."""
    if isinstance(waiting, Forked):
        if waiting.returncode is None and waiting.go(argv, env):
            return waiting
        waiting.close()
        return None
    return waiting if waiting is not None and waiting.returncode is None else None


class Nanny:
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
        log_level: str = "WARNING",
        log_file: str | None = None,
        security: Security | None = None,
        insecure: bool = False,
        replaces: str = "",
        timeout: float | None = 60.0,
        contact_address: str = "",
        death_timeout: float | None = None,
        dashboard_address: str | None = None,
        resources: dict[str, float] | None = None,
        prefork: Forked | None = None,
        standby: Forked | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        # GET /health over HTTP at dashboard_address ('HOST:PORT', ':PORT'), if given;
        # http_address is then where ('http://host:port').
        self.dashboard = parse_http_address(dashboard_address) if dashboard_address else None
        self.health = HealthServer(self._health) if self.dashboard else None
        self.http_address = ""
        # How long start() keeps trying to reach a scheduler that is not up (yet).
        self.timeout = timeout
        # How long it keeps trying to reach a scheduler it lost before it closes (and
        # stops its worker); None: for ever. As dask's --death-timeout.
        self.death_timeout = death_timeout
        self.contact_address = contact_address
        self.replaces = replaces
        self.nthreads = nthreads
        self.token = token
        self.host = host
        self.port = port
        self.memory_limit = memory_limit
        self.resources = dict(resources or {})
        self.settings = settings or Settings()
        self.log_level = log_level
        self.log_file = log_file
        self.security = security or Security()
        self.insecure = insecure
        self.listener = Listener(
            self._handle_conn,
            token=token,
            settings=self.settings,
            security=self.security,
            role="worker",
            insecure=insecure,
        )
        self.address = ""
        self.name = name
        self.proc: asyncio.subprocess.Process | Forked | None = None
        # A copy of this process forked at start, waiting to become the first worker.
        self.prefork = prefork
        for copy in (prefork, standby):
            if copy is not None:
                copy.watch()
        # A worker process started ahead, its imports done, waiting on its stdin for the
        # word to start: when the worker dies, it takes over in milliseconds instead of a
        # fresh interpreter's ~200 ms (Settings.standby_worker).
        self.standby: asyncio.subprocess.Process | Forked | None = standby
        self.worker_address = ""
        self.restarts = 0
        self.deaths: list[tuple[float, str]] = []
        self._kill_reason = ""
        self._out_of_memory = False
        self._tmp = tempfile.TemporaryDirectory(prefix="regrow-nanny-")
        self.scheduler: Connection | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopped = asyncio.Event()
        self.closed = asyncio.Event()
        self._worker_up = asyncio.Event()
        self._contact_host = ""
        # Nanny plugins (dask's NannyPlugin), by name: set up here, in this process.
        self.plugins: dict[str, Any] = {}
        # Environment variables for the worker processes it starts from now on (as
        # dask's Nanny.env: its Environ plugin sets them).
        self.env: dict[str, str] = {}
        # leave(): the scheduler's answer, and how long to wait for the retirement.
        self._left: asyncio.Future[bool] | None = None
        self.leave_timeout = 20.0

    # ------------------------------------------------------------------ life
    async def start(self) -> str:
        bound = await self.listener.start(self.host, self.port)
        # The nanny's contact port is its own; its worker (another port) shares the host.
        self._contact_host = split_contact(self.contact_address)[0]
        self.address = self.listener.address = advertise(
            bound, self.host, self.contact_address, self.scheduler_address
        )
        if self.name is None:
            self.name = self.address
        if self.health is not None and self.dashboard is not None:
            # Before the scheduler is reached: until then it answers why it is not ready.
            self.http_address = await self.health.start(*self.dashboard)
            logger.info("nanny health at %s/health", self.http_address)
        # The scheduler may not be up yet (or be restarting): keep trying until timeout.
        await until_reached(self._register, self.scheduler_address, self.timeout)
        await self._start_worker()
        spawn(self._supervise(), self.tasks, "nanny-supervise")
        if self.memory_limit:
            spawn(self._memory_monitor(), self.tasks, "nanny-memory")
        return self.address

    async def close(self) -> None:
        await close_once(self.stopped, self.closed, self._shutdown)

    async def leave(self) -> None:
        """Told to stop (SIGTERM: a batch job ending, a pod deleted, an operator): first
        have the scheduler retire the worker gracefully, so that its results are moved
        to other workers, not recomputed; then close. Bounded by ``leave_timeout``
        (batch systems and Kubernetes send SIGKILL some 30 s after SIGTERM); without a
        scheduler, or a worker, there is nothing to hand over."""
        comm = self.scheduler
        if self.stopped.is_set() or comm is None or comm.closed or not self._worker_up.is_set():
            return
        self._left = asyncio.get_running_loop().create_future()
        comm.send(LeavingMsg(worker=self.worker_address))
        try:
            async with asyncio.timeout(self.leave_timeout):
                retired = await self._left
                if retired:
                    await self.stopped.wait()  # the scheduler's close follows
        except TimeoutError:
            logger.warning(
                "stopping: the worker was not retired within %g s; stopping it anyway",
                self.leave_timeout,
            )
            return
        if not retired:
            logger.warning(
                "stopping: the worker holds the last copy of results no other worker can "
                "take; stopping it anyway (they will be computed again)"
            )

    async def _shutdown(self) -> None:
        await self._stop_worker()
        await self._drop_standby()
        if self.prefork is not None:
            self.prefork.close()  # it reads the end of its pipe and exits
            self.prefork = None
        for name, plugin in list(self.plugins.items()):
            await self._call_plugin(plugin, "teardown", name)
        self.plugins.clear()
        await cancel_others(self.tasks)  # a close ordered by the scheduler runs in one
        if self.scheduler is not None:
            await self.scheduler.close()
        await self.listener.close()
        if self.health is not None:
            await self.health.close()
        self._tmp.cleanup()

    def _health(self) -> str | None:
        """What GET /health says: healthy while the nanny is registered with the
        scheduler and its worker process runs; else why not."""
        if self.stopped.is_set():
            return "the nanny is closing"
        if self.scheduler is None or self.scheduler.closed:
            return f"not registered with the scheduler at {self.scheduler_address}"
        proc = self.proc
        if proc is None or proc.returncode is not None or not self._worker_up.is_set():
            last = f" (the last one {self.deaths[-1][1]})" if self.deaths else ""
            return f"the worker process is not running yet{last}"
        return None

    # ------------------------------------------------------------- scheduler
    async def _register(self, timeout: float | None = None) -> None:
        comm, registered = await register_with(
            self.scheduler_address,
            RegisterNannyMsg(address=self.address, name=self.name or "", replaces=self.replaces),
            NannyRegisteredMsg,
            "the nanny",
            token=self.token,
            settings=self.settings,
            security=self.security,
            timeout=timeout,
        )
        self.replaces = ""  # said once it registered: a reconnection replaces nobody
        self.scheduler = comm
        # Plugins registered before it came (or while it was away): set up before its
        # worker starts (at start) or is next started (a reconnection).
        for name, payload in registered.plugins.items():
            if name not in self.plugins:
                error = await self.add_plugin(name, payload)
                if error:
                    logger.warning("nanny plugin %r: %s", name, error)
        spawn(self._scheduler_loop(comm), self.tasks, "nanny-scheduler-loop")

    async def _connect_scheduler(self) -> None:
        if not await reconnect(
            self._register, self.scheduler_address, self.death_timeout, self.stopped
        ):
            await self.close()

    async def _scheduler_loop(self, comm: Connection) -> None:
        try:
            while True:
                msg, _ = await comm.recv()
                try:
                    await self._order(comm, msg)
                except Exception as exc:
                    refuse(comm, msg, exc, "the scheduler", logger)
        except CommClosedError:
            pass
        if self._left is not None and not self._left.done():
            self._left.set_result(False)  # leaving, and nobody left to hand over to
        if not self.stopped.is_set():
            logger.warning("lost the scheduler; reconnecting")
            await self._connect_scheduler()

    async def _order(self, comm: Connection, msg: Message) -> None:
        """Carry out an order (from the scheduler, or any peer that connects), answering
        it when it is a request."""
        match msg:
            case KillWorkerMsg():
                await self.kill_worker(msg.reason or "killed on request")
                comm.reply(msg, Ack())
            case CloseMsg():
                spawn(self.close(), self.tasks, "nanny-close")
            case PingMsg():
                reply = PingReply(address=self.address, pid=os.getpid(), worker=self.worker_address)
                comm.reply(msg, reply)
            case NannyRegisteredMsg():
                pass
            case ExtraMsg(kind="nanny-plugin"):
                error = await self.add_plugin(msg.name, msg.payload)
                comm.reply(msg, ExtraReply(errors={self.address: error} if error else {}))
            case LeftMsg():
                if self._left is not None and not self._left.done():
                    self._left.set_result(msg.retired)
            case _:
                raise ProtocolError(f"a nanny is not sent {op_of(msg)!r}")

    async def add_plugin(self, name: str, payload: bytes) -> str:
        """Set up a nanny plugin (replacing, with its teardown, one of the same name);
        its ``restart``: start the worker afresh. The standby process, started before
        the setup, is replaced (a setup that sets environment variables, say, reaches
        the next worker). Returns what went wrong ('' if nothing)."""
        import cloudpickle

        try:
            plugin = cloudpickle.loads(payload)
        except Exception as exc:
            return f"cannot unpickle the plugin: {explain(exc)}"
        old = self.plugins.pop(name, None)
        if old is not None:
            await self._call_plugin(old, "teardown", name)
        error = await self._call_plugin(plugin, "setup", name)
        if error:
            return error
        self.plugins[name] = plugin
        if self.standby is not None:
            await self._drop_standby()
            if self.settings.standby_worker and not self.stopped.is_set():
                self.standby = await self._spawn()
        if getattr(plugin, "restart", False) and self._worker_up.is_set():
            await self.kill_worker(f"restarted for nanny plugin {name!r}")
        return ""

    async def _call_plugin(self, plugin: Any, method: str, name: str) -> str:
        hook = getattr(plugin, method, None)
        if not callable(hook):
            return ""
        try:
            result = hook(self)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            error = f"{method} failed: {explain(exc)}"
            logger.warning("nanny plugin %r: %s", name, error)
            return error
        return ""

    def _report(self, msg: Message) -> None:
        if self.scheduler is not None and not self.scheduler.closed:
            self.scheduler.send(msg)

    async def _handle_conn(self, comm: Connection) -> None:
        with contextlib.suppress(CommClosedError):
            while True:
                msg, _frames = await comm.recv()
                try:
                    await self._order(comm, msg)
                except Exception as exc:
                    refuse(comm, msg, exc, f"peer {comm.peer}", logger)

    # ---------------------------------------------------------------- worker
    def _worker_args(self) -> list[str]:
        """The command line of its worker (after ``regrow``)."""
        args = [
            "worker",
            self.scheduler_address,
            "--no-nanny",
            "--nanny-address",
            self.address,
            "--name",
            str(self.name),
            "--nthreads",
            str(self.nthreads),
            "--host",
            self.host,
            "--contact-address",
            self._contact_host,
            "--timeout",
            str(self.timeout if self.timeout is not None else 0),
            "--memory-limit",
            str(self.memory_limit),
            "--resources",
            ",".join(f"{k}={v!r}" for k, v in self.resources.items()),
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            self.log_level,
        ]
        if self.insecure:
            args.append("--insecure")
        if self.log_file:
            args += ["--log-file", self.log_file]
        return args

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in self.env.items()})
        if self.token:
            env["REGROW_TOKEN"] = self.token
        env.update(self.security.to_env("worker"))
        return env

    async def _spawn(self) -> asyncio.subprocess.Process:
        """A worker process, imported and waiting for ``go READY_FILE`` on its stdin."""
        cmd = [sys.executable, "-m", "regrow.cli", *self._worker_args(), "--standby"]
        return await asyncio.create_subprocess_exec(
            *cmd, env=self._worker_env(), stdin=asyncio.subprocess.PIPE
        )

    async def _start_worker(self) -> None:
        ready = os.path.join(self._tmp.name, f"worker-{self.restarts}.ready")
        self._worker_up.clear()
        self._kill_reason = ""
        self._out_of_memory = False
        args = [*self._worker_args(), "--ready-file", ready]
        env = self._worker_env()
        # The copy forked at start, if it still waits; else the standby (a forked copy
        # too, or an interpreter started since); else a new interpreter.
        prefork, self.prefork = self.prefork, None
        proc = _told(prefork, args, env)
        if proc is None:
            standby, self.standby = self.standby, None
            proc = _told(standby, args, env) or await self._spawn()
        self.proc = proc
        if not isinstance(proc, Forked):
            assert proc.stdin is not None
            try:
                proc.stdin.write(f"go {ready}\n".encode())
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # it died waiting: _supervise sees the exit and tries again
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            if proc.returncode is not None or time.monotonic() > deadline:
                return  # _supervise sees the exit and tries again
            await asyncio.sleep(0.01)
        with open(ready) as f:
            self.worker_address = f.read().strip()
        self._worker_up.set()
        if self.settings.standby_worker and not self.stopped.is_set() and self.standby is None:
            # The next one starts once this one is up: not competing with its start (or,
            # in a cluster starting many, with as many others).
            self.standby = await self._spawn()

    async def _drop_standby(self) -> None:
        """Kill the waiting process (it holds nothing) and reap it."""
        standby, self.standby = self.standby, None
        if standby is None:
            return
        if standby.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                standby.kill()
        await standby.wait()

    async def _supervise(self) -> None:
        while not self.stopped.is_set():
            proc = self.proc
            assert proc is not None
            code = await proc.wait()
            if self.stopped.is_set():
                return
            reason = self._kill_reason or describe_exit(code)
            now = time.monotonic()
            self.deaths.append((now, reason))
            logger.warning(
                "worker %s (pid %d) %s; starting a new one", self.worker_address, proc.pid, reason
            )
            self._report(
                WorkerDiedMsg(
                    worker=self.worker_address,
                    reason=reason,
                    exitcode=code,
                    out_of_memory=self._out_of_memory,
                )
            )
            # A worker that dies at once, again and again, gets a pause between attempts.
            recent = [t for t, _ in self.deaths if now - t < 10]
            if len(recent) > 5:
                await asyncio.sleep(min(5.0, 0.2 * len(recent)))
            self.restarts += 1
            await self._start_worker()

    async def kill_worker(self, reason: str, out_of_memory: bool = False) -> None:
        """SIGKILL the worker (the supervisor starts a fresh one)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._kill_reason = reason
        self._out_of_memory = out_of_memory
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    async def _stop_worker(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _memory_monitor(self) -> None:
        limit = self.memory_limit * self.settings.memory_kill_fraction
        while not self.stopped.is_set():
            await asyncio.sleep(self.settings.memory_monitor_interval)
            proc = self.proc
            if proc is None or proc.returncode is not None:
                continue
            try:
                rss = memory.used(proc.pid)
            except psutil.Error:
                continue
            if rss > limit:
                fraction = self.settings.memory_kill_fraction
                await self.kill_worker(
                    f"memory limit: {rss / 2**20:.0f} MiB used, above {fraction:.0%} "
                    f"of its {self.memory_limit / 2**20:.0f} MiB",
                    out_of_memory=True,
                )
