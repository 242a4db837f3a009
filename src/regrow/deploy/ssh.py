"""SSHCluster: a scheduler and workers on other machines, started over SSH (asyncssh).

Owns: the SSH connections it opens, one per process it starts (a scheduler on the first
host; on the others one nanny and its worker per unit); those remote processes and
their logs; a directory of mode 0700 on each host holding the cluster's token (and TLS
material), written through SSH's stdin and removed at close. Each remote process runs
as ``exec`` under the session's shell with ``--parent-pid`` set to the sshd process of
its session, so it exits when the session ends: the connection closed or lost, the
sshd process killed, this Python process gone. A unit whose session ends while the
cluster is not closing is replaced on the same host (reconnecting with backoff), as
LocalCluster replaces a dead nanny; one that exits cleanly (retired, or its scheduler
shut down) is not.

Must not: put a secret on a command line or in a command's environment; stop anything
it did not start (remote processes are stopped by the pid they reported, or by ending
their session); let an unreachable host block ``close()`` (every wait has a deadline);
import asyncssh before an SSHCluster is made (``import regrow`` works without it).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import secrets
import shlex
import sys
import threading
import weakref
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from regrow.client.loop import LoopThread
from regrow.config import Settings
from regrow.deploy.cluster import Cluster
from regrow.security import Security

if TYPE_CHECKING:
    import asyncssh

logger = logging.getLogger("regrow.deploy")

Role = Literal["scheduler", "worker"]

# worker_options / scheduler_options: key -> the `regrow worker` / `regrow scheduler` flag.
# A value True adds a flag that takes no value (False leaves it out); "nanny" is a pair.
WORKER_FLAGS: dict[str, str] = {
    "nthreads": "--nthreads",
    "memory_limit": "--memory-limit",
    "nanny": "--nanny",
    "host": "--host",
    "interface": "--interface",
    "contact_address": "--contact-address",
    "port": "--port",
    "death_timeout": "--death-timeout",
    "dashboard_address": "--dashboard-address",
    "log_level": "--log-level",
}
SCHEDULER_FLAGS: dict[str, str] = {
    "host": "--host",
    "interface": "--interface",
    "port": "--port",
    "journal": "--journal",
    "journal_new": "--journal-new",
    "heartbeat_timeout": "--heartbeat-timeout",
    "allowed_failures": "--allowed-failures",
    "dashboard_address": "--dashboard-address",
    "log_level": "--log-level",
}
# Set by SSHCluster itself, never by options.
_RESERVED = {"name", "token_file", "ready_file", "parent_pid", "tls_ca_file", "tls_cert",
             "tls_key", "scheduler_address"}  # fmt: skip

LOG_LINES = 10_000  # lines of stderr kept per remote process
_KEPT_LOGS = 256  # logs of ended units kept for get_logs()
_PID_MARK = "regrow-pid"
_DIR_MARK = "regrow-secrets"
# The remote shell's part: say the pid (which exec keeps), then become the regrow
# process with the session's sshd process as the parent to watch.
_LAUNCH = f'echo {_PID_MARK} $$; exec "$0" "$@" --parent-pid $PPID'

_live: weakref.WeakSet[SSHCluster] = weakref.WeakSet()


def cli_flags(options: Mapping[str, Any], known: Mapping[str, str], what: str) -> list[str]:
    """``{"nthreads": 2, "memory_limit": "1GB"}`` -> ``["--nthreads", "2", "--memory-limit",
    "1GB"]``; ValueError naming an unknown key."""
    args: list[str] = []
    for key, value in options.items():
        if key not in known:
            hint = " (SSHCluster sets it)" if key in _RESERVED else ""
            raise ValueError(
                f"SSHCluster: unknown {what} {key!r}{hint}; known: {', '.join(sorted(known))}"
            )
        flag = known[key]
        if value is None:
            continue
        if key == "nanny":
            args.append("--nanny" if value else "--no-nanny")
        elif isinstance(value, bool):
            if value:
                args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def remote_command(python: str, args: Sequence[str], env: Mapping[str, str]) -> str:
    """The command line for the remote login shell: ``exec`` so that the regrow process
    takes the shell's place, and so its parent is the session's sshd process."""
    words = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    words += ["sh", "-c", _LAUNCH, python, "-m", "regrow.cli", *args]
    return "exec " + " ".join(shlex.quote(w) for w in words)


def _sh(script: str) -> str:
    """Run ``script`` with sh, whatever the remote login shell is."""
    return "exec sh -c " + shlex.quote(script)


def _material(value: str) -> str:
    """PEM text of a Security field: the text itself, or the local file's content."""
    if value.lstrip().startswith("-----BEGIN"):
        return value
    with open(value) as f:
        return f.read()


