"""The ``regrow`` command: scheduler, worker, status, journal, config, demo, chaos.

Bad flags or an unreachable scheduler end in one line on stderr and a non-zero
exit, never a traceback; so does a bad setting (from a config file, a REGROW_*
variable or a flag), with exit code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from regrow.config import Resolved, SettingError, Settings, resolve
from regrow.errors import RegrowError, reason
from regrow.protocol.comm import Service, serve
from regrow.security import Role, Security


class BadSetting(click.ClickException):
    """A bad setting: ``Error: <the one line>`` on stderr, exit code 2 (as a bad flag)."""

    exit_code = 2


def _resolve(
    overrides: dict[str, Any] | None = None, flags: dict[str, str] | None = None
) -> Resolved:
    """The settings in force: files, REGROW_* variables, then ``overrides`` (None: not
    given) from the command-line flags ``flags`` names; a bad one is a BadSetting."""
    try:
        return resolve(overrides=overrides, flags=flags)
    except SettingError as exc:
        raise BadSetting(str(exc)) from None


def _settings(**flags: tuple[str, Any]) -> Settings:
    """The settings, given ``name=(flag, value)`` for the flags that map onto settings."""
    overrides = {name: value for name, (_, value) in flags.items()}
    return _resolve(overrides, {name: flag for name, (flag, _) in flags.items()}).settings


def _token(token_file: str | None) -> str | None:
    if token_file:
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read token file: {exc}") from None
        if not token:
            raise click.UsageError(f"token file {token_file} is empty")
        return token
    return os.environ.get("REGROW_TOKEN") or None


def _security(role: Role, ca: str | None, cert: str | None, key: str | None) -> Security:
    """The process's TLS settings: its --tls-* flags (which require encryption), else
    the REGROW_TLS_* variables a LocalCluster or nanny hands its children."""
    try:
        if ca is None and cert is None and key is None:
            return Security.from_env(role)
        return Security.for_files(role, ca=ca, cert=cert, key=key, require_encryption=True)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _check_security(security: Security, role: Role) -> None:
    """Load the certificates now: a bad file is a usage error, not a failure later."""
    try:
        security.context(role, server=True)
        security.context(role, server=False)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _interface(name: str) -> str:
    from regrow.protocol.reach import interface_address

    try:
        return interface_address(name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _read_scheduler_file(path: str, timeout: float) -> str:
    from regrow.protocol.reach import read_scheduler_file

    try:
        return read_scheduler_file(path, timeout or None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _slurm_defaults() -> dict[str, str]:
    """Inside a Slurm job, worker defaults from its environment (else nothing)."""
    if "SLURM_JOB_ID" not in os.environ:
        return {}
    from regrow.worker.batch import worker_defaults

    return worker_defaults(os.environ)


def _raise_fd_limit() -> None:
    """A server holds a descriptor per peer: raise the soft limit to the hard one."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _logging(level: str, log_file: str | None = None) -> None:
    """Log to stderr at ``level``; with ``log_file`` (a cluster's ``get_logs()``), also
    append there, at INFO or finer, with the pid (a nanny and its worker share it)."""
    stderr_level = getattr(logging, level.upper(), logging.INFO)
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=stderr_level, format=fmt, stream=sys.stderr)
    if log_file:
        root = logging.getLogger()
        for handler in root.handlers:
            handler.setLevel(stderr_level)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setLevel(min(stderr_level, logging.INFO))
        to_file.setFormatter(
            logging.Formatter("%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
        )
        root.addHandler(to_file)
        root.setLevel(min(stderr_level, logging.INFO))


def _write_ready(path: str | None, address: str) -> None:
    """Say where this process serves: in the file ``path`` (written whole, atomically),
    or on stdout as one line for ``-`` (how SSHCluster learns it over SSH)."""
    if not path:
        return
    if path == "-":
        sys.stdout.write(f"{address}\n")
        sys.stdout.flush()
        return
    _write_whole(path, address)


def _write_whole(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees all of it or no file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.25)
    stop.set()


def _serve(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, None]], parent_pid: int | None
) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watcher = None
        if parent_pid:
            watcher = asyncio.ensure_future(_watch_parent(parent_pid, stop))
        try:
            await main(stop)
        finally:
            if watcher is not None:
                watcher.cancel()

    try:
        asyncio.run(runner())
    except (OSError, TimeoutError, RegrowError) as exc:
        click.echo(f"regrow: error: {exc or type(exc).__name__}", err=True)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    # User code may still hold task threads; they must not keep a stopped process alive.
    os._exit(0)


