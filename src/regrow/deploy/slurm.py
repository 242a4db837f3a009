"""SLURMCluster: a scheduler here, workers in Slurm batch jobs, as dask-jobqueue's.

Owns: the scheduler process it starts on this machine (as LocalCluster does, stopped by
PID), the batch jobs it submits (one worker under its nanny per job, ``sbatch``), the
table of those jobs (unit name <-> Slurm job id, kept in step with ``squeue``), their
cancellation (``scancel``), and a private directory (``shared_temp_directory``, which
the jobs must see: a shared filesystem, as dask-jobqueue assumes) holding the token file
(mode 0600: the token appears in no script, command line or job environment), the TLS
files of the workers, and the jobs' logs unless ``log_directory`` is given.

What ``regrow worker`` takes from Slurm's environment inside an allocation (so that
``srun regrow worker ADDRESS`` needs no more flags) is ``regrow.worker.batch``'s: a
worker process must not import the deploy layer to start.

A job that leaves the queue (it ended, was cancelled, hit its walltime, was preempted)
is forgotten at the next look at ``squeue``, so ``scale`` and ``adapt`` replace it; the
scheduler recovers the work of its worker as for any lost worker.

Must not: cancel or touch a job it did not submit, stop a process it did not start, or
put the token where other users can read it (scripts, command lines, job environments).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import logging
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from regrow import interrupts
from regrow.config import Settings, parse_bytes
from regrow.deploy.cluster import Cluster, wait_for, wait_ready
from regrow.deploy.local import _child_env, stop_processes
from regrow.protocol.comm import format_address, is_loopback, parse_address
from regrow.protocol.reach import WILDCARDS, interface_address, outward_host
from regrow.security import Security

logger = logging.getLogger("regrow.deploy")
_live: weakref.WeakSet[SLURMCluster] = weakref.WeakSet()

# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (and no limit).
_WALLTIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}(:\d{1,2})?)?)$")
_NO_LIMIT = {"UNLIMITED", "INFINITE"}
# squeue states of a job that is over (squeue lists COMPLETING ones a little longer).
_ENDED = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# scheduler_options: where the scheduler listens.
_SCHEDULER_OPTIONS = frozenset({"host", "port", "interface"})
# Somewhere outside: the interface that routes there is this host's outward address.


@dataclass
class SlurmJob:
    """One batch job this cluster submitted: one worker, named ``name``."""

    name: str
    job_id: str
    log_file: str
    submitted: float  # time.monotonic() when sbatch answered


class SLURMCluster(Cluster):
    """A scheduler on this machine and workers in Slurm batch jobs, one worker per job.

    As dask-jobqueue's ``SLURMCluster``: ``cores`` threads and ``memory`` per job (the
    worker's memory limit, and ``--mem``), ``queue`` (``-p``), ``account`` (``-A``),
    ``walltime`` (``-t``), ``job_extra_directives`` (more ``#SBATCH`` lines),
    ``job_script_prologue`` (shell lines before the worker starts), ``worker_extra_args``
    (more ``regrow worker`` flags). ``scale(jobs=n)`` / ``scale(n)``, ``adapt(...)``,
    ``job_script()`` shows what is submitted. The scheduler listens on
    ``scheduler_options["host"]`` (or ``"interface"``), by default this host's outward
    address, so that jobs on other nodes reach it; a token is made if none is given.
    ``shared_temp_directory`` (default: the current directory) must be visible to the
    jobs: the token file is there. ``**settings`` are regrow settings (as LocalCluster's).
    """

    squeue_interval = 1.0  # seconds between two looks at squeue (from _unit_names)

    def __init__(
        self,
        queue: str | None = None,
        account: str | None = None,
        cores: int = 1,
        processes: int = 1,
        memory: str | int = "1GB",
        walltime: str | None = "00:30:00",
        job_extra_directives: Sequence[str] = (),
        job_script_prologue: Sequence[str] = (),
        worker_extra_args: Sequence[str] = (),
        python: str = sys.executable,
        log_directory: str | os.PathLike[str] | None = None,
        shared_temp_directory: str | os.PathLike[str] | None = None,
        job_name: str = "regrow-worker",
        scheduler_options: Mapping[str, Any] | None = None,
        token: str | None = None,
        security: Security | bool | None = None,
        timeout: float = 30.0,
        n_workers: int = 0,
        log_level: str = "INFO",
        death_timeout: float | None = 60.0,
        **settings: Any,
    ) -> None:
        self._init_cluster()
        self._closed = False
        self._lock = threading.RLock()
        self._jobs: dict[str, SlurmJob] = {}  # name -> job, while in the queue
        self._all_jobs: list[SlurmJob] = []  # every job submitted (for get_logs)
        self._polled = -math.inf
        self._counter = 0
        self.scheduler_proc: subprocess.Popen[bytes] | None = None
        self._scheduler_log: Any = None
        self._tmp: str | None = None

        # Everything checked before anything starts: a bad argument costs nothing.
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise ValueError(f"SLURMCluster: cores must be an integer >= 1, got {cores!r}")
        if processes != 1:
            raise ValueError(
                f"SLURMCluster: processes={processes!r}: one worker per job for now "
                "(processes=1); give it more threads with cores=, or more jobs with scale()"
            )
        self.memory_bytes = _memory_bytes(memory)
        self.walltime = _walltime(walltime)
        self.job_name = _job_name(job_name)
        self.queue = _one_line("queue", queue)
        self.account = _one_line("account", account)
        self.job_extra_directives = [_line("job_extra_directives", d) for d in job_extra_directives]
        self.job_script_prologue = [_line("job_script_prologue", d) for d in job_script_prologue]
        self.worker_extra_args = [str(a) for a in worker_extra_args]
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 0:
            raise ValueError(f"SLURMCluster: n_workers must be an integer >= 0, got {n_workers!r}")
        if str(log_level).upper() not in _LOG_LEVELS:
            raise ValueError(
                f"SLURMCluster: log_level must be one of {', '.join(_LOG_LEVELS)}, "
                f"got {log_level!r}"
            )
        if death_timeout is not None and (
            isinstance(death_timeout, bool)
            or not isinstance(death_timeout, int | float)
            or death_timeout <= 0
        ):
            raise ValueError(
                f"SLURMCluster: death_timeout must be a positive number of seconds or None, "
                f"got {death_timeout!r}"
            )
        # A job whose scheduler is gone that long ends (this process was killed, say).
        self.death_timeout = death_timeout
        self.cores = cores
        self.processes = processes
        self.python = python
        self.log_level = str(log_level).upper()
        self.timeout = timeout
        self._commands = _slurm_commands()
        listen_host, contact_host, port = _scheduler_listen(scheduler_options or {})
        # Beyond loopback the scheduler needs a token (it refuses to listen without one).
        self.token = self._token = token or secrets.token_hex(16)
        if security is True:
            security = Security.temporary()
        self.security = security or Security()
        self.settings = Settings.from_env(**settings)
        self.scheduler_address = ""

        base = os.fspath(shared_temp_directory) if shared_temp_directory else os.getcwd()
        try:
            self._tmp = tempfile.mkdtemp(prefix=".regrow-slurm-", dir=base)
        except OSError as exc:
            raise ValueError(
                f"SLURMCluster: cannot make a directory in shared_temp_directory={base!r}: "
                f"{exc.strerror}"
            ) from None
        self.log_directory = os.path.abspath(os.fspath(log_directory or self._tmp))
        _live.add(self)
        try:
            os.makedirs(self.log_directory, exist_ok=True)
            self.token_file = _private_file(self._tmp, "token", self._token)
            self._tls_args = self._worker_tls_files()
            self._start_scheduler(listen_host, contact_host, port)
            if n_workers:
                self.scale(n_workers)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ the scheduler
    def _start_scheduler(self, listen_host: str, contact_host: str, port: int) -> None:
        assert self._tmp is not None
        ready = os.path.join(self._tmp, "scheduler.ready")
        cmd = [
            sys.executable,
            "-m",
            "regrow.cli",
            "scheduler",
            "--host",
            listen_host,
            "--port",
            str(port),
            "--ready-file",
            ready,
            "--parent-pid",
            str(os.getpid()),
            "--log-level",
            self.log_level,
        ]
        env = _child_env(self._token, self.settings)
        env.update(self.security.to_env("scheduler"))
        self._scheduler_log = open(os.path.join(self._tmp, "scheduler.log"), "wb")  # noqa: SIM115
        self.scheduler_proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._scheduler_log,
            stderr=subprocess.STDOUT,
        )
        address = wait_ready(self.scheduler_proc, ready, self.timeout, "the scheduler")
        if contact_host:
            # Listening on every interface: jobs reach it at this host's outward address.
            address = format_address(
                contact_host, parse_address(address)[1], self.security.scheme()
            )
        self.scheduler_address = address

    def _worker_tls_files(self) -> list[str]:
        """The workers' --tls-* flags: files in the shared directory (PEM text written
        out, readable by this user only), never PEM text in the script."""
        sec = self.security
        if not sec.has_tls:
            return []
        assert self._tmp is not None and sec.tls_ca_file is not None
        if sec.tls_worker_cert is None or sec.tls_worker_key is None:
            raise ValueError("SLURMCluster: security has a CA but no worker certificate and key")
        paths = []
        for flag, name, value in (
            ("--tls-ca-file", "ca.pem", sec.tls_ca_file),
            ("--tls-cert", "worker-cert.pem", sec.tls_worker_cert),
            ("--tls-key", "worker-key.pem", sec.tls_worker_key),
        ):
            if value.lstrip().startswith("-----BEGIN"):
                value = _private_file(self._tmp, name, value)
            paths += [flag, os.path.abspath(value)]
        return paths

    # ------------------------------------------------------------ the job script
    def _next_name(self, consume: bool) -> str:
        with self._lock:
            name = f"{self.job_name}-{self._counter}"
            if consume:
                self._counter += 1
            return name

    def _worker_host(self) -> str:
        host = parse_address(self.scheduler_address)[0] if self.scheduler_address else ""
        # On loopback the jobs run here; else each worker listens on every interface
        # and registers the address of the one that routes to the scheduler.
        return "127.0.0.1" if host and is_loopback(host) else "0.0.0.0"

    def worker_command(self, name: str) -> list[str]:
        """The command a job runs (``exec``'d by its script): one worker under its nanny."""
        return [
            self.python,
            "-m",
            "regrow.cli",
            "worker",
            self.scheduler_address,
            "--name",
            name,
            "--nthreads",
            str(self.cores),
            "--memory-limit",
            str(self.memory_bytes // self.processes),
            "--host",
            self._worker_host(),
            "--token-file",
            self.token_file,
            *([] if self.death_timeout is None else ["--death-timeout", f"{self.death_timeout:g}"]),
            *self._tls_args,
            "--log-level",
            self.log_level,
            *self.worker_extra_args,
        ]

    def job_script(self, name: str | None = None) -> str:
        """The batch script of the job of worker ``name`` (default: the next job's)."""
        name = name or self._next_name(consume=False)
        lines = ["#!/usr/bin/env bash", ""]
        directives = [f"-J {self.job_name}"]
        if self.queue:
            directives.append(f"-p {self.queue}")
        if self.account:
            directives.append(f"-A {self.account}")
        directives += [
            "-n 1",
            f"--cpus-per-task={self.cores}",
            f"--mem={_slurm_memory(self.memory_bytes)}",
        ]
        if self.walltime:
            directives.append(f"-t {self.walltime}")
        directives.append(f"-o {os.path.join(self.log_directory, name)}-%j.out")
        directives += self.job_extra_directives
        lines += [f"#SBATCH {d}" for d in directives]
        lines.append("")
        lines += self.job_script_prologue
        lines.append("exec " + shlex.join(self.worker_command(name)))
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------ the hooks
    def _threads_per_worker(self) -> int:
        return self.cores

    def _start_units(self, n: int) -> None:
        for _ in range(n):
            self._submit()

    def _submit(self) -> SlurmJob:
        with self._lock:
            if self._closed:
                raise RuntimeError("SLURMCluster: closed")
            name = self._next_name(consume=True)
        script = self.job_script(name)
        env = self._job_env()
        r = self._run("sbatch", ["--parsable"], input=script, env=env)
        job_id = r.stdout.strip().split(";", 1)[0]
        if r.returncode != 0 or not job_id.isdigit():
            why = _one_line_output(r.stderr) or _one_line_output(r.stdout) or "no output"
            raise RuntimeError(f"SLURMCluster: sbatch failed (exit code {r.returncode}): {why}")
        job = SlurmJob(
            name=name,
            job_id=job_id,
            log_file=os.path.join(self.log_directory, f"{name}-{job_id}.out"),
            submitted=time.monotonic(),
        )
        with self._lock:
            self._jobs[name] = job
            self._all_jobs.append(job)
        logger.info("submitted job %s for worker %s", job_id, name)
        return job

    def _job_env(self) -> dict[str, str]:
        """What sbatch exports to the job (its default, --export=ALL): our environment,
        regrow's settings and import path, no token (the job reads the token file), no
        TLS variables (the job gets --tls-* flags)."""
        env = _child_env("", self.settings)
        env.pop("REGROW_TOKEN", None)
        for key in ("REGROW_TLS_CA_FILE", "REGROW_TLS_CERT", "REGROW_TLS_KEY"):
            env.pop(key, None)
        return env

    def _unit_names(self) -> list[str]:
        self._poll()
        with self._lock:
            return list(self._jobs)

    def _poll(self) -> None:
        """Forget the jobs that left the queue (at most every ``squeue_interval``)."""
        now = time.monotonic()
        with self._lock:
            if not self._jobs or now - self._polled < self.squeue_interval:
                return
            self._polled = now
        states = self._queue_states()
        if states is None:
            return
        with self._lock:
            for name, job in list(self._jobs.items()):
                if job.submitted > now:
                    continue  # submitted after squeue was asked: not in its answer yet
                state = states.get(job.job_id)
                if state is None or state in _ENDED:
                    del self._jobs[name]
                    last = _last_line(job.log_file)
                    logger.warning(
                        "job %s (worker %s) left the queue (%s): forgotten, so that "
                        "scale or adapt replace it%s",
                        job.job_id,
                        name,
                        state.lower() if state else "ended",
                        f"; its log ends: {last}" if last else "",
                    )

    def _queue_states(self) -> dict[str, str] | None:
        """``{job id: state}`` of this user's jobs of our job name; None if squeue failed."""
        try:
            r = self._run(
                "squeue", ["-h", "-o", "%i %T", "-u", getpass.getuser(), "-n", self.job_name]
            )
        except (OSError, RuntimeError) as exc:
            logger.warning("squeue failed (%s); keeping the job list as it was", exc)
            return None
        if r.returncode != 0:
            logger.warning(
                "squeue failed (%s); keeping the job list as it was", _one_line_output(r.stderr)
            )
            return None
        states: dict[str, str] = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1].upper()
        return states

    def _stop_unit(self, name: str) -> None:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            return
        self._scancel([job.job_id])
        with self._lock:
            self._jobs.pop(name, None)

    def _run(
        self,
        command: str,
        args: list[str],
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one of Slurm's commands; RuntimeError if it does not answer in time."""
        try:
            return subprocess.run(
                [self._commands[command], *args],
                input=input,
                env=env,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"SLURMCluster: {command} did not answer within {self.timeout:g} s"
            ) from None

    def _scancel(self, ids: list[str]) -> None:
        if not ids:
            return
        r = self._run("scancel", ids)
        # A job that ended meanwhile is no failure: it is gone, as asked.
        if r.returncode != 0 and "invalid job id" not in r.stderr.lower():
            raise RuntimeError(
                f"SLURMCluster: scancel {' '.join(ids)} failed (exit code {r.returncode}): "
                f"{_one_line_output(r.stderr) or 'no output'}"
            )
        logger.info("cancelled job(s) %s", ", ".join(ids))

    # ------------------------------------------------------------ the API
    @property
    def jobs(self) -> dict[str, str]:
        """``{worker name: Slurm job id}`` of the jobs in the queue (pending or running)."""
        self._poll()
        with self._lock:
            return {name: job.job_id for name, job in self._jobs.items()}

    def get_logs(self) -> dict[str, str]:
        """The scheduler's log and each job's output file, by worker name (every job
        this cluster submitted, finished ones too; "" where nothing was written yet)."""
        logs: dict[str, str] = {}
        if self._tmp is not None:
            logs["scheduler"] = _read_text(os.path.join(self._tmp, "scheduler.log"))
        with self._lock:
            jobs = list(self._all_jobs)
        for job in jobs:
            logs[job.name] = _read_text(job.log_file)
        return logs

    def close(self, timeout: float = 10.0) -> None:
        """Stop adapting, stop the scheduler (its workers close with it), cancel every
        job still in the queue and wait until none is, remove the private directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._close_common()
        finally:
            try:
                self._stop_everything(timeout)
            finally:
                if self._scheduler_log is not None:
                    self._scheduler_log.close()
                if self._tmp is not None:
                    shutil.rmtree(self._tmp, ignore_errors=True)
                _live.discard(self)

    def _stop_everything(self, timeout: float) -> None:
        if self.scheduler_proc is not None:
            stop_processes([self.scheduler_proc], timeout)
        with self._lock:
            self._jobs.clear()
            submitted = {job.job_id for job in self._all_jobs}
        if not submitted:
            return
        # Every job of ours that Slurm still lists, also those forgotten while they
        # were completing: close() returns when Slurm has reaped all their processes.
        states = self._queue_states()
        ids = submitted if states is None else submitted & set(states)
        if not ids:
            return
        self._scancel(sorted(ids))

        def gone() -> bool:
            states = self._queue_states()
            return states is not None and not ids & set(states)

        try:
            wait_for(gone, max(timeout, 30.0), "every job of this cluster left the queue")
        except TimeoutError as exc:
            logger.warning("SLURMCluster.close: %s (job ids: %s)", exc, ", ".join(sorted(ids)))

    def __del__(self) -> None:
        interrupts.quietly(lambda: self.close(timeout=2))

    def __repr__(self) -> str:
        return (
            f"<SLURMCluster {self.scheduler_address} jobs={len(self._jobs)} "
            f"cores={self.cores} memory={self.memory_bytes}>"
        )


# ---------------------------------------------------------------- helpers
def _slurm_commands() -> dict[str, str]:
    found = {}
    for name in ("sbatch", "squeue", "scancel"):
        path = shutil.which(name)
        if path is None:
            raise RuntimeError(
                f"SLURMCluster: {name} not found on PATH (run this on a Slurm login node, "
                "or load Slurm's module)"
            )
        found[name] = path
    return found


def _scheduler_listen(options: Mapping[str, Any]) -> tuple[str, str, int]:
    """(host to listen on, host to give the jobs if that differs, port)."""
    unknown = set(options) - _SCHEDULER_OPTIONS
    if unknown:
        raise ValueError(
            f"SLURMCluster: unknown scheduler_options {sorted(unknown)} "
            f"(known: {', '.join(sorted(_SCHEDULER_OPTIONS))})"
        )
    port = options.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"SLURMCluster: scheduler_options['port'] must be 0-65535, got {port!r}")
    if "interface" in options:
        if "host" in options:
            raise ValueError("SLURMCluster: scheduler_options takes host or interface, not both")
        try:
            return interface_address(str(options["interface"])), "", port
        except ValueError as exc:
            raise ValueError(f"SLURMCluster: {exc}") from None
    host = options.get("host")
    if host is None:
        return outward_host(), "", port
    host = str(host)
    if host in WILDCARDS:
        return "0.0.0.0", outward_host(), port
    return host, "", port


def _memory_bytes(memory: str | int) -> int:
    try:
        value = (
            memory
            if isinstance(memory, int) and not isinstance(memory, bool)
            else parse_bytes(str(memory))
        )
    except ValueError as exc:
        raise ValueError(f"SLURMCluster: memory={memory!r}: {exc}") from None
    if value <= 0:
        raise ValueError(f"SLURMCluster: memory must be more than 0 bytes, got {memory!r}")
    return value


def _slurm_memory(nbytes: int) -> str:
    """Bytes as sbatch's --mem, in MiB (Slurm's M), rounded up."""
    return f"{math.ceil(nbytes / 2**20)}M"


def _walltime(walltime: str | None) -> str | None:
    if walltime is None:
        return None
    text = str(walltime).strip()
    if text.upper() in _NO_LIMIT:
        return text.upper()
    if not _WALLTIME.match(text):
        raise ValueError(
            f"SLURMCluster: cannot read walltime={walltime!r} (Slurm's formats: 'MM', "
            "'HH:MM:SS', 'D-HH', 'D-HH:MM:SS', e.g. '00:30:00')"
        )
    return text


def _job_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ValueError(
            f"SLURMCluster: job_name must be letters, digits and . _ + - only, got {name!r}"
        )
    return name


def _one_line(what: str, value: str | None) -> str | None:
    return None if value is None else _line(what, value)


def _line(what: str, value: str) -> str:
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"SLURMCluster: {what} must be one line each, got {text!r}")
    return text


def _one_line_output(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _private_file(directory: str, name: str, text: str) -> str:
    """Write ``text`` to a new file only this user can read; its absolute path."""
    path = os.path.abspath(os.path.join(directory, name))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _last_line(path: str) -> str:
    lines = [line.strip() for line in _read_text(path)[-4096:].splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------- srun defaults
@atexit.register
def _close_all() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.close(timeout=5)
