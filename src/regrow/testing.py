"""Public helpers for testing code that uses regrow (and regrow itself).

- ``wait_until(predicate, timeout)``: poll a condition with a deadline instead of sleeping.
- ``children_of(pid)``: the live processes a process started (to check nothing leaks).
- ``child_env``, ``regrow_cli``, ``wait_ready``, ``stop``: start ``regrow`` processes from
  a test exactly as an operator would, and stop only those, by PID.
- ``veth_link(name)``: a second "host" on Linux: a network namespace joined to this one by
  a veth pair on a free /30, removed on exit (root and iproute2's ``ip`` needed).
- ``headless_browser()``: a real headless chromium driven through selenium (Debian's
  ``chromium`` and ``chromium-driver``), for the dashboard; ``browser_missing()`` says why
  none can run here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from regrow.deploy import stop_processes as stop

if TYPE_CHECKING:
    from regrow.client.client import Client
    from regrow.deploy import LocalCluster

# ``make_cluster(**LocalCluster keywords) -> (cluster, client)``: the tests' cluster factory.
MakeCluster = Callable[..., "tuple[LocalCluster, Client]"]


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> None:
    """Return once ``predicate()`` is truthy; raise TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition {what or predicate!r} not met within {timeout} s")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True) if p.is_running()]
    except psutil.NoSuchProcess:
        return []


def child_env(token: str, **settings: object) -> dict[str, str]:
    """Environment for regrow processes a test starts itself: the token, settings as
    REGROW_* variables, and our sys.path (so they import the task modules as we do)."""
    env = dict(os.environ)
    env["REGROW_TOKEN"] = token
    for name, value in settings.items():
        env[f"REGROW_{name.upper()}"] = str(value)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *paths])
    return env