def _run_command(argv: list[str]) -> int:
    """``regrow ARGV`` in this process (a forked copy of a nanny: worker/prefork.py)."""
    try:
        main.main(args=argv, prog_name="regrow", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return 0


def _write_scheduler_file(path: str | None, address: str) -> None:
    """``{"address": ...}`` as JSON, written whole (workers and clients may be polling)."""
    if not path:
        return
    import json

    _write_whole(path, json.dumps({"type": "Scheduler", "address": address, "pid": os.getpid()}))


def _run_service(
    make: Callable[[], Service],
    parent_pid: int | None,
    ready_file: str | None,
    announce: str = "",
    scheduler_file: str | None = None,
) -> None:
    """Run a scheduler, worker or nanny in this process until it stops or is signalled;
    once it serves, write its address to ``ready_file`` (how LocalCluster learns it)
    and, for a scheduler, to ``scheduler_file``."""

    async def go(stop: asyncio.Event) -> None:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve(make(), ready, stop))
        both: list[asyncio.Future[Any]] = [task, ready]
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            if announce:
                logging.getLogger("regrow").info(announce, ready.result())
            _write_scheduler_file(scheduler_file, ready.result())
            _write_ready(ready_file, ready.result())
        await task

    _serve(go, parent_pid)


def _dashboard_address(
    ctx: click.Context, param: click.Parameter | None, value: str | None
) -> str | None:
    """--dashboard-address: HOST:PORT or :PORT, checked now (a usage error, not later)."""
    from regrow.protocol.health import parse_http_address

    if value is not None:
        try:
            parse_http_address(value)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    return value


def _dashboard_option(healthy: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--dashboard-address",
        default=None,
        callback=_dashboard_address,
        help="Serve GET /health over HTTP at HOST:PORT (:PORT: every interface): "
        f"200 ok {healthy}, else 503 and why [default: off].",
    )


_tls = [
    click.option("--tls-ca-file", type=click.Path(dir_okay=False), default=None,
                 help="CA certificate (PEM): peers must present certificates it signed.  "
                      "[else $REGROW_TLS_CA_FILE]"),
    click.option("--tls-cert", type=click.Path(dir_okay=False), default=None,
                 help="This process's certificate (PEM), signed by the CA."),
    click.option("--tls-key", type=click.Path(dir_okay=False), default=None,
                 help="This process's private key (PEM)."),
]  # fmt: skip

