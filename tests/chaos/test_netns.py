"""A network cut: one worker lives in its own Linux network namespace, joined to the
host by a veth pair; taking the host side of the link down makes it silent (no FIN, no
RST), so only the heartbeat timeout can tell the scheduler it is gone."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from regrow import Client
from regrow.testing import wait_until

from .helpers import (
    StillBroken,
    child_env,
    lost_events,
    regrow_cli,
    stop,
    wait_ready,
    workers,
)
from .tasks import add, slow_inc

# This test's own private /30: host side .1, namespace side .2.
HOST_IP = "10.213.7.1"
NS_IP = "10.213.7.2"
PREFIX = 30
HEARTBEAT_TIMEOUT = 3.0


@dataclass
class NetNS:
    ip: str  # path of the ip command
    name: str  # the namespace
    host_if: str  # host end of the veth pair
    ns_if: str  # namespace end

    def cut(self) -> None:
        _ip(self.ip, "link", "set", self.host_if, "down", check=True)


def _ip(ip: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@pytest.fixture
def netns() -> Iterator[NetNS]:
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are a Linux feature")
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("iproute2's 'ip' command is not installed")
    used = _ip(ip, "-4", "-o", "addr", "show", "to", f"{HOST_IP}/{PREFIX}")
    if used.returncode == 0 and used.stdout.strip():
        pytest.skip(f"{HOST_IP}/{PREFIX} is already in use here: {used.stdout.strip()}")
    tag = f"{os.getpid() % 100_000}"
    ns = NetNS(ip=ip, name=f"regrow-chaos-{tag}", host_if=f"rgc{tag}h", ns_if=f"rgc{tag}n")
    created_ns = created_link = False
    try:
        r = _ip(ip, "netns", "add", ns.name)
        if r.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
        created_ns = True
        r = _ip(ip, "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        if r.returncode != 0:
            pytest.skip(f"cannot create a veth pair: {r.stderr.strip()}")
        created_link = True
        inside = ["netns", "exec", ns.name, ip]
        for args in (
            ["link", "set", ns.ns_if, "netns", ns.name],
            ["addr", "add", f"{HOST_IP}/{PREFIX}", "dev", ns.host_if],
            ["link", "set", ns.host_if, "up"],
            [*inside, "addr", "add", f"{NS_IP}/{PREFIX}", "dev", ns.ns_if],
            [*inside, "link", "set", ns.ns_if, "up"],
            [*inside, "link", "set", "lo", "up"],
        ):
            r = _ip(ip, *args)
            if r.returncode != 0:
                pytest.skip(f"'ip {' '.join(args)}' failed: {r.stderr.strip()}")
        yield ns
    finally:
        # Deleting the namespace deletes its end of the pair, and with it the pair.
        if created_ns:
            _ip(ip, "netns", "del", ns.name)
        if created_link:
            _ip(ip, "link", "del", ns.host_if)  # fails harmlessly if already gone
        wait_until(
            lambda: (
                ns.host_if not in _ip(ip, "-o", "link", "show").stdout
                and ns.name not in _ip(ip, "netns", "list").stdout
            ),
            timeout=10,
            what="the namespace and the veth pair are gone",
        )


class Processes:
    """A scheduler on the host side of the link and workers on either side, all started
    by this test (``python -m regrow.cli``); ``close()`` stops every one of them."""

    def __init__(self, netns: NetNS, tmp_path: Path, **settings: object) -> None:
        self.netns = netns
        self.tmp = tmp_path
        self.token = secrets.token_hex(16)
        self.env = child_env(self.token, heartbeat_timeout=HEARTBEAT_TIMEOUT, **settings)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            self.address = self._start("scheduler", ["scheduler", "--host", HOST_IP, "--port", "0"])
        except BaseException:
            self.close()
            raise
        assert self.address.startswith(f"tcp://{HOST_IP}:")

    def _start(self, name: str, args: list[str], prefix: list[str] | None = None) -> str:
        ready = self.tmp / f"{name}.ready"
        self.procs[name] = proc = regrow_cli(args, self.env, ready, prefix=prefix)
        return wait_ready(proc, ready)

    def worker(self, name: str, inside: bool) -> str:
        """Start a worker (no nanny) named ``name``, in the namespace or on the host."""
        args = ["worker", self.address, "--no-nanny", "--nthreads", "1", "--name", name]
        if inside:
            prefix = [self.netns.ip, "netns", "exec", self.netns.name]
            address = self._start(name, [*args, "--host", NS_IP], prefix=prefix)
            assert address.startswith(f"tcp://{NS_IP}:")
            return address
        return self._start(name, [*args, "--host", HOST_IP])

    def client(self) -> Client:
        return Client(self.address, token=self.token, set_as_default=False)

    def close(self) -> None:
        stop(list(self.procs.values()))


def wait_removed(client: Client, worker: str, since: float) -> float:
    """Wait until the scheduler has removed ``worker``; seconds it took from ``since``
    (time.monotonic())."""
    wait_until(
        lambda: worker not in workers(client),
        timeout=HEARTBEAT_TIMEOUT + 15,
        interval=0.02,
        what=f"{worker} is removed",
    )
    return time.monotonic() - since


def test_network_cut(netns: NetNS, tmp_path: Path) -> None:
    cluster = Processes(netns, tmp_path)
    try:
        inside = cluster.worker("inside", inside=True)
        outside = cluster.worker("outside", inside=False)
        with cluster.client() as client:
            wait_until(lambda: len(workers(client)) == 2, timeout=30, what="both workers")
            start = time.time()
            futs = client.map(slow_inc, range(80), seconds=0.05)
            wait_until(
                lambda: (
                    (w := workers(client).get(inside)) is not None
                    and w["nkeys"] >= 3
                    and w["processing"] >= 1
                ),
                timeout=30,
                what="the namespaced worker holds results and is working",
            )
            netns.cut()
            gone_after = wait_removed(client, inside, since=time.monotonic())
            assert gone_after <= HEARTBEAT_TIMEOUT + 1.5, gone_after
            # It was its silence that was noticed, not its death: it still runs.
            assert cluster.procs["inside"].poll() is None
            wait_until(lambda: lost_events(client, since=start), timeout=5, what="a 'lost' event")
            lost = lost_events(client, since=start)
            assert len(lost) == 1 and inside in lost[0] and "no heartbeat" in lost[0], lost
            # Everything finishes on the worker that is still reachable.
            assert client.gather(futs, timeout=60) == list(range(1, 81))
            assert set(map(tuple, client.who_has(futs).values())) == {(outside,)}
    finally:
        cluster.close()


def test_network_cut_during_fetch(netns: NetNS, tmp_path: Path) -> None:
    """A worker that was fetching from the cut-off peer gets the input from its new
    holder once the scheduler has recomputed it there."""
    # One task per worker at a time, so placement follows restrictions and free slots.
    cluster = Processes(netns, tmp_path, worker_saturation=1.0)
    try:
        inside = cluster.worker("inside", inside=True)
        fetcher = cluster.worker("fetcher", inside=False)
        with cluster.client() as client:
            wait_until(lambda: len(workers(client)) == 2, timeout=30, what="both workers")
            # `k` can run on 'inside' or on 'spare' (which does not exist yet).
            k = client.submit(slow_inc, 1, 0.0, workers=["inside", "spare"])
            assert k.result(timeout=30) == 2
            assert client.who_has(k)[k.key] == [inside]
            # The fetcher now holds a pooled connection to 'inside'.
            warm = client.submit(slow_inc, 10, 0.0, workers=["inside"])
            assert client.submit(add, warm, 1, workers=["fetcher"]).result(timeout=30) == 12
            spare = cluster.worker("spare", inside=False)
            wait_until(lambda: len(workers(client)) == 3, timeout=30, what="three workers")

            netns.cut()
            cut_at = time.monotonic()
            # The scheduler still believes 'inside' holds k: the fetcher asks it, over the
            # pooled connection, and gets no answer.
            dependent = client.submit(add, k, 100, workers=["fetcher"])
            wait_removed(client, inside, since=cut_at)
            # k is recomputed on 'spare' (the only worker it may run on) ...
            wait_until(lambda: client.who_has(k)[k.key] == [spare], timeout=30, what="k on spare")
            # ... and the fetcher should now get it from there.
            try:
                value = dependent.result(timeout=6)
            except TimeoutError:
                raise StillBroken(
                    f"the dependent is stuck on 'fetcher' although k is on 'spare': "
                    f"{workers(client)[fetcher]['processing']} processing there"
                ) from None
            assert value == 102
            assert fetcher in workers(client)
    finally:
        cluster.close()