def _cause(exc: BaseException) -> str:
    """What went wrong, in a few words (no traceback)."""
    import asyncssh

    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return f"{exc.reason} (add it to known_hosts, or pass known_hosts=None)"
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's own text names no cause
    return str(exc) or type(exc).__name__


def _how_ended(process: asyncssh.SSHClientProcess[str]) -> str:
    signal = process.exit_signal
    if signal is not None:
        return f"was killed by SIG{signal[0]}"
    if process.exit_status is not None:
        return f"exited with code {process.exit_status}"
    return "lost its SSH connection"


class _Host:
    """One entry of ``hosts``: where to connect, with what, and its secrets directory."""

    def __init__(self, index: int, address: str, options: dict[str, Any], python: str) -> None:
        self.index = index
        self.address = address
        self.options = options
        self.python = python
        self.secrets: str | None = None  # the remote directory holding the token
        self.lock = asyncio.Lock()
        self.reachable = True  # false after a connection to it failed or was lost
        self.retry_delay = 0.0  # before replacing a unit that died young (backoff)

    def __repr__(self) -> str:
        return self.address


class _Remote:
    """One process this cluster started on a host: its session, pid, address, log."""

    def __init__(self, name: str, role: Role, host: _Host) -> None:
        self.name = name
        self.role = role
        self.host = host
        self.log: deque[str] = deque(maxlen=LOG_LINES)
        self.conn: asyncssh.SSHClientConnection | None = None
        self.process: asyncssh.SSHClientProcess[str] | None = None
        self.pid: int | None = None
        self.address = ""
        self.started_at = 0.0
        self.stopping = False
        self.wake = asyncio.Event()  # set when stopping: ends a backoff wait at once
        self.ready: asyncio.Future[None] | None = None  # the first launch's outcome
        self.task: asyncio.Task[None] | None = None  # launch (with retries), then watch
        self.readers: list[asyncio.Task[None]] = []
        # (pid, name) of the unit this one replaces, whose process may still run (its
        # connection was lost, not its host): stopped first.
        self.replaces: tuple[int, str] | None = None

    @property
    def what(self) -> str:
        return "scheduler" if self.role == "scheduler" else f"worker {self.name}"

    @property
    def running(self) -> bool:
        return bool(self.address) and self.process is not None and not self.process.is_closing()


