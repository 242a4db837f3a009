"""LocalCluster: a scheduler and workers on this machine, as real processes.

Owns the processes it starts (and only those): it starts them, waits until
each is ready, and stops them by PID on close, at exit, or when this process
dies (children watch their parent).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import psutil

from regrow import interrupts
from regrow.client.loop import LoopThread
from regrow.config import Settings, parse_bytes
from regrow.deploy.cluster import Cluster, wait_ready
from regrow.protocol.health import parse_http_address
from regrow.security import Role, Security

if TYPE_CHECKING:
    from regrow.scheduler import Scheduler
    from regrow.worker import Worker

_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()
# dashboard_address not given: the setting's (REGROW_DASHBOARD_ADDRESS, else 127.0.0.1:8787).
DEFAULT: Any = "settings' dashboard_address"
logger = logging.getLogger("regrow.deploy")


def default_layout(
    n_workers: int | None, threads_per_worker: int | None, cores: int | None = None
) -> tuple[int, int]:
    """(workers, threads each) that fit the machine's cores."""
    cores = cores or os.cpu_count() or 1
    if n_workers is None and threads_per_worker is None:
        n_workers = cores if cores <= 4 else max(2, round(math.sqrt(cores)))
    if n_workers is None:
        assert threads_per_worker is not None
        n_workers = max(1, cores // threads_per_worker)
    if threads_per_worker is None:
        threads_per_worker = max(1, cores // max(1, n_workers))
    if n_workers < 0 or threads_per_worker < 1:
        raise ValueError(
            f"n_workers must be >= 0 and threads_per_worker >= 1, got "
            f"{n_workers} and {threads_per_worker}"
        )
    return n_workers, threads_per_worker


def _child_env(token: str, settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["REGROW_TOKEN"] = token
    env.update(settings.to_env())
    # Functions pickled by reference must import in the workers as they do here.
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class WorkerProcess:
    """One worker this cluster started: the nanny's process (or the worker's, without nanny).

    ``address`` is the nanny's address, stable across worker restarts.
    """

    def __init__(self, name: str, proc: subprocess.Popen[bytes], ready_file: str) -> None:
        self.name = name
        self.proc = proc
        self.ready_file = ready_file
        self.address = ""
        # Stopped on purpose (scaled down): its exit is no death to make up for.
        self.stopping = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid={self.pid} {self.address}>"


# dask.distributed's LocalCluster arguments that mean nothing here, and why.
_DASK_ONLY = {
    "scheduler_kwargs": "is not taken: give the scheduler's settings as keywords "
    "(e.g. worker_saturation=4) or REGROW_* variables",
    "worker_kwargs": "is not taken: give threads_per_worker, memory_limit, resources, or "
    "settings as keywords",
    "protocol": "is not taken: regrow speaks tcp:// (tls:// with security=)",
    "interface": "is not taken: give host=",
    "ip": "is not taken: give host=",
    "asynchronous": "is not taken: LocalCluster starts at once; use "
    "Client(cluster, asynchronous=True) in a loop",
    "blocked_handlers": "is not taken: regrow has no handler names to block",
    "service_kwargs": "is not taken: the dashboard's address is dashboard_address=",
    "scheduler_sync_interval": "is not taken",
}


def _level_name(silence_logs: int | str | bool) -> str:
    """dask's ``silence_logs`` as a log level name (True: WARNING, False: DEBUG)."""
    import logging

    if silence_logs is True:
        return "WARNING"
    if silence_logs is False:
        return "DEBUG"
    if isinstance(silence_logs, int):
        name = logging.getLevelName(silence_logs)
        if isinstance(name, str) and not name.startswith("Level "):
            return name
    if isinstance(silence_logs, str) and silence_logs.upper() in (
        "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"
    ):  # fmt: skip
        return silence_logs.upper()
    raise ValueError(
        f"LocalCluster(silence_logs=...) takes True, False or a log level, got {silence_logs!r}"
    )


class LocalCluster(Cluster):
    """A scheduler and ``n_workers`` workers on this machine.

    With ``processes=True`` (the default) each is its own process, talking TCP
    on loopback; with ``processes=False`` they all run in a background thread of
    this process (quick to start, handy for debugging). ``scale``, ``adapt``,
    ``get_logs`` and the rest of the cluster interface: see ``Cluster``.
    """

    token: str  # always one: made up when not given

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        scheduler_port: int = 0,
        host: str = "127.0.0.1",
        token: str | None = None,
        memory_limit: int | str | None = "auto",
        timeout: float = 30.0,
        log_level: str = "WARNING",
        nanny: bool = True,
        journal: str | os.PathLike[str] | None = None,
        security: Security | bool | None = None,
        dashboard_address: str | None = DEFAULT,
        resources: dict[str, float] | None = None,
        silence_logs: int | str | bool | None = None,
        worker_class: Any = None,
        allow_scheduler_code: bool = False,
        **settings: Any,
    ) -> None:
        for name in settings:
            if name in _DASK_ONLY:
                raise TypeError(f"LocalCluster(): {name}= {_DASK_ONLY[name]}")
        if (
            worker_class is not None
            and getattr(worker_class, "__module__", "").split(".")[0] != "regrow"
        ):
            raise TypeError(
                "LocalCluster(worker_class=...): regrow runs its own Worker (under a Nanny "
                "with nanny=True); another class cannot be started here"
            )
        if silence_logs is not None:
            # dask's silence_logs: the level below which the cluster's processes log
            # nothing (False: log everything).
            log_level = _level_name(silence_logs)
        from regrow.worker.shell import check_resources

        self.resources = check_resources(resources or {}, "LocalCluster(resources=)")
        # The scheduler's opt-in to run clients' code (regrow scheduler --help).
        self.allow_scheduler_code = bool(allow_scheduler_code)
        self.n_workers, self.threads_per_worker = default_layout(n_workers, threads_per_worker)
        self.processes = processes
        self.nanny = nanny
        self.journal = os.fspath(journal) if journal is not None else None
        self.scheduler_restarts = 0
        self.host = host
        self.token = token or secrets.token_hex(16)
        # security=True: a throwaway CA and certificates, made in memory (as dask's).
        if security is True:
            security = Security.temporary()
        self.security = security or Security()
        self.settings = Settings.from_env(**settings)
        if dashboard_address is not DEFAULT:
            # None or '': no dashboard. Its scheduler moves off a port in use.
            self.settings = self.settings.replace(dashboard_address=dashboard_address or "")
        if self.settings.dashboard_address:
            parse_http_address(self.settings.dashboard_address)  # a bad one fails here
        self.timeout = timeout
        self.log_level = log_level
        self.memory_limit = _memory_limit(memory_limit, self.n_workers)
        self._init_cluster()
        self.scheduler_address = ""
        self.scheduler_proc: subprocess.Popen[bytes] | None = None
        self.workers: list[WorkerProcess] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="regrow-")
        self._loop: LoopThread | None = None
        self._inproc_scheduler: Scheduler | None = None
        self._inproc_workers: list[Worker] = []
        self._names = iter(range(1 << 30))
        self._closed = False
        self._lock = threading.RLock()
        self._log_handler: _MemoryLog | None = None
        _live.add(self)
        try:
            if processes:
                self._start_processes(scheduler_port)
            else:
                self._start_inprocess(scheduler_port)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------- processes
    def _spawn(
        self, args: list[str], ready_file: str, role: Role, log: str
    ) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "regrow.cli",
            *args,
            "--ready-file",
            ready_file,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            self.log_level,
            "--log-file",
            os.path.join(self._tmp.name, f"{log}.log"),
        ]
        env = _child_env(self.token, self.settings)
        env.update(self.security.to_env(role))
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)

    def _wait_ready(self, proc: subprocess.Popen[bytes], ready_file: str, what: str) -> str:
        return wait_ready(proc, ready_file, self.timeout, what)

    def _start_scheduler(self, port: int) -> None:
        ready = os.path.join(self._tmp.name, f"scheduler-{self.scheduler_restarts}.ready")
        args = ["scheduler", "--host", self.host, "--port", str(port)]
        if self.journal is not None:
            args += ["--journal", self.journal]
        if self.allow_scheduler_code:
            args.append("--allow-scheduler-code")
        self.scheduler_proc = self._spawn(args, ready, "scheduler", "scheduler")
        self.scheduler_address = self._wait_ready(self.scheduler_proc, ready, "scheduler")

    def _start_processes(self, port: int) -> None:
        self._start_scheduler(port)
        if self.journal is not None:
            # With a journal the cluster brings its scheduler back, on the same address.
            threading.Thread(
                target=self._watch_scheduler, name="regrow-scheduler-watch", daemon=True
            ).start()
        self.scale_up(self.n_workers)

    def _watch_scheduler(self) -> None:
        from regrow.protocol.comm import parse_address

        port = parse_address(self.scheduler_address)[1]
        while not self._closed:
            proc = self.scheduler_proc
            assert proc is not None
            code = proc.wait()
            if self._closed:
                return
            logger.warning(
                "the scheduler (pid %d) exited with %s; starting it again on port %d from %s",
                proc.pid,
                code,
                port,
                self.journal,
            )
            # Under the lock, so close() cannot miss a scheduler started meanwhile.
            with self._lock:
                if self._closed:
                    return
                self.scheduler_restarts += 1
                try:
                    self._start_scheduler(port)
                except Exception:
                    logger.exception("could not restart the scheduler")
                    return

    def restart_scheduler_process(self, sig: int = signal.SIGKILL) -> int:
        """Kill the scheduler process (default: SIGKILL) and wait until a new one serves.

        Only with ``journal=``: returns the new scheduler's pid.
        """
        if self.journal is None or self.scheduler_proc is None:
            raise RuntimeError("restart_scheduler_process needs LocalCluster(journal=...)")
        old = self.scheduler_proc
        restarts = self.scheduler_restarts
        old.send_signal(sig)
        deadline = time.monotonic() + self.timeout
        while self.scheduler_restarts == restarts or self.scheduler_proc is old:
            if time.monotonic() > deadline:
                raise TimeoutError("the scheduler did not come back")
            time.sleep(0.01)
        proc = self.scheduler_proc
        assert proc is not None
        ready = os.path.join(self._tmp.name, f"scheduler-{self.scheduler_restarts}.ready")
        self._wait_ready(proc, ready, "scheduler")
        return proc.pid

    def _start_worker_proc(self, replaces: str = "") -> WorkerProcess:
        name = str(next(self._names))
        ready = os.path.join(self._tmp.name, f"worker-{name}.ready")
        args = [
            "worker",
            self.scheduler_address,
            "--nthreads",
            str(self.threads_per_worker),
            "--name",
            name,
            "--host",
            self.host,
            "--memory-limit",
            str(self.memory_limit),
        ]
        if self.resources:
            args += ["--resources", ",".join(f"{k}={v!r}" for k, v in self.resources.items())]
        if not self.nanny:
            args.append("--no-nanny")
        if replaces:
            args += ["--replaces", replaces]
        wp = WorkerProcess(name, self._spawn(args, ready, "worker", f"worker-{name}"), ready)
        with self._lock:
            self.workers.append(wp)
        if self.nanny:
            threading.Thread(
                target=self._watch_nanny, args=(wp,), name=f"regrow-nanny-watch-{name}", daemon=True
            ).start()
        return wp

    def _watch_nanny(self, wp: WorkerProcess) -> None:
        """A cluster keeps its size: a nanny that dies (a signal, a crash) is replaced by
        a new one, with a worker of a new name. One that exits cleanly (told to close:
        the scheduler shut down, or its worker was retired) is not."""
        code = wp.proc.wait()
        if code == 0 or wp.stopping:
            return
        with self._lock:
            if self._closed or wp.stopping:
                return
            logger.warning(
                "the nanny of worker %s (pid %d) exited with %s; starting a new one",
                wp.name,
                wp.pid,
                code,
            )
            with contextlib.suppress(ValueError):
                self.workers.remove(wp)
            how = (
                f"killed by {signal.Signals(-code).name}"
                if code < 0 and -code in signal.valid_signals()
                else f"exited with code {code}"
            )
            new = self._start_worker_proc(
                replaces=f"the nanny of worker {wp.name} (pid {wp.pid}), {how}"
            )
        try:
            new.address = self._wait_ready(new.proc, new.ready_file, f"worker {new.name}")
        except (RuntimeError, TimeoutError) as exc:
            if not self._closed:
                logger.error("could not replace the nanny of worker %s: %s", wp.name, exc)

    def scale_up(self, n: int) -> list[WorkerProcess]:
        """Start ``n`` more workers and wait until each has registered."""
        if not self.processes:
            raise NotImplementedError("scale_up works with processes=True (else: scale)")
        new = [self._start_worker_proc() for _ in range(n)]
        for wp in new:
            wp.address = self._wait_ready(wp.proc, wp.ready_file, f"worker {wp.name}")
        return new

    # ------------------------------------------------- the Cluster hooks
    def _unit_names(self) -> list[str]:
        if self.processes:
            with self._lock:
                return [wp.name for wp in self.workers if wp.proc.poll() is None]
        return [str(w.name) for w in self._inproc_workers if not w.stopped.is_set()]

    def _start_units(self, n: int) -> None:
        if self._closed:
            raise RuntimeError("this cluster is closed")
        if not self.processes:
            assert self._loop is not None
            self._loop.run(self._start_inprocess_workers(n), timeout=self.timeout)
            return
        with self._lock:
            new = [self._start_worker_proc() for _ in range(n)]
        threading.Thread(
            target=self._await_ready, args=(new,), name="regrow-scale-up", daemon=True
        ).start()

    def _await_ready(self, new: list[WorkerProcess]) -> None:
        for wp in new:
            try:
                wp.address = self._wait_ready(wp.proc, wp.ready_file, f"worker {wp.name}")
            except (RuntimeError, TimeoutError) as exc:
                if not self._closed and not wp.stopping:
                    logger.error("worker %s did not start: %s", wp.name, exc)

    def _stop_unit(self, name: str) -> None:
        if not self.processes:
            for w in self._inproc_workers:
                if str(w.name) == name:
                    assert self._loop is not None
                    self._loop.run(w.close(), timeout=self.timeout)
            return
        with self._lock:
            wp = next((wp for wp in self.workers if wp.name == name), None)
            if wp is None:
                return
            wp.stopping = True
            self.workers.remove(wp)
        stop_processes([wp.proc], self.timeout)

    def _threads_per_worker(self) -> int:
        return self.threads_per_worker

    def get_logs(self) -> dict[str, str]:
        """What each process logged (INFO and up): ``{"scheduler": ..., "worker 0": ...}``
        (a nanny and its worker share one log; each line names its pid). For an
        in-process cluster, this process's regrow log while the cluster ran."""
        if self._log_handler is not None:
            return {"cluster": "\n".join(self._log_handler.lines)}
        logs: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for entry in sorted(os.listdir(self._tmp.name)):
                if entry.endswith(".log"):
                    with open(os.path.join(self._tmp.name, entry), errors="replace") as f:
                        logs[entry[:-4].replace("-", " ", 1)] = f.read()
        return logs

    # ---------------------------------------------------------- in-process
    def _start_inprocess(self, port: int) -> None:
        # Imported here: a client that starts processes needs neither shell in its own.
        from regrow.scheduler import Scheduler

        self._loop = LoopThread("regrow-cluster")
        self._log_handler = _MemoryLog()
        logging.getLogger("regrow").addHandler(self._log_handler)

        async def start() -> None:
            self._inproc_scheduler = Scheduler(
                host=self.host,
                port=port,
                token=self.token,
                settings=self.settings,
                journal=self.journal,
                security=self.security,
                dashboard_address=self.settings.dashboard_address or None,
                dashboard_tries=16,
                allow_scheduler_code=self.allow_scheduler_code,
            )
            self.scheduler_address = await self._inproc_scheduler.start()
            await self._start_inprocess_workers(self.n_workers)

        self._loop.run(start(), timeout=self.timeout)

    async def _start_inprocess_workers(self, n: int) -> None:
        from regrow.worker import Worker

        for _ in range(n):
            w = Worker(
                self.scheduler_address,
                nthreads=self.threads_per_worker,
                name=str(next(self._names)),
                token=self.token,
                host=self.host,
                memory_limit=self.memory_limit,
                settings=self.settings,
                security=self.security,
                resources=self.resources,
            )
            await w.start()
            self._inproc_workers.append(w)

    # --------------------------------------------------------------- close
    @property
    def nanny_addresses(self) -> list[str]:
        """Addresses of the nannies (or workers) this cluster started that still run."""
        if self.processes:
            return [wp.address for wp in self.workers if wp.proc.poll() is None]
        return [w.address for w in self._inproc_workers if not w.stopped.is_set()]

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._close_common()
        except Exception as exc:  # the processes must be stopped whatever happened here
            logger.warning("closing the cluster's own client failed: %s", exc)
        if self._loop is not None:

            async def stop() -> None:
                for w in self._inproc_workers:
                    await w.close()
                if self._inproc_scheduler is not None:
                    await self._inproc_scheduler.close()

            with contextlib.suppress(Exception):
                self._loop.run(stop(), timeout=timeout)
            self._loop.stop()
        # The scheduler first: it tells its workers to close, so none is "lost".
        if self.scheduler_proc is not None:
            stop_processes([self.scheduler_proc], timeout)
        stop_processes([wp.proc for wp in self.workers], timeout)
        if self._log_handler is not None:
            logging.getLogger("regrow").removeHandler(self._log_handler)
        self._tmp.cleanup()
        _live.discard(self)

    def __enter__(self) -> LocalCluster:
        return self

    def __del__(self) -> None:
        interrupts.quietly(lambda: self.close(timeout=2))

    def __repr__(self) -> str:
        return (
            f"<LocalCluster {self.scheduler_address} workers={len(self._unit_names())} "
            f"threads={self.threads_per_worker}>"
        )


class _MemoryLog(logging.Handler):
    """The last 10,000 lines regrow logged in this process (an in-process cluster's
    ``get_logs``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self.lines: collections.deque[str] = collections.deque(maxlen=10_000)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL what is left; always reap."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()


def _memory_limit(limit: int | str | None, n_workers: int) -> int:
    if limit is None or limit == 0:
        return 0
    if limit == "auto":
        return int(psutil.virtual_memory().total / max(1, n_workers))
    if isinstance(limit, int):
        return limit
    return parse_bytes(limit)


@atexit.register
def _close_all() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.close(timeout=5)
