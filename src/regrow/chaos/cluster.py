"""The cluster a chaos soak breaks, and every process the soak started.

Owns: starting the cluster (a ``LocalCluster`` of nannies, its scheduler journaled to a
temporary file; when asked and possible, one more worker in a network namespace joined
by a veth pair, restarted as an operator's supervisor would), the client; the processes
of each role as the soak sees them (checked to be ours: children of nannies it started),
waiting until the cluster is back at full size and a probe task returns, the memory of
its processes, and checking at the end that every process it started is gone.

Must not: signal a process (``regrow.chaos.faults`` does, only with the pids this
module vouches for), nor judge a graph; nor block for good: every call to the cluster
has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regrow.chaos.tasks import probe

if TYPE_CHECKING:
    import psutil

    from regrow.chaos.report import Report
    from regrow.chaos.settings import SoakConfig
    from regrow.client.client import Client
    from regrow.deploy import LocalCluster
    from regrow.testing import VethLink


class Abort(Exception):
    """The soak cannot go on (the cluster is gone); the report says why."""


def call(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """``fn()`` in a helper thread, waited for at most ``timeout`` seconds: for client
    calls that take no timeout of their own (the soak must never block for good)."""
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=go, name=f"regrow-chaos-call-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} did not return within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _rss(proc: psutil.Process) -> int | None:
    import psutil

    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return None


class SoakCluster:
    """The soak's cluster, its client and the processes started for it."""

    def __init__(
        self, config: SoakConfig, report: Report, out: Callable[[str], None], tmp: Path
    ) -> None:
        self.cfg = config
        self.report = report
        self.out = out
        self.tmp = tmp
        self.local: LocalCluster | None = None
        self.client: Client | None = None
        self.link: VethLink | None = None
        self.netns_proc: subprocess.Popen[bytes] | None = None
        self.netns_env: dict[str, str] = {}
        self.netns_starts = 0
        self.netns_start_failures = 0
        self.seen: dict[int, tuple[str, psutil.Process]] = {}  # every process to be gone
        # While waiting for recovery: (seconds, workers the scheduler listed), as it changed.
        self.membership: list[tuple[float, str]] = []

    # ---------------------------------------------------------------- set up
    def open_link(self, stack: contextlib.ExitStack) -> None:
        """The network namespace and its veth pair, when asked for and possible (else
        the report says why there are no network cuts)."""
        from regrow.testing import VethUnavailable, veth_link

        if not self.cfg.netns:
            self.report.skipped["cut-network"] = "--no-netns"
            return
        try:
            self.link = stack.enter_context(veth_link("regrow-chaos", "rgc"))
        except VethUnavailable as exc:
            self.report.skipped["cut-network"] = f"network namespaces unavailable: {exc}"
            self.out(f"no network cuts: {exc}")
        else:
            self.out(
                f"network namespace {self.link.ns}: scheduler on {self.link.host_ip}, "
                f"one worker on {self.link.ns_ip}"
            )

    def start(self, stack: contextlib.ExitStack) -> Client:
        """The cluster (on the link's host address when there is a link), the worker in
        the namespace, and the client; each closed by ``stack``."""
        from regrow.client.client import Client
        from regrow.deploy import LocalCluster

        cfg = self.cfg
        host = self.link.host_ip if self.link is not None else "127.0.0.1"
        settings: dict[str, Any] = {
            "heartbeat_timeout": cfg.heartbeat_timeout,
            "allowed_failures": cfg.allowed_failures,
        }
        local = LocalCluster(
            n_workers=cfg.workers,
            threads_per_worker=1,
            host=host,
            journal=self.tmp / "journal.db",
            log_level=cfg.log_level,
            timeout=60.0,
            **settings,
        )
        self.local = local
        stack.callback(local.close)
        if self.link is not None:
            from regrow.testing import child_env

            self.netns_env = child_env(local.token, **settings)
            stack.callback(self._stop_netns_worker)
            self.start_netns_worker()
        self.client = client = Client(local, set_as_default=False, timeout=30)
        stack.callback(self._close_client)
        return client

    def _close_client(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close(timeout=5)

    # ------------------------------------------------------- the netns worker
    def start_netns_worker(self) -> None:
        """Start the worker inside the namespace, as an operator's supervisor would: a
        worker that cannot reach its scheduler at start exits (by design), which it does
        for a moment after the link comes back (EHOSTUNREACH until the neighbour entry
        that failed during the cut is resolved again); so try again, within a deadline."""
        from regrow.testing import regrow_cli, wait_ready

        assert self.link is not None and self.local is not None
        deadline = time.monotonic() + 60
        while True:
            self.netns_starts += 1
            name = f"netns-{self.netns_starts}"
            ready = self.tmp / f"{name}.ready"
            args = ["worker", self.local.scheduler_address, "--no-nanny", "--nthreads", "1"]
            args += ["--name", name, "--host", self.link.ns_ip]
            prefix = self.link.in_ns()
            self.netns_proc = proc = regrow_cli(args, self.netns_env, ready, prefix=prefix)
            self.note_process(proc.pid, "netns worker")
            try:
                wait_ready(proc, ready, timeout=max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:  # it exited
                if time.monotonic() > deadline:
                    raise
                self.netns_start_failures += 1
                self.out(
                    f"the netns worker {name} exited at start (code {proc.returncode}); "
                    "starting another"
                )

    def _stop_netns_worker(self) -> None:
        from regrow.testing import stop

        if self.netns_proc is not None:
            stop([self.netns_proc], timeout=5)

    def link_up(self) -> None:
        from regrow.testing import wait_until

        link = self.link
        assert link is not None
        r = subprocess.run(
            [link.ip, "link", "set", link.host_if, "up"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode != 0:
            raise Abort(f"could not restore the link {link.host_if}: {r.stderr.strip()}")
        wait_until(
            lambda: Path(f"/sys/class/net/{link.host_if}/operstate").read_text().strip() == "up",
            timeout=10,
            what="the veth pair is up again",
        )

    # ------------------------------------------------------------ processes
    def note_process(self, pid: int, role: str) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            if pid not in self.seen:
                self.seen[pid] = (role, psutil.Process(pid))

    def nannies(self) -> dict[int, Any]:
        """{pid: WorkerProcess} of the nannies our cluster started that still run."""
        assert self.local is not None
        out = {wp.pid: wp for wp in list(self.local.workers) if wp.proc.poll() is None}
        for pid in out:
            self.note_process(pid, "nanny")
        return out

    def info(self, timeout: float = 10.0) -> dict[str, Any]:
        client = self.client
        assert client is not None
        info: dict[str, Any] = call(client.scheduler_info, timeout, "scheduler_info")
        return info

    def workers(self) -> dict[str, dict[str, Any]]:
        workers: dict[str, dict[str, Any]] = self.info()["workers"]
        return workers

    def worker_count(self) -> int:
        return len(self.workers())

    def ours(self) -> list[dict[str, Any]]:
        """Workers the scheduler lists whose process is a child of one of our nannies."""
        import psutil

        nannies = self.nannies()
        out = []
        for w in self.workers().values():
            try:
                parent = psutil.Process(w["pid"]).ppid()
            except psutil.Error:
                continue
            if parent in nannies:
                self.note_process(w["pid"], "worker")
                out.append(w)
        return sorted(out, key=lambda w: str(w["name"]))

    def full_size(self) -> int:
        return self.cfg.workers + (1 if self.link is not None else 0)

    def wait_full(self, deadline: float, gone: set[int]) -> float:
        """Wait until the cluster is back at full size, with none of the pids in
        ``gone``, and a fresh probe task returns; when (monotonic) it had its size."""
        from regrow.testing import wait_until

        netns_pid = self.netns_proc.pid if self.netns_proc is not None else None
        start = time.monotonic()
        self.membership = []

        def full() -> bool:
            try:
                workers = list(self.workers().values())
                nannies = self.nannies()
            except Exception as exc:
                seen = f"scheduler_info failed: {type(exc).__name__}"
            else:
                seen = ", ".join(sorted(f"{w['name']}:{w['pid']}" for w in workers))
            if not self.membership or self.membership[-1][1] != seen:
                self.membership.append((round(time.monotonic() - start, 2), seen))
            if seen.startswith("scheduler_info failed"):
                return False
            pids = {w["pid"] for w in workers}
            return (
                len(workers) == self.full_size()
                and len(nannies) == self.cfg.workers
                and not pids & gone
                and (netns_pid is None or netns_pid in pids)
            )

        wait_until(
            full,
            timeout=max(0.0, deadline - time.monotonic()),
            interval=0.02,
            what=f"{self.full_size()} workers, none of pids {sorted(gone)}",
        )
        sized = time.monotonic()
        client = self.client
        assert client is not None
        nonce = random.getrandbits(40)
        fut = client.submit(probe, nonce, pure=False, priority=1_000_000)
        value = fut.result(timeout=max(0.01, deadline - time.monotonic()))
        if value != nonce + 1:
            raise Abort(f"the probe returned {value!r}, expected {nonce + 1}")
        return sized

    def memory(self) -> dict[str, Any]:
        import psutil

        assert self.local is not None
        rows: list[dict[str, Any]] = []

        def row(role: str, name: str, pid: int) -> None:
            try:
                rss = _rss(psutil.Process(pid))
            except psutil.Error:
                rss = None
            rows.append({"role": role, "name": name, "pid": pid, "rss": rss})

        if self.local.scheduler_proc is not None:
            row("scheduler", "scheduler", self.local.scheduler_proc.pid)
        for w in sorted(self.workers().values(), key=lambda w: str(w["name"])):
            row("worker", str(w["name"]), int(w["pid"]))
        for pid, wp in sorted(self.nannies().items()):
            row("nanny", wp.name, pid)
        row("client", "this process", os.getpid())
        return {"processes": rows}

    def record_descendants(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            for p in psutil.Process().children(recursive=True):
                self.seen.setdefault(p.pid, ("process", p))

    def check_leaks(self) -> None:
        """Every process the soak started (and every one those started) is gone."""
        import psutil

        from regrow.testing import wait_until

        def alive() -> list[tuple[int, str, psutil.Process]]:
            out = []
            for pid, (role, proc) in self.seen.items():
                try:
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        out.append((pid, role, proc))
                except psutil.Error:
                    pass
            return out

        try:
            wait_until(lambda: not alive(), timeout=15, what="every process of the soak exited")
        except TimeoutError:
            for pid, role, proc in alive():
                self.report.leaked.append(f"{role} pid {pid}: {' '.join(proc.cmdline()[:6])}")
                with contextlib.suppress(psutil.Error):
                    proc.kill()  # the same process (psutil checks its start time)
            self.out(f"LEAKED processes (killed now): {self.report.leaked}")