class SSHCluster(Cluster):
    """A scheduler on ``hosts[0]`` and one worker (under its nanny) on each other host,
    started over SSH, as dask.distributed's SSHCluster.

    ``connect_options`` go to ``asyncssh.connect`` (a dict for every host, or a list of
    one per host); ``worker_options`` and ``scheduler_options`` become flags of ``regrow
    worker`` and ``regrow scheduler`` (``{"nthreads": 2}`` -> ``--nthreads 2``);
    ``remote_python`` is the Python on the hosts (default: this one's path); other
    keywords are settings, given to every remote process. Each process listens on the
    address its host was reached by (unless ``host`` or ``interface`` is in its
    options). ``scale(n)`` beyond the worker hosts places more workers on them in turn.

    Connections send keepalives every 5 s (``keepalive_interval`` in
    ``connect_options``): a link silent for ~20 s counts as lost, and its unit is
    replaced once the host answers again. The sshd side should drop silent clients too
    (``ClientAliveInterval``), which ends their processes.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        connect_options: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        worker_options: Mapping[str, Any] | None = None,
        scheduler_options: Mapping[str, Any] | None = None,
        remote_python: str | Sequence[str] | None = None,
        token: str | None = None,
        security: Security | bool | None = None,
        timeout: float = 30.0,
        **settings: Any,
    ) -> None:
        try:
            import asyncssh  # noqa: F401
        except ImportError:
            raise ImportError("SSHCluster needs asyncssh: pip install regrow[ssh]") from None
        if isinstance(hosts, str) or len(hosts) < 2:
            raise ValueError(
                "SSHCluster needs a list of at least two hosts: the scheduler's, then "
                f"one or more for workers; got {hosts!r}"
            )
        n = len(hosts)
        options = _per_host(connect_options or {}, n, "connect_options", Mapping)
        pythons = _per_host(remote_python or sys.executable, n, "remote_python", str)
        self.worker_options = dict(worker_options or {})
        self.scheduler_options = dict(scheduler_options or {})
        self._worker_flags = cli_flags(self.worker_options, WORKER_FLAGS, "worker_options key")
        self._scheduler_flags = cli_flags(
            self.scheduler_options, SCHEDULER_FLAGS, "scheduler_options key"
        )
        if security is True:
            security = Security.temporary()
        self.security = security or Security()
        for role in ("scheduler", "worker"):
            if self.security.has_tls and getattr(self.security, f"tls_{role}_cert") is None:
                raise ValueError(f"SSHCluster: security has a CA but no tls_{role}_cert")
        self.token = token or secrets.token_hex(16)
        try:
            self._secret_files()  # the TLS material is readable
        except OSError as exc:
            raise ValueError(f"SSHCluster: cannot read the TLS material: {exc}") from None
        self.settings = Settings.from_env(**settings)
        self.timeout = timeout
        self.scheduler_address = ""
        self.hosts = list(hosts)
        self._init_cluster()
        self._hosts = [
            _Host(i, str(h), dict(options[i]), pythons[i]) for i, h in enumerate(self.hosts)
        ]
        self._env = self.settings.to_env()
        self._lock = threading.Lock()
        self._units: dict[str, _Remote] = {}  # worker units started and not stopped
        self._logs: dict[str, deque[str]] = {}
        self._scheduler: _Remote | None = None
        self._counter = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._closed = False
        self._loop = LoopThread("regrow-ssh")
        _live.add(self)
        try:
            self._loop.run(self._start(n - 1), timeout=2 * timeout + 10)
        except BaseException:
            self.close(timeout=min(timeout, 10.0))
            raise

    # ------------------------------------------------------------ hooks
    def _unit_names(self) -> list[str]:
        with self._lock:
            return list(self._units)

    def _start_units(self, n: int) -> None:
        with self._lock:
            if self._closing:
                raise RuntimeError("SSHCluster is closed")
            new = [self._new_unit(host) for host in self._pick_hosts(n)]

        async def begin() -> None:
            for r in new:
                self._begin(r, retry=True)

        self._loop.run(begin(), timeout=10)

    def _stop_unit(self, name: str) -> None:
        with self._lock:
            r = self._units.get(name)
        if r is not None:
            self._loop.run(self._stop(r, self.timeout), timeout=self.timeout + 10)

    def _threads_per_worker(self) -> int:
        return int(self.worker_options.get("nthreads") or 1)

    def get_logs(self) -> dict[str, str]:
        """``{"scheduler": text, "<worker name>": text, ...}``: the last lines each remote
        process wrote on stderr (units that ended included, the latest 256)."""
        with self._lock:
            return {name: "\n".join(lines) for name, lines in self._logs.items()}

    # --------------------------------------------------------- starting
    def _new_unit(self, host: _Host) -> _Remote:
        """A unit on ``host``, registered (under ``self._lock``)."""
        r = _Remote(f"{host.address}-{next(self._counter)}", "worker", host)
        self._units[r.name] = r
        self._keep_log(r)
        return r

    def _keep_log(self, r: _Remote) -> None:
        self._logs[r.name] = r.log
        if len(self._logs) > _KEPT_LOGS:
            live = set(self._units) | {"scheduler"}
            for name in [nm for nm in self._logs if nm not in live]:
                del self._logs[name]
                if len(self._logs) <= _KEPT_LOGS:
                    break

    def _pick_hosts(self, n: int) -> list[_Host]:
        """The worker hosts for ``n`` more units: each to the host with the fewest, in
        the order of ``hosts`` (so ``scale`` past the list goes round it again)."""
        workers = self._hosts[1:]
        count = {h.index: 0 for h in workers}
        for r in self._units.values():
            if r.host.index in count:
                count[r.host.index] += 1
        picked = []
        for _ in range(n):
            host = min(workers, key=lambda h: (count[h.index], h.index))
            count[host.index] += 1
            picked.append(host)
        return picked

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _begin(self, r: _Remote, retry: bool, delay: float = 0.0) -> None:
        """Start ``r`` in the background (in the loop): launch it, then watch it."""
        r.ready = ready = asyncio.get_running_loop().create_future()
        # Read by _start for the first units; marked retrieved for every other one.
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        r.task = self._spawn(self._keep(r, retry, delay))

    async def _start(self, n_workers: int) -> None:
        sched = self._scheduler = _Remote("scheduler", "scheduler", self._hosts[0])
        with self._lock:
            self._logs["scheduler"] = sched.log
        self._begin(sched, retry=False)
        assert sched.ready is not None
        await sched.ready
        self.scheduler_address = sched.address
        with self._lock:
            units = [self._new_unit(h) for h in self._pick_hosts(n_workers)]
        for r in units:
            self._begin(r, retry=False)
        pending = {r.ready for r in units if r.ready is not None}
        # The first failure ends the start (close() stops what did start).
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for fut in done:
                fut.result()

    async def _keep(self, r: _Remote, retry: bool, delay: float) -> None:
        """Launch ``r`` (on failure: raise through ``r.ready``, or try again with
        backoff), then watch it until it ends."""
        assert r.ready is not None
        while True:
            if delay:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await r.wake.wait()
            if r.stopping or self._closing:
                return
            try:
                await self._launch(r)
                break
            except Exception as exc:
                if not retry:
                    r.ready.set_exception(exc)
                    return
                delay = min(max(2 * delay, 0.5), 30.0)
                logger.warning("%s; trying again in %.1f s", exc, delay)
        r.ready.set_result(None)
        await self._watch(r)

    async def _connect(self, host: _Host) -> asyncssh.SSHClientConnection:
        import asyncssh

        options = {
            # A link gone silent is noticed (the unit is then replaced), and a host
            # that does not answer is given up on, within the launch's time.
            "keepalive_interval": 5.0,
            "keepalive_count_max": 3,
            "connect_timeout": self.timeout,
            **host.options,
        }
        try:
            conn = await asyncssh.connect(host.address, **options)
        except (OSError, asyncssh.Error) as exc:
            host.reachable = False
            if isinstance(exc, asyncssh.PermissionDenied):
                where = f"log in to {host.address}"
            else:
                where = f"connect to {host.address} port {options.get('port') or 22}"
            raise RuntimeError(f"SSHCluster: cannot {where}: {_cause(exc)}") from None
        host.reachable = True
        return conn

    async def _secrets(self, host: _Host, conn: asyncssh.SSHClientConnection) -> str:
        """The host's directory (mode 0700) holding the token and TLS material, made on
        first use in one round trip: the script that writes the files comes on stdin
        (``sh -s``), so no secret is ever on a command line."""
        async with host.lock:
            if host.secrets is not None:
                return host.secrets
            made = await conn.run("exec sh -s", input=self._secrets_script(), check=False)
            mark = f"{_DIR_MARK} "
            said = [ln for ln in str(made.stdout or "").splitlines() if ln.startswith(mark)]
            if made.exit_status != 0 or not said:
                raise RuntimeError(
                    f"SSHCluster: cannot write the token to a private directory on "
                    f"{host.address}: {str(made.stderr or '').strip() or made.exit_status}"
                )
            host.secrets = said[-1][len(mark) :]
            return host.secrets

    def _secrets_script(self) -> str:
        """sh script: make a private directory, write the secret files, print its path."""
        end = f"REGROW_END_{secrets.token_hex(8)}"
        lines = [
            "set -e",
            "umask 077",
            'd=$(mktemp -d "${TMPDIR:-/tmp}/regrow-ssh.XXXXXXXX") || exit 1',
            "trap 'rm -rf \"$d\"' EXIT",
        ]
        for name, text in self._secret_files().items():
            lines += [f"cat > \"$d/{name}\" <<'{end}'", text.rstrip("\n"), end]
        lines += ["trap - EXIT", f'echo {_DIR_MARK} "$d"', ""]
        return "\n".join(lines)

    def _secret_files(self) -> dict[str, str]:
        assert self.token is not None
        files = {"token": self.token}
        sec = self.security
        if sec.has_tls:
            assert sec.tls_ca_file is not None
            files["ca.pem"] = _material(sec.tls_ca_file)
            for role in ("scheduler", "worker"):
                files[f"{role}-cert.pem"] = _material(getattr(sec, f"tls_{role}_cert"))
                files[f"{role}-key.pem"] = _material(getattr(sec, f"tls_{role}_key"))
        return files

    def _args(self, r: _Remote, secrets_dir: str) -> list[str]:
        common = ["--token-file", f"{secrets_dir}/token", "--ready-file", "-"]
        if self.security.has_tls:
            common += [
                "--tls-ca-file", f"{secrets_dir}/ca.pem",
                "--tls-cert", f"{secrets_dir}/{r.role}-cert.pem",
                "--tls-key", f"{secrets_dir}/{r.role}-key.pem",
            ]  # fmt: skip
        if r.role == "scheduler":
            opts = self.scheduler_options
            args = ["scheduler"]
            if "host" not in opts and "interface" not in opts:
                args += ["--host", r.host.address]
            if "port" not in opts:
                args += ["--port", "0"]
            flags = self._scheduler_flags
        else:
            opts = self.worker_options
            args = ["worker", self.scheduler_address, "--name", r.name]
            if "host" not in opts and "interface" not in opts:
                args += ["--host", r.host.address]
            flags = self._worker_flags
        if "log_level" not in opts:
            args += ["--log-level", "INFO"]
        return [*args, *flags, *common]

    async def _launch(self, r: _Remote) -> None:
        """Connect, start the process, and read its pid and address; within ``timeout``.
        On any failure (or cancellation) what was started is stopped."""
        host = r.host
        r.process, r.pid, r.address = None, None, ""
        doing = "connecting"
        try:
            async with asyncio.timeout(self.timeout):
                r.conn = await self._connect(host)
                if r.replaces is not None:
                    doing = "stopping the unit it replaces"
                    await self._stop_stale(r, *r.replaces)
                doing = "writing the token"
                secrets_dir = await self._secrets(host, r.conn)
                command = remote_command(host.python, self._args(r, secrets_dir), self._env)
                doing = "waiting for its address"
                r.process = await r.conn.create_process(command, encoding="utf-8", errors="replace")
                r.started_at = asyncio.get_running_loop().time()
                r.readers = [self._spawn(self._read_log(r, r.process.stderr))]
                await self._read_ready(r)
                r.readers.append(self._spawn(self._read_log(r, r.process.stdout)))
        except BaseException as exc:
            await self._abandon(r)
            if isinstance(exc, TimeoutError):
                last = f"; its last words: {r.log[-1]}" if r.log else ""
                raise RuntimeError(
                    f"SSHCluster: the {r.what} on {host.address} did not start within "
                    f"{self.timeout} s ({doing}{last})"
                ) from None
            if isinstance(exc, Exception) and not isinstance(exc, RuntimeError):
                raise RuntimeError(
                    f"SSHCluster: cannot start the {r.what} on {host.address}: {_cause(exc)}"
                ) from None
            raise

    async def _stop_stale(self, r: _Remote, pid: int, name: str) -> None:
        """SIGTERM to the process of the unit ``r`` replaces, if it still runs there (a
        lost connection leaves it running until sshd notices): checked by its command
        line, so a reused pid is left alone."""
        assert r.conn is not None
        mark = shlex.quote(f"--name {name} ")
        script = f"ps -o args= -p {pid} | grep -qF -- {mark} && kill -TERM {pid}; true"
        await r.conn.run(_sh(script), check=False)
        r.replaces = None

    async def _read_ready(self, r: _Remote) -> None:
        """Read the pid and then the address from the process's stdout (other lines,
        say from a login script, go to its log); fail if it ends first."""
        assert r.process is not None
        while True:
            line = await r.process.stdout.readline()
            if not line:
                break
            line = line.strip()
            if line.startswith(f"{_PID_MARK} "):
                r.pid = int(line.split()[1])
            elif r.pid is not None and "://" in line:
                r.address = line
                return
            elif line:
                r.log.append(line)
        # End of output: the process ended while starting. Its exit and last words.
        await r.process.wait_closed()
        await asyncio.gather(*r.readers, return_exceptions=True)
        last = r.log[-1] if r.log else "no output"
        raise RuntimeError(
            f"SSHCluster: the {r.what} on {r.host.address} {_how_ended(r.process)} "
            f"while starting: {last}"
        )

    async def _read_log(self, r: _Remote, stream: asyncssh.SSHReader[str]) -> None:
        import asyncssh

        with contextlib.suppress(asyncssh.Error, OSError):
            while line := await stream.readline():
                r.log.append(line.rstrip("\n"))

    async def _watch(self, r: _Remote) -> None:
        """Wait until ``r``'s process ends; if it died (not told to stop, not a clean
        exit), start a new unit on the same host in its place."""
        assert r.process is not None
        await r.process.wait_closed()
        if r.stopping or self._closing:
            return
        how = _how_ended(r.process)
        lived = asyncio.get_running_loop().time() - r.started_at
        await self._hang_up(r, 2.0)
        with self._lock:
            self._units.pop(r.name, None)
            if r.role == "scheduler":
                logger.error("SSHCluster: the scheduler on %s %s", r.host.address, how)
                return
            if r.process.exit_status == 0:
                logger.info("SSHCluster: worker %s on %s exited", r.name, r.host.address)
                return
            if r.process.exit_status is None and r.process.exit_signal is None:
                r.host.reachable = False
            # Backoff for a host whose units die young.
            host = r.host
            host.retry_delay = 0.0 if lived > 30 else min(max(2 * host.retry_delay, 0.5), 30)
            new = self._new_unit(host)
            new.replaces = (r.pid, r.name) if r.pid is not None else None
        logger.warning(
            "SSHCluster: worker %s on %s %s; starting %s in its place",
            r.name,
            r.host.address,
            how,
            new.name,
        )
        self._begin(new, retry=True, delay=host.retry_delay)

    # --------------------------------------------------------- stopping
    async def _run(self, r: _Remote, command: str, seconds: float) -> None:
        """Run ``command`` on ``r``'s host through its own connection."""
        assert r.conn is not None
        async with asyncio.timeout(seconds):
            await r.conn.run(_sh(command), check=False)

    async def _terminate(self, r: _Remote, seconds: float) -> None:
        """SIGTERM to ``r``'s process, then SIGKILL to its process group; done when its
        session's channel has closed (every process holding its output is gone)."""
        import asyncssh

        process = r.process
        if process is None or r.pid is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for command, share in (
            (f"kill -TERM {r.pid} 2>/dev/null", 0.7),
            (f"kill -s KILL -- -{r.pid} {r.pid} 2>/dev/null", 1.0),
        ):
            if process.is_closing():
                break
            budget = max(0.1, (deadline - loop.time()) * share)
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                async with asyncio.timeout(budget):
                    await self._run(r, command, budget)
                    await process.wait_closed()
        if not process.is_closing():
            logger.warning(
                "SSHCluster: could not confirm that the %s on %s (pid %d) exited",
                r.what,
                r.host.address,
                r.pid,
            )

    async def _abandon(self, r: _Remote) -> None:
        """After a failed or cancelled launch: kill what started, end the session."""
        import asyncssh

        ended = r.process is None or r.process.exit_status is not None
        if r.pid is not None and r.conn is not None and not ended:
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await self._run(r, f"kill -s KILL -- -{r.pid} {r.pid} 2>/dev/null", 2.0)
        await self._hang_up(r, 2.0)

    async def _hang_up(self, r: _Remote, seconds: float) -> None:
        """Close ``r``'s connection (which ends its sessions); abort it if it will not."""
        conn, r.conn = r.conn, None
        if conn is None:
            return
        conn.close()
        try:
            async with asyncio.timeout(seconds):
                await conn.wait_closed()
        except TimeoutError:
            conn.abort()

    async def _stop(self, r: _Remote, seconds: float) -> None:
        """Stop one unit, whether still starting or running."""
        r.stopping = True
        r.wake.set()
        if r.running:
            await self._terminate(r, seconds)
        elif r.task is not None and not r.task.done():
            r.task.cancel()  # its launch stops what it started
            await asyncio.wait([r.task], timeout=seconds)
        await self._hang_up(r, 2.0)
        with self._lock:
            self._units.pop(r.name, None)

    # ------------------------------------------------------------ close
    def close(self, timeout: float = 10.0) -> None:
        """Stop every process this cluster started (the scheduler first: it tells its
        workers to close), remove the secrets directories, close the connections.
        Returns within about ``timeout`` seconds, whatever the hosts do."""
        self._close_common()
        with self._lock:
            if self._closed:
                return
            self._closed = self._closing = True
        try:
            self._loop.run(self._shutdown(timeout), timeout=timeout + 5)
        except Exception as exc:
            logger.warning("SSHCluster: close did not finish cleanly: %s", exc)
        self._loop.stop()
        _live.discard(self)

    async def _shutdown(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def left(share: float = 1.0) -> float:
            return max(0.1, (deadline - loop.time()) * share)

        with self._lock:
            units = list(self._units.values())
        sched = self._scheduler
        everyone = [*units, *([sched] if sched is not None else [])]
        for r in everyone:
            r.stopping = True
            r.wake.set()
        starting = [r.task for r in everyone if not r.running and r.task and not r.task.done()]
        for task in starting:
            task.cancel()  # a launch in progress stops what it started
        if sched is not None and sched.running:
            await self._terminate(sched, left(0.4))
        await asyncio.gather(*(self._terminate(r, left(0.7)) for r in units if r.running))
        if starting:
            await asyncio.wait(starting, timeout=left(0.5))
        await asyncio.gather(*(self._remove_secrets(h, everyone, left()) for h in self._hosts))
        await asyncio.gather(*(self._hang_up(r, min(2.0, left())) for r in everyone))
        with self._lock:
            self._units.clear()
        # What is left (log readers) ends with the connections.
        rest = [t for t in self._tasks if t is not asyncio.current_task()]
        if rest:
            await asyncio.wait(rest, timeout=min(2.0, left()))

    async def _remove_secrets(self, host: _Host, remotes: list[_Remote], seconds: float) -> None:
        """Remove the host's secrets directory, through a connection still open to it,
        or a new one (a host known to be unreachable gets 2 s)."""
        import asyncssh

        path = host.secrets
        if path is None:
            return
        conns = [r.conn for r in remotes if r.host is host and r.conn is not None]
        conns = [c for c in conns if not c.is_closed()]
        if not host.reachable:
            seconds = min(seconds, 2.0)
        try:
            async with asyncio.timeout(seconds):
                if conns:
                    await conns[0].run(_sh(f"rm -rf -- {shlex.quote(path)}"), check=False)
                else:
                    async with await self._connect(host) as conn:
                        await conn.run(_sh(f"rm -rf -- {shlex.quote(path)}"), check=False)
            host.secrets = None
        except (TimeoutError, OSError, RuntimeError, asyncssh.Error) as exc:
            logger.warning(
                "SSHCluster: could not remove %s on %s: %s", path, host.address, _cause(exc)
            )

    def __repr__(self) -> str:
        return (
            f"<SSHCluster {self.scheduler_address or 'starting'} "
            f"workers={len(self._unit_names())} hosts={self.hosts!r}>"
        )


def _per_host(value: Any, n: int, what: str, kind: type) -> list[Any]:
    """One value per host: ``value`` for all, or a list of exactly ``n``."""
    if isinstance(value, kind):
        return [value] * n
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != n:
            raise ValueError(f"SSHCluster: {what} has {len(value)} entries for {n} hosts")
        if not all(isinstance(v, kind) for v in value):
            raise TypeError(f"SSHCluster: {what} must be a {kind.__name__} or a list of them")
        return list(value)
    raise TypeError(f"SSHCluster: {what} must be a {kind.__name__} or a list of them")


@atexit.register
def _close_all() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.close(timeout=5)