def regrow_cli(
    args: list[str], env: dict[str, str], ready_file: Path, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m regrow.cli ARGS`` (after ``prefix``, e.g. ``ip netns exec NS``); it
    writes its address to ``ready_file`` once it serves, and exits if this process dies."""
    cmd = [*(prefix or []), sys.executable, "-m", "regrow.cli", *args]
    cmd += ["--ready-file", str(ready_file), "--parent-pid", str(os.getpid())]
    cmd += ["--log-level", "ERROR"]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def wait_ready(proc: subprocess.Popen[bytes], ready_file: Path, timeout: float = 30.0) -> str:
    """The address a process wrote to its ready file; fails at once if it exits instead."""

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode}")
        return ready_file.exists()

    wait_until(ready, timeout=timeout, what=f"{ready_file.name} written")
    return ready_file.read_text().strip()


class VethUnavailable(RuntimeError):
    """This machine cannot give us a network namespace and a veth pair (why: the message)."""


@dataclass
class VethLink:
    """A network namespace joined to the root namespace by a veth pair: a second host."""

    ip: str  # path of the ip command
    ns: str  # the namespace
    host_if: str  # the root namespace's end of the pair
    ns_if: str  # the namespace's end
    host_ip: str  # address of the root end
    ns_ip: str  # address of the namespace's end

    def in_ns(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return [self.ip, "netns", "exec", self.ns]

    def cut(self) -> None:
        """Take the root end down: the far side goes silent, no FIN, no RST."""
        r = _ip(self.ip, "link", "set", self.host_if, "down")
        if r.returncode != 0:
            raise RuntimeError(f"ip link set {self.host_if} down failed: {r.stderr.strip()}")

    def host_tx_bytes(self) -> int:
        """Bytes sent so far by the root end of the pair, into the namespace."""
        return int(Path(f"/sys/class/net/{self.host_if}/statistics/tx_bytes").read_text())


def _ip(ip: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)


def _free_subnet(ip: str, net: str) -> tuple[str, str]:
    """Two addresses of a /30 under ``net``.0.0/16 that no interface here uses yet."""
    used = _ip(ip, "-4", "-o", "addr", "show").stdout
    for _ in range(100):
        base = secrets.randbelow(64) * 4
        prefix = f"{net}.{secrets.randbelow(256)}."
        if not any(f"{prefix}{base + i}/" in used for i in range(4)):
            return f"{prefix}{base + 1}", f"{prefix}{base + 2}"
    raise VethUnavailable(f"no free /30 found under {net}.0.0/16")


@contextlib.contextmanager
def veth_link(name: str, short: str, net: str = "10.214") -> Iterator[VethLink]:
    """A namespace ``name-<tag>`` and a veth pair ``<short><tag>h``/``<short><tag>n`` on a
    free /30 under ``net``; both deleted on exit, whatever happened (VethUnavailable if
    they cannot be made: not Linux, no ``ip``, no permission)."""
    if not sys.platform.startswith("linux"):
        raise VethUnavailable("network namespaces are a Linux feature")
    ip = shutil.which("ip")
    if ip is None:
        raise VethUnavailable("iproute2's 'ip' command is not installed")
    tag = secrets.token_hex(3)
    host_ip, ns_ip = _free_subnet(ip, net)
    link = VethLink(ip, f"{name}-{tag}", f"{short}{tag}h", f"{short}{tag}n", host_ip, ns_ip)
    created_ns = created_link = False
    try:
        inside = ["netns", "exec", link.ns, ip]
        for args in (
            ["netns", "add", link.ns],
            ["link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if],
            ["link", "set", link.ns_if, "netns", link.ns],
            ["addr", "add", f"{host_ip}/30", "dev", link.host_if],
            ["link", "set", link.host_if, "up"],
            [*inside, "addr", "add", f"{ns_ip}/30", "dev", link.ns_if],
            [*inside, "link", "set", link.ns_if, "up"],
            [*inside, "link", "set", "lo", "up"],
        ):
            r = _ip(ip, *args)
            if r.returncode != 0:
                raise VethUnavailable(f"'ip {' '.join(args)}' failed: {r.stderr.strip()}")
            created_ns = created_ns or args[:2] == ["netns", "add"]
            created_link = created_link or args[:2] == ["link", "add"]
        wait_until(
            lambda: Path(f"/sys/class/net/{link.host_if}/operstate").read_text().strip() == "up",
            timeout=10,
            what="the veth pair is up",
        )
        yield link
    finally:
        # Deleting the namespace deletes its end of the pair, and with it the pair.
        if created_ns:
            _ip(ip, "netns", "del", link.ns)
        if created_link:
            _ip(ip, "link", "del", link.host_if)  # fails harmlessly if already gone
        wait_until(
            lambda: (
                link.host_if not in _ip(ip, "-o", "link", "show").stdout
                and link.ns not in _ip(ip, "netns", "list").stdout
            ),
            timeout=10,
            what="the namespace and the veth pair are gone",
        )


__all__ = [
    "MakeCluster",
    "VethLink",
    "VethUnavailable",
    "child_env",
    "children_of",
    "regrow_cli",
    "stop",
    "veth_link",
    "wait_ready",
    "wait_until",
]


# ------------------------------------------------------------------ a real browser
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
# Headless, no sandbox (root in CI), and nothing that reaches the network by itself.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1400,1000",
)


def browser_missing() -> str | None:
    """Why no headless browser can run here (None: one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not any(shutil.which(p) for p in CHROMIUM):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not any(shutil.which(p) for p in CHROMEDRIVER):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


@contextlib.contextmanager
def headless_browser(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh headless chromium (a profile directory of its own) as a selenium driver;
    quit at the end."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next(p for p in CHROMIUM if shutil.which(p))
    driver_path = next(p for p in CHROMEDRIVER if shutil.which(p))
    with tempfile.TemporaryDirectory(prefix="regrow-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = binary
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver: Any) -> list[str]:
    """The page's console messages of level SEVERE (uncaught errors, failed loads)."""
    return [str(e["message"]) for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