_common = [
    *_tls,
    click.option("--insecure", is_flag=True, default=False,
                 help="Listen beyond loopback with neither a token nor TLS (warns)."),
    click.option("--ready-file", hidden=True, default=None,
                 help="Write the address here once serving ('-': print it on stdout)."),
    click.option("--parent-pid", hidden=True, type=int, default=None),
    click.option("--log-file", hidden=True, type=click.Path(dir_okay=False), default=None,
                 help="Also append the log here (at INFO or finer)."),
    click.option("--log-level", default="INFO", show_default=True,
                 type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
]  # fmt: skip


def _options(options: list[Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator that adds ``options``, in their order."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return add


common = _options(_common)


class _Main(click.Group):
    """The ``regrow`` group: a bad setting met anywhere below (a LocalCluster of
    ``regrow demo``, say) ends as one line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SettingError as exc:
            raise BadSetting(str(exc)) from None


@click.group(cls=_Main)
@click.version_option(package_name="regrow")
def main() -> None:
    """regrow: a distributed task executor that keeps working when its parts fail."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")  # fmt: skip
@click.option("--interface", default=None,
              help="Listen on this network interface's address (e.g. eth0, ib0).")  # fmt: skip
@click.option("--port", default=8786, show_default=True, type=click.IntRange(0, 65535))
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Write the address here as JSON, for workers and clients to read.")  # fmt: skip
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the cluster token (else $REGROW_TOKEN).")  # fmt: skip
@click.option("--journal", type=click.Path(dir_okay=False), default=None,
              help="SQLite journal to keep state in (restart on it to lose nothing).")  # fmt: skip
@click.option("--journal-new", is_flag=True, default=False,
              help="Make a new journal of an empty --journal file.")  # fmt: skip
@click.option("--heartbeat-timeout", type=float, default=None,
              help="Seconds of silence after which a worker is removed [default: 3].")  # fmt: skip
@click.option("--allowed-failures", type=int, default=None,
              help="Worker deaths a task may cause before KilledWorker [default: 3].")  # fmt: skip
@click.option("--worker-saturation", type=float, default=None, hidden=True)
@click.option("--steal-interval", type=float, default=None, hidden=True)
@click.option(
    "--dashboard-address",
    default=None,
    callback=_dashboard_address,
    help="Serve the dashboard, GET /health and GET /metrics over HTTP at HOST:PORT "
    "(:PORT: every interface; off loopback they ask for the token) "
    "[default: $REGROW_DASHBOARD_ADDRESS, else 127.0.0.1:8787 or the next free port].",
)
@click.option("--dashboard/--no-dashboard", default=True,
              help="Serve the dashboard's pages (--no-dashboard: only /health and /metrics, "
                   "and only with --dashboard-address).")  # fmt: skip
@click.option("--allow-scheduler-code", is_flag=True, default=False,
              help="Let clients run code in the scheduler (run_on_scheduler, scheduler "
                   "plugins). RISK: whoever holds the token can then run anything as "
                   "this process; without it the scheduler never unpickles what "
                   "clients send.")  # fmt: skip
@common
def scheduler(
    host: str,
    interface: str | None,
    port: int,
    scheduler_file: str | None,
    token_file: str | None,
    journal: str | None,
    journal_new: bool,
    heartbeat_timeout: float | None,
    allowed_failures: int | None,
    worker_saturation: float | None,
    steal_interval: float | None,
    dashboard_address: str | None,
    dashboard: bool,
    allow_scheduler_code: bool,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    ready_file: str | None,
    parent_pid: int | None,
    log_file: str | None,
    log_level: str,
) -> None:
    """Run a scheduler."""
    from regrow.scheduler import Scheduler

    _logging(log_level, log_file)
    if interface:
        host = _interface(interface)
    token = _token(token_file)
    security = _security("scheduler", tls_ca_file, tls_cert, tls_key)
    _check_security(security, "scheduler")
    _raise_fd_limit()
    settings = _settings(
        worker_saturation=("--worker-saturation", worker_saturation),
        steal_interval=("--steal-interval", steal_interval),
        heartbeat_timeout=("--heartbeat-timeout", heartbeat_timeout),
        allowed_failures=("--allowed-failures", allowed_failures),
    )
    http_address = dashboard_address
    if http_address is None and dashboard:
        http_address = _dashboard_address(
            click.get_current_context(), None, settings.dashboard_address or None
        )

    _run_service(
        lambda: Scheduler(
            host=host,
            port=port,
            token=token,
            settings=settings,
            journal=journal,
            journal_new=journal_new,
            security=security,
            insecure=insecure,
            dashboard_address=http_address,
            dashboard=dashboard,
            # Not asked for a port: 8787 taken moves to the next free one.
            dashboard_tries=1 if dashboard_address else 16,
            allow_scheduler_code=allow_scheduler_code,
        ),
        parent_pid,
        ready_file,
        announce="regrow scheduler at %s",
        scheduler_file=scheduler_file,
    )


@main.command()
@click.argument("scheduler_address", required=False)
@click.option("--scheduler-file", type=click.Path(dir_okay=False), default=None,
              help="Read the scheduler's address from this file (waiting for it to "
                   "appear), instead of SCHEDULER_ADDRESS.")  # fmt: skip
@click.option("--nthreads", default=None, type=click.IntRange(1, 1024),
              help="Task threads [default: 1; in a Slurm job, its CPUs per task].")  # fmt: skip
@click.option("--name", default=None,
              help="Worker name [default: its address; in a Slurm job, "
                   "slurm-JOBID-PROCID].")  # fmt: skip
@click.option("--host", default=None,
              help="Address to listen on [default: 127.0.0.1 for a scheduler on loopback, "
                   "else this host's address on the route to the scheduler]; 0.0.0.0 for "
                   "every interface.")  # fmt: skip
@click.option("--interface", default=None,
              help="Listen on (and advertise) this network interface's address.")  # fmt: skip
@click.option("--contact-address", default="",
              help="HOST or HOST:PORT other hosts reach this worker at (behind NAT, in a "
                   "container) [default: the address it listens on; with --host 0.0.0.0, "
                   "that of the interface routing to the scheduler].")  # fmt: skip
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port of the nanny (or of the worker, with --no-nanny).")  # fmt: skip
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to keep trying to reach a scheduler that is not up yet "
                   "(0: for ever).")  # fmt: skip
@click.option("--death-timeout", default=None, type=click.FloatRange(min=0),
              help="Seconds to keep trying to reach a scheduler it lost before closing "
                   "[default: for ever].")  # fmt: skip
@click.option("--memory-limit", default=None,
              help="Bytes this worker may use (e.g. 4GB); 0 for no limit [default: 0; in "
                   "a Slurm job, its memory].")  # fmt: skip
@click.option("--resources", default="",
              help="Abstract resources of the worker, e.g. GPU=2,MEM=8e9: a task submitted "
                   "with resources={'GPU': 1} runs only where one is free.")  # fmt: skip
@click.option("--nanny/--no-nanny", default=True, show_default=True,
              help="Run the worker under a nanny that restarts it when it dies.")  # fmt: skip
@click.option("--nanny-address", default="", hidden=True)
@click.option("--standby", is_flag=True, hidden=True,
              help="Wait for 'go READY_FILE' on stdin before starting.")  # fmt: skip
@click.option("--token-file", type=click.Path(dir_okay=False), default=None)
@click.option(
    "--replaces",
    default="",
    hidden=True,
    help="Started by a cluster in place of a nanny that died: which, and how.",
)
@_dashboard_option("while registered with the scheduler and its worker runs (the nanny's)")
@common
def worker(
    scheduler_address: str | None,
    scheduler_file: str | None,
    nthreads: int | None,
    name: str | None,
    host: str | None,
    interface: str | None,
    contact_address: str,
    port: int,
    timeout: float,
    death_timeout: float | None,
    memory_limit: str | None,
    resources: str,
    nanny: bool,
    nanny_address: str,
    standby: bool,
    token_file: str | None,
    replaces: str,
    dashboard_address: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    ready_file: str | None,
    parent_pid: int | None,
    log_file: str | None,
    log_level: str,
) -> None:
    """Run a worker (under a nanny) for the scheduler at SCHEDULER_ADDRESS."""
    from regrow.config import parse_bytes
    from regrow.protocol.comm import is_loopback, parse_address
    from regrow.protocol.reach import route_to, split_contact
    from regrow.worker import Worker
    from regrow.worker.nanny import Nanny
    from regrow.worker.prefork import fork
    from regrow.worker.shell import parse_resources

    _logging(log_level, log_file)
    settings = _settings()  # a bad one: one line now, not after waiting for a scheduler
    if (scheduler_address is None) == (scheduler_file is None):
        raise click.UsageError("give SCHEDULER_ADDRESS or --scheduler-file (one, not both)")
    if scheduler_file is not None:
        scheduler_address = _read_scheduler_file(scheduler_file, timeout)
    assert scheduler_address is not None
    # Inside a Slurm job (srun regrow worker ...): what the job was given, unless set here.
    slurm = _slurm_defaults()
    nthreads = nthreads or int(slurm.get("nthreads", 1))
    name = name or slurm.get("name")
    memory_limit = memory_limit or slurm.get("memory_limit", "0")
    try:
        parse_address(scheduler_address)
        limit = parse_bytes(memory_limit)
        split_contact(contact_address)
        amounts = parse_resources(resources)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if contact_address and split_contact(contact_address)[1] and nanny:
        raise click.UsageError(
            "with a nanny, --contact-address takes a host only (the nanny and its worker "
            "listen on two ports); give HOST, or use --no-nanny"
        )
    if dashboard_address and not nanny:
        raise click.UsageError("--dashboard-address is served by the nanny: not with --no-nanny")
    if interface:
        host = _interface(interface)
        contact_address = contact_address or host
    elif host is None:
        scheduler_host = parse_address(scheduler_address)[0]
        host = "127.0.0.1" if is_loopback(scheduler_host) else route_to(scheduler_address)
    token = _token(token_file)
    security = _security("worker", tls_ca_file, tls_cert, tls_key)
    _check_security(security, "worker")
    if standby:
        # Everything is imported: wait for the nanny's word (end-of-file: not needed).
        line = sys.stdin.readline().split(maxsplit=1)
        if len(line) != 2 or line[0] != "go":
            sys.exit(0)
        ready_file = line[1].strip()
    # A nanny's first worker and its standby: copies of this process, forked now (one
    # thread, nothing started), which run the worker's command line when told
    # (worker/prefork.py). Without standby workers, the first one only.
    prefork = fork(_run_command) if nanny else None
    spare = fork(_run_command) if nanny and prefork and settings.standby_worker else None

    def make() -> Service:
        common: dict[str, Any] = dict(
            nthreads=nthreads,
            name=name,
            token=token,
            host=host,
            port=port,
            memory_limit=limit,
            settings=settings,
            security=security,
            insecure=insecure,
            timeout=timeout or None,
            contact_address=contact_address,
            death_timeout=death_timeout,
            resources=amounts,
        )
        if nanny:
            return Nanny(
                scheduler_address,
                log_level=log_level,
                log_file=log_file,
                replaces=replaces,
                dashboard_address=dashboard_address,
                prefork=prefork,
                standby=spare,
                **common,
            )
        return Worker(scheduler_address, nanny=nanny_address, **common)

    _run_service(make, parent_pid, ready_file)


@main.command()
@click.argument("scheduler_address")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print the scheduler's snapshot as JSON (one line each refresh).")  # fmt: skip
@click.option("--watch", type=click.FloatRange(min=0.1), default=None, metavar="SECONDS",
              help="Refresh every SECONDS until interrupted (Ctrl-C).")  # fmt: skip
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the cluster token (else $REGROW_TOKEN).")  # fmt: skip
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds to keep trying to reach the scheduler.")  # fmt: skip
@_options(_tls)
def status(
    scheduler_address: str,
    as_json: bool,
    watch: float | None,
    token_file: str | None,
    timeout: float,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Show the workers of the scheduler at SCHEDULER_ADDRESS and its task counts."""
    import time

    from rich.console import Console
    from rich.live import Live

    from regrow.client.client import Client
    from regrow.protocol.comm import parse_address
    from regrow.status import as_json as to_json
    from regrow.status import render

    try:
        parse_address(scheduler_address)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    token = _token(token_file)
    security = _security("client", tls_ca_file, tls_cert, tls_key)
    settings = _settings()
    console = Console()
    try:
        client = Client(
            scheduler_address,
            token=token,
            security=security,
            timeout=timeout,
            set_as_default=False,
            settings=settings,
        )
    except (OSError, RegrowError, ValueError) as exc:
        click.echo(f"regrow: error: {reason(exc)}", err=True)
        sys.exit(1)
    # Ctrl-C ends --watch between two refreshes: raised only while we sleep, never in
    # the middle of a call to the scheduler, which would leave the client half way.
    interrupted = False
    sleeping = False

    def on_interrupt(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        if sleeping:
            raise KeyboardInterrupt

    def pause(seconds: float) -> None:
        nonlocal sleeping
        sleeping = True
        try:
            if not interrupted:
                time.sleep(seconds)
        finally:
            sleeping = False

    try:
        with client:
            if watch is None:
                info = client.scheduler_info()
                if as_json:
                    click.echo(to_json(info))
                else:
                    console.print(render(info, client.scheduler_address))
                return
            previous = signal.signal(signal.SIGINT, on_interrupt)
            try:
                if as_json:
                    while not interrupted:
                        click.echo(to_json(client.scheduler_info()))
                        sys.stdout.flush()
                        pause(watch)
                    return
                with Live(console=console, auto_refresh=False) as live:
                    while not interrupted:
                        live.update(render(client.scheduler_info(), client.scheduler_address))
                        live.refresh()
                        pause(watch)
            finally:
                signal.signal(signal.SIGINT, previous)
    except KeyboardInterrupt:
        pass
    except (OSError, RegrowError) as exc:
        click.echo(f"regrow: error: {reason(exc)}", err=True)
        sys.exit(1)


@main.group()
def journal() -> None:
    """Look into a scheduler's journal."""


@journal.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
def journal_inspect(path: str) -> None:
    """Print what the journal at PATH holds: tasks by state, clients, size."""
    from regrow.scheduler.journal import Journal, JournalError

    if not os.path.exists(path):
        raise click.ClickException(f"no journal at {path}")
    try:
        j = Journal(path)
    except JournalError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        s = j.summary()
    finally:
        j.db.close()
    click.echo(f"journal      {s['path']} (version {s['version']}, {s['file_bytes']:,} bytes)")
    click.echo(f"scheduler id {s['scheduler_id']}")
    click.echo(f"tasks        {s['tasks']:,} ({s['scattered']:,} scattered)")
    for state, n in sorted(s["by_state"].items()):
        click.echo(f"  {state:<11}{n:,}")
    click.echo(f"results held {s['result_bytes']:,} bytes (as last recorded)")
    click.echo(f"clients      {len(s['clients'])}")
    for client, n in sorted(s["clients"].items()):
        click.echo(f"  {client}  wants {n:,} key(s)")


@main.group("config")
def config_group() -> None:
    """See the settings in force and where each comes from."""


def _assignment(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> Any:
    """--set NAME=VALUE, as many as given: {name: value} (dashes in NAME as underscores)."""
    out: dict[str, str] = {}
    for item in values:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", ctx, param)
        out[name.strip().replace("-", "_")] = value
    return out


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        import json

        return json.dumps(value)
    return str(value)


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print JSON: {files: [...], settings: {name: {value, source}}}.")  # fmt: skip
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              callback=_assignment,
              help="Set a setting as a command-line flag would (over the files and the "
                   "REGROW_* variables); may be repeated.")  # fmt: skip
def config_show(as_json: bool, assignments: dict[str, str]) -> None:
    """Print every setting in force, its value and where it came from: the default, a
    config file, a REGROW_* variable or a flag. Config files: the one $REGROW_CONFIG
    names (empty: none), else ~/.config/regrow/regrow.yaml and ./regrow.yaml."""
    from regrow.config import config_files, setting_names

    resolved = _resolve(dict(assignments), dict.fromkeys(assignments, "--set"))
    values = {name: getattr(resolved.settings, name) for name in sorted(setting_names())}
    if as_json:
        import json

        out = {
            "files": list(resolved.files),
            "settings": {
                name: {"value": value, "source": resolved.sources[name]}
                for name, value in values.items()
            },
        }
        click.echo(json.dumps(out, indent=2))
        return
    looked = ", ".join(str(p) for p in config_files())
    if resolved.files:
        click.echo(f"config files read: {', '.join(resolved.files)}")
    else:
        click.echo(
            f"config files read: none (looked for {looked or 'none: REGROW_CONFIG is empty'})"
        )
    rows = [("setting", "value", "source")]
    rows += [(name, _shown(value), resolved.sources[name]) for name, value in values.items()]
    width = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, value, source in rows:
        click.echo(f"{name:<{width[0]}}  {value:<{width[1]}}  {source}")


@main.command()
@click.option("--workers", "n_workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--files", default=400, show_default=True, type=click.IntRange(1, 100_000),
              help="How many standard-library files to count words in.")  # fmt: skip
def demo(n_workers: int, files: int) -> None:
    """Start a local cluster and run a word count over Python's standard library."""
    from regrow.demo import run_demo

    _settings()  # a bad one: one line now, before any process starts
    code = run_demo(n_workers=n_workers, max_files=files)
    sys.exit(code)


@main.command()
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds of faults (at least one of each kind, even past it).")  # fmt: skip
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="Seed of every random choice [default: a random one, printed].")  # fmt: skip
@click.option("--workers", "n_workers", default=3, show_default=True,
              type=click.IntRange(2, 32),
              help="Workers under nannies (plus one in a network namespace).")  # fmt: skip
@click.option("--graph-timeout", default=120.0, show_default=True,
              type=click.FloatRange(min=1),
              help="Seconds a graph may take before it is a hang.")  # fmt: skip
@click.option("--in-flight", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Graphs running at once.")  # fmt: skip
@click.option("--no-netns", is_flag=True, default=False,
              help="No worker in a network namespace, so no network cuts.")  # fmt: skip
@click.option("--no-scheduler-kill", is_flag=True, default=False,
              help="Never kill the scheduler.")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              default=None, help="Also write the report as JSON to this file.")  # fmt: skip
@click.option("--log-level", default="ERROR", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log level of the cluster's processes (their logs go to stderr).")  # fmt: skip
def chaos(
    duration: float,
    seed: int | None,
    n_workers: int,
    graph_timeout: float,
    in_flight: int,
    no_netns: bool,
    no_scheduler_kill: bool,
    json_path: str | None,
    log_level: str,
) -> None:
    """Soak a local cluster: run graphs while killing, freezing and cutting off its
    processes; check every result against a serial run. Exits 1 on a wrong result or
    a hang, 2 if the soak could not run to its end."""
    import random

    from regrow.chaos import SoakConfig, run_soak

    _settings()  # a bad one: one line now, before any process starts
    if json_path is not None:
        parent = os.path.dirname(os.path.abspath(json_path))
        if not os.path.isdir(parent):
            raise click.BadParameter(f"directory {parent} does not exist", param_hint="--json")
    config = SoakConfig(
        duration=duration,
        seed=random.randrange(1 << 32) if seed is None else seed,
        workers=n_workers,
        graph_timeout=graph_timeout,
        in_flight=in_flight,
        netns=not no_netns,
        scheduler_kill=not no_scheduler_kill,
        json_path=json_path,
        log_level=log_level.upper(),
    )
    sys.exit(run_soak(config))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
