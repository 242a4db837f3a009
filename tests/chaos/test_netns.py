"""A network cut: one worker lives in its own Linux network namespace, joined to the
host by a veth pair; taking the host side of the link down makes it silent (no FIN, no
RST), so only the heartbeat timeout can tell the scheduler it is gone."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from regrow import Client
from regrow.testing import VethLink, VethUnavailable, veth_link, wait_until

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

HEARTBEAT_TIMEOUT = 3.0


@pytest.fixture
def netns() -> Iterator[VethLink]:
    with contextlib.ExitStack() as stack:
        try:
            link = stack.enter_context(veth_link("regrow-chaos", "rgc"))
        except VethUnavailable as exc:
            pytest.skip(str(exc))
        yield link


class Processes:
    """A scheduler on the host side of the link and workers on either side, all started
    by this test (``python -m regrow.cli``); ``close()`` stops every one of them."""

    def __init__(self, netns: VethLink, tmp_path: Path, **settings: object) -> None:
        self.netns = netns
        self.tmp = tmp_path
        self.token = secrets.token_hex(16)
        self.env = child_env(self.token, heartbeat_timeout=HEARTBEAT_TIMEOUT, **settings)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            self.address = self._start(
                "scheduler", ["scheduler", "--host", netns.host_ip, "--port", "0"]
            )
        except BaseException:
            self.close()
            raise
        assert self.address.startswith(f"tcp://{netns.host_ip}:")

    def _start(self, name: str, args: list[str], prefix: list[str] | None = None) -> str:
        ready = self.tmp / f"{name}.ready"
        self.procs[name] = proc = regrow_cli(args, self.env, ready, prefix=prefix)
        return wait_ready(proc, ready)

    def worker(self, name: str, inside: bool) -> str:
        """Start a worker (no nanny) named ``name``, in the namespace or on the host."""
        args = ["worker", self.address, "--no-nanny", "--nthreads", "1", "--name", name]
        if inside:
            ns_ip = self.netns.ns_ip
            address = self._start(name, [*args, "--host", ns_ip], prefix=self.netns.in_ns())
            assert address.startswith(f"tcp://{ns_ip}:")
            return address
        return self._start(name, [*args, "--host", self.netns.host_ip])

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


def test_network_cut(netns: VethLink, tmp_path: Path) -> None:
    # Results stay with their workers only: those held inside are lost with the link.
    cluster = Processes(netns, tmp_path, inline_result_bytes=0)
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


def test_network_cut_during_fetch(netns: VethLink, tmp_path: Path) -> None:
    """A worker that was fetching from the cut-off peer gets the input from its new
    holder once the scheduler has recomputed it there."""
    # One task per worker at a time, so placement follows restrictions and free slots.
    # Results stay with their workers only, so the dependent must fetch its input.
    cluster = Processes(
        netns, tmp_path, worker_saturation=1.0, worker_queue_seconds=0.0, inline_result_bytes=0
    )
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
