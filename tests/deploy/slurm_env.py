"""A private, real Slurm on this machine, for tests: munged, slurmctld and one slurmd.

Owns: a temporary directory with a fresh munge key, a generated ``slurm.conf`` (free
ports, state and spool in the directory, no cgroups, no accounting), the three daemons it
starts in the foreground (so their PIDs are ours), and the jobs submitted to this Slurm.
``slurm_cluster()`` brings it up and waits until the node is idle; on exit it cancels
every job, waits for them to leave the queue, stops the daemons by PID and kills what job
processes are left (found by the ``SLURM_CONF`` of this Slurm in their environment).

The node declares more CPUs than the machine has (``SlurmdParameters=config_overrides``),
so several one-core jobs run at once on a 2-core runner.

Must not: touch a Slurm or munge of the machine's own (``/etc/slurm``, the default
ports 6817/6818, ``/run/munge``), or stop any process it did not start.
If Slurm cannot run here, ``SlurmUnavailable`` says why (the daemon's own error line);
the ``slurm`` fixture turns that into a skip.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from regrow.testing import stop, wait_until

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scancel", "squeue", "sinfo", "srun")


class SlurmUnavailable(RuntimeError):
    """This machine cannot run a private Slurm (the message says why)."""


@dataclass
class SlurmEnv:
    """A running private Slurm: its configuration and how to talk to it."""

    root: Path
    conf: Path
    node: str
    partition: str
    env: dict[str, str]  # os.environ plus SLURM_CONF (and the munge socket)
    startup_seconds: float = 0.0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command against this Slurm."""
        return subprocess.run(
            list(args), env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def jobs(self) -> dict[str, str]:
        """``{job id: state}`` of every job in this Slurm's queue."""
        r = self.run("squeue", "-h", "-o", "%i %T")
        if r.returncode != 0:
            raise RuntimeError(f"squeue failed: {r.stderr.strip()}")
        return dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip())

    def cancel(self, job_id: str) -> None:
        r = self.run("scancel", job_id)
        if r.returncode != 0:
            raise RuntimeError(f"scancel {job_id} failed: {r.stderr.strip()}")

    def job_processes(self) -> list[psutil.Process]:
        """Live processes that run for this Slurm (job steps and what they started):
        those whose environment names this Slurm's configuration."""
        marker = str(self.conf)
        daemons = {proc.pid for proc in self.procs.values()}
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.pid in daemons or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if p.environ().get("SLURM_CONF") != marker:
                    continue
                found[p.pid] = p
                # slurmstepd blanks its own environment: it is found as a job's parent.
                parent = p.parent()
                if parent is not None and parent.name() == "slurmstepd":
                    found[parent.pid] = parent
        return list(found.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing() -> list[str]:
    found = {
        name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
        for name in DAEMONS + CLIENTS
    }
    return [name for name, path in found.items() if path is None]


def _exe(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert path is not None
    return path


# Errors every fresh Slurm logs (empty state directory, no PMIx library): not the reason.
_BENIGN = ("pmix", "could not open", "no such file or directory", "note: trying backup")


def _why(log: Path) -> str:
    """What in a daemon's log says why it stopped: its fatal line, else its first and
    last errors (the first is the cause, the last often just "initialization failed")."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [
        line.strip()
        for line in lines
        if ("fatal" in line.lower() or "error" in line.lower())
        and not any(b in line.lower() for b in _BENIGN)
    ]
    fatal = [line for line in errors if "fatal" in line.lower()]
    if fatal:
        return fatal[0]
    if errors:
        return errors[0] if len(errors) == 1 else f"{errors[0]} / {errors[-1]}"
    return lines[-1].strip() if lines else "(empty log)"


def _conf(root: Path, node: str, user: str, cpus: int, memory_mb: int) -> str:
    ctld_port, slurmd_port = _free_port(), _free_port()
    while slurmd_port == ctld_port:
        slurmd_port = _free_port()
    return "\n".join(
        [
            "ClusterName=regrowtest",
            # Addresses given, so nothing depends on what the host name resolves to.
            f"SlurmctldHost={node}(127.0.0.1)",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={root / 'munge.socket'}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            # Jobs are scheduled and cleaned up at once, not on the minute.
            "SchedulerParameters=sched_interval=1",
            "KillWait=5",
            "MessageTimeout=10",
            "MinJobAge=30",
            # The node may declare more than the machine has: 1-core jobs run side by side.
            "SlurmdParameters=config_overrides",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


# Slurm 22.05's slurmd always loads a cgroup plugin (there is no "disabled" before 23.x),
# and cgroup/v2 talks to systemd over dbus. cgroup/v1 pointed at an empty directory loads
# and never touches the machine's cgroups, since no plugin here (proctrack/linuxproc,
# task/none, jobacct_gather/none) asks it for anything.
_CGROUP_CONF = "CgroupPlugin=cgroup/v1\nCgroupMountpoint={root}/cgroup\nCgroupAutomount=no\n"


@contextlib.contextmanager
def slurm_cluster(
    cpus: int = 8, memory_mb: int = 8000, timeout: float = 60.0
) -> Iterator[SlurmEnv]:
    """Start a private Slurm, yield it once its node is idle, stop it all on exit.

    ``SlurmUnavailable`` (with the daemon's error line) if it cannot run here."""
    missing = _missing()
    if missing:
        raise SlurmUnavailable(
            f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
        )
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="regrow-slurm-env-"))
    os.chmod(root, 0o700)
    node = socket.gethostname().split(".")[0]
    user = getpass.getuser()
    for sub in ("state", "spool", "cgroup"):
        (root / sub).mkdir()
    key = root / "munge.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(1024))
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, node, user, cpus, memory_mb))
    (root / "cgroup.conf").write_text(_CGROUP_CONF.format(root=root))
    env = dict(os.environ)
    env["SLURM_CONF"] = str(conf)
    env.pop("SLURM_JOB_ID", None)
    slurm = SlurmEnv(root=root, conf=conf, node=node, partition="debug", env=env)
    logs: list[object] = []
    try:

        def daemon(name: str, args: list[str]) -> None:
            log = open(root / f"{name}.log", "wb")  # noqa: SIM115 (closed on exit)
            logs.append(log)
            slurm.procs[name] = subprocess.Popen(
                [_exe(name), *args],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def alive(name: str) -> bool:
            code = slurm.procs[name].poll()
            if code is not None:
                raise SlurmUnavailable(
                    f"{name} exited with code {code} while starting: {_why(root / f'{name}.log')}"
                )
            return True

        daemon(
            "munged",
            [
                "--foreground",
                "--force",  # root, and a temp dir under a world-writable /tmp
                f"--socket={root / 'munge.socket'}",
                f"--key-file={key}",
                f"--pid-file={root / 'munged.pid'}",
                f"--log-file={root / 'munged.file.log'}",
                f"--seed-file={root / 'munged.seed'}",
            ],
        )
        wait_until(
            lambda: alive("munged") and (root / "munge.socket").exists(),
            timeout=timeout,
            what="munged's socket exists",
        )
        daemon("slurmctld", ["-D", "-i", "-f", str(conf)])
        daemon("slurmd", ["-D", "-N", node, "-f", str(conf)])

        def idle() -> bool:
            alive("slurmctld")
            alive("slurmd")
            r = slurm.run("sinfo", "-h", "-n", node, "-o", "%T", timeout=10)
            return r.returncode == 0 and r.stdout.strip() == "idle"

        try:
            wait_until(idle, timeout=timeout, what="the Slurm node is idle")
        except TimeoutError:
            r = slurm.run("sinfo", "-h", "-N", "-o", "%N %T %E", timeout=10)
            raise SlurmUnavailable(
                f"the Slurm node did not become idle within {timeout:g} s "
                f"(sinfo: {r.stdout.strip() or r.stderr.strip()}; "
                f"slurmd: {_why(root / 'slurmd.log')})"
            ) from None
        slurm.startup_seconds = time.monotonic() - started
        yield slurm
    finally:
        try:
            _teardown(slurm)
        finally:
            for log in logs:
                log.close()  # type: ignore[attr-defined]
            shutil.rmtree(root, ignore_errors=True)


def _teardown(slurm: SlurmEnv) -> None:
    """Cancel every job, wait for the queue to empty, stop the daemons, kill leftovers."""
    ctld = slurm.procs.get("slurmctld")
    if ctld is not None and ctld.poll() is None:
        with contextlib.suppress(Exception):
            ids = list(slurm.jobs())
            if ids:
                slurm.run("scancel", *ids)
            wait_until(lambda: not slurm.jobs(), timeout=20, what="every job left the queue")
    # The node daemon first (nothing runs any more), then the controller, then munge.
    for name in ("slurmd", "slurmctld", "munged"):
        proc = slurm.procs.get(name)
        if proc is not None:
            stop([proc], timeout=10)
    left = slurm.job_processes()
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(left, timeout=10)


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmEnv]:
    """A private Slurm for the module's tests, ``SLURM_CONF`` set in ``os.environ`` (so
    code that runs sbatch/squeue/scancel talks to it); skips, saying why, if it cannot run."""
    with contextlib.ExitStack() as stack:
        try:
            env = stack.enter_context(slurm_cluster())
        except SlurmUnavailable as exc:
            pytest.skip(f"no private Slurm here: {exc}")
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("SLURM_CONF", str(env.conf))
        mp.delenv("SLURM_JOB_ID", raising=False)
        yield env
