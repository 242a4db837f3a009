"""Real sshd servers in network namespaces: the "hosts" of SSHCluster's tests.

Owns: for each host, a network namespace joined to the root one by a veth pair
(``regrow.testing.veth_link``) and routed through the root namespace, so hosts reach
each other as well as this process; an sshd (Debian's openssh-server) in it, listening
on port 22 of the namespace's address, with a host key and an authorized client key
made for the test run; stopping that sshd and every process under it, by PID.

Must not: touch the machine's own sshd, its configuration, ``~/.ssh`` or global
sysctls (forwarding is turned on for our veth interfaces only, and goes with them);
stop any process but those sshd servers and what runs under them. The one thing left
behind is ``/run/sshd``, sshd's empty privilege-separation directory, made if missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from regrow.testing import VethLink, VethUnavailable, veth_link, wait_until

SSHD = "/usr/sbin/sshd"
NET = "10.214"  # veth_link's default: every host's /30 lies in NET.0.0/16


class SSHUnavailable(RuntimeError):
    """This machine cannot run the test's sshd hosts (why: the message)."""


def check_available() -> None:
    """Raise SSHUnavailable unless we can make namespaces and run sshd in them."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise SSHUnavailable("needs root (network namespaces and sshd)")
    for program in (SSHD, "ssh-keygen", "ip"):
        if shutil.which(program) is None:
            raise SSHUnavailable(f"{program} is not installed (apt-get install openssh-server)")
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        raise SSHUnavailable("asyncssh is not installed (pip install regrow[ssh])") from None


@dataclass(frozen=True)
class Keys:
    """A host key for every sshd and a client key they all accept."""

    dir: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path
    stranger_key: Path  # a key no sshd accepts

    @classmethod
    def make(cls, directory: Path) -> Keys:
        directory.mkdir(parents=True, exist_ok=True)
        paths = {n: directory / n for n in ("host_key", "client_key", "stranger_key")}
        for path in paths.values():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "regrow-test", "-f", path],
                check=True,
                capture_output=True,
                timeout=30,
            )
        authorized = directory / "authorized_keys"
        authorized.write_text(Path(f"{paths['client_key']}.pub").read_text())
        authorized.chmod(0o600)
        return cls(directory, paths["host_key"], paths["client_key"], authorized,
                   paths["stranger_key"])  # fmt: skip

    def connect_options(self, **extra: Any) -> dict[str, Any]:
        """What ``asyncssh.connect`` needs to log in to the test's hosts as root."""
        return {
            "client_keys": [str(self.client_key)],
            "known_hosts": None,
            "username": "root",
            **extra,
        }


@dataclass
class SSHHost:
    """One host: a namespace, its link to the root namespace, and an sshd in it."""

    link: VethLink
    dir: Path
    sshd: subprocess.Popen[bytes] | None = None
    seen: set[int] = field(default_factory=set)  # pids of processes seen under the sshd

    @property
    def address(self) -> str:
        return self.link.ns_ip

    def processes(self) -> list[psutil.Process]:
        """The live processes under this host's sshd, sshd's own session processes
        excepted: what SSH sessions started (remembered, to check later they are gone)."""
        if self.sshd is None:
            return []
        try:
            under = psutil.Process(self.sshd.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = []
        for p in under:
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE and not p.name().startswith("sshd"):
                    found.append(p)
                    self.seen.add(p.pid)
        return found

    def regrow_processes(self) -> list[psutil.Process]:
        """The ``python -m regrow.cli`` processes SSH sessions started on this host."""
        found = []
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                if "regrow.cli" in p.cmdline():
                    found.append(p)
        return found

    def session_of(self, proc: psutil.Process) -> psutil.Process:
        """The sshd session process that ``proc`` (started over SSH) runs under."""
        parent = proc.parent()
        assert parent is not None and parent.name().startswith("sshd"), parent
        return parent

    def restore(self) -> None:
        """Bring the root end of the link up again after ``link.cut()``."""
        subprocess.run(
            [self.link.ip, "link", "set", self.link.host_if, "up"], check=True, timeout=30
        )
        _route_through_root(self.link)

    def start_sshd(self, keys: Keys) -> None:
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "Port 22",
                    f"ListenAddress {self.address}",
                    f"HostKey {keys.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "PermitRootLogin yes",
                    f"AuthorizedKeysFile {keys.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "StrictModes no",
                    "UsePAM no",
                    "UseDNS no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    # A client gone silent (its link cut) is dropped, with its processes.
                    "ClientAliveInterval 2",
                    "ClientAliveCountMax 3",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        # sshd's privilege-separation directory (an empty root-owned directory).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(self.dir / "sshd.log", "wb")  # noqa: SIM115 (closed below, once started)
        with log:
            # `ip netns exec` execs sshd: the pid we get is the listening sshd's.
            self.sshd = subprocess.Popen(
                [*self.link.in_ns(), SSHD, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

        def accepting() -> bool:
            assert self.sshd is not None
            if self.sshd.poll() is not None:
                text = (self.dir / "sshd.log").read_text().strip()
                raise SSHUnavailable(f"sshd exited with {self.sshd.returncode}: {text}")
            with socket.socket() as s:
                s.settimeout(1)
                return s.connect_ex((self.address, 22)) == 0

        wait_until(accepting, timeout=20, what=f"sshd on {self.address} accepts connections")

    def stop(self) -> None:
        """Stop the sshd and everything under it, by PID: SIGTERM, then SIGKILL."""
        if self.sshd is None:
            return
        procs = []
        with contextlib.suppress(psutil.NoSuchProcess):
            procs = [psutil.Process(self.sshd.pid)]
            procs += procs[0].children(recursive=True)
        procs += [p for p in _alive(self.seen) if p not in procs]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        self.sshd.wait(5)


def _alive(pids: set[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def _route_through_root(link: VethLink) -> None:
    """Let the namespace reach every other test namespace, through the root namespace:
    a route to NET.0.0/16 via the root end, which forwards what comes in on it."""
    Path(f"/proc/sys/net/ipv4/conf/{link.host_if}/forwarding").write_text("1\n")
    r = subprocess.run(
        [*link.in_ns(), link.ip, "route", "replace", f"{NET}.0.0/16", "via", link.host_ip],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        raise SSHUnavailable(f"cannot route {link.ns} through the root namespace: {r.stderr}")


@contextlib.contextmanager
def ssh_hosts(n: int, keys: Keys, tmp: Path, *, bare: int = 0) -> Iterator[list[SSHHost]]:
    """``n`` hosts running sshd, then ``bare`` more with no sshd (nothing on port 22),
    all able to reach each other; everything is stopped and removed on exit."""
    with contextlib.ExitStack() as stack:
        hosts: list[SSHHost] = []
        for i in range(n + bare):
            try:
                link = stack.enter_context(veth_link("regrow-ssh", "rgs", net=NET))
            except VethUnavailable as exc:
                raise SSHUnavailable(str(exc)) from None
            _route_through_root(link)
            d = tmp / f"host{i}"
            d.mkdir(parents=True, exist_ok=True)
            host = SSHHost(link, d)
            # Stopped before its namespace goes (LIFO), whatever happens next.
            stack.callback(host.stop)
            if i < n:
                host.start_sshd(keys)
            hosts.append(host)
        yield hosts


__all__ = ["Keys", "SSHHost", "SSHUnavailable", "check_available", "ssh_hosts"]
