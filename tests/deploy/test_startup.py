"""Start-up in any order, and addresses other hosts can use.

Workers, nannies and clients that come up before their scheduler (or while it restarts)
keep trying until their own timeout; then they fail with one line. A worker listening on
every interface registers an address its peers can reach, never 0.0.0.0."""

from __future__ import annotations

import contextlib
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from regrow import Client
from regrow.testing import (
    VethUnavailable,
    child_env,
    regrow_cli,
    stop,
    veth_link,
    wait_ready,
    wait_until,
)

from .tasks import add, double

EARLY = 3.0  # seconds a worker or client comes up before its scheduler


class Procs:
    """Processes a test starts with ``python -m regrow.cli``; all stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token = secrets.token_hex(16)
        self.env = child_env(self.token)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.n = 0

    def start(
        self, args: list[str], prefix: list[str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        self.n += 1
        ready = self.tmp / f"{args[0]}-{self.n}.ready"
        proc = regrow_cli(args, self.env, ready, prefix=prefix)
        self.procs.append(proc)
        return proc, ready

    def scheduler(self, port: int = 0, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
        proc, ready = self.start(["scheduler", "--port", str(port), *extra])
        return proc, wait_ready(proc, ready)

    def client(self, address: str, **kwargs: object) -> Client:
        return Client(address, token=self.token, set_as_default=False, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        stop(self.procs)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


def a_dead_address(procs: Procs) -> tuple[str, int]:
    """An address where a scheduler just was, killed: nothing listens there now."""
    proc, address = procs.scheduler()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return address, int(address.rsplit(":", 1)[1])


def still_alive_for(proc: subprocess.Popen[bytes], seconds: float) -> None:
    """The process keeps running (trying) for ``seconds``: what the test is about."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"it gave up after {seconds - (deadline - time.monotonic())} s"
        time.sleep(0.05)


@pytest.mark.parametrize("nanny", [True, False], ids=["nanny", "no-nanny"])
def test_a_worker_started_before_its_scheduler_registers_once_it_is_up(
    procs: Procs, nanny: bool
) -> None:
    address, port = a_dead_address(procs)
    args = ["worker", address, "--name", "early", "--timeout", "30"]
    worker, ready = procs.start(args if nanny else [*args, "--no-nanny"])
    still_alive_for(worker, EARLY)
    assert not ready.exists()
    _, again = procs.scheduler(port)
    assert again == address
    wait_ready(worker, ready)
    with procs.client(address) as client:
        client.wait_for_workers(1, timeout=10)
        (info,) = client.scheduler_info()["workers"].values()
        assert info["name"] == "early"
        assert client.submit(add, 1, 2).result(timeout=10) == 3


def test_a_client_started_before_its_scheduler_connects_once_it_is_up(procs: Procs) -> None:
    address, port = a_dead_address(procs)
    result: list[Client | BaseException] = []

    def connect() -> None:
        try:
            result.append(procs.client(address, timeout=30))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        wait_until(lambda: result, timeout=EARLY, what="(nothing: the client must wait)")
        pytest.fail(f"the client did not wait for its scheduler: {result}")
    except TimeoutError:
        pass
    procs.scheduler(port)
    worker, ready = procs.start(["worker", address])
    wait_ready(worker, ready)
    thread.join(timeout=30)
    (client,) = result
    assert isinstance(client, Client), client
    with client:
        assert client.submit(double, 21).result(timeout=10) == 42


def test_scheduler_file_in_any_order(procs: Procs, tmp_path: Path) -> None:
    """A batch job's order: workers and a client read the address from a shared file
    that the scheduler writes when it is up, maybe after they started."""
    path = tmp_path / "scheduler.json"
    worker, ready = procs.start(["worker", "--scheduler-file", str(path), "--name", "w"])
    still_alive_for(worker, 1.0)
    _, address = procs.scheduler(0, "--scheduler-file", str(path))
    wait_ready(worker, ready)
    with Client(scheduler_file=path, token=procs.token, set_as_default=False) as client:
        assert client.scheduler_address == address
        assert client.submit(add, 2, 3).result(timeout=10) == 5


def test_giving_up_after_the_timeout_is_one_line(procs: Procs) -> None:
    address, _ = a_dead_address(procs)
    started = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "regrow.cli",
            "worker",
            address,
            "--timeout",
            "1",
            "--log-level",
            "WARNING",
        ],
        env=procs.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - started
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"regrow: error: could not reach the scheduler at {address}")
    assert "within 1 s" in lines[0]
    assert took < 15
    started = time.monotonic()
    with pytest.raises(
        OSError, match=rf"could not reach a regrow scheduler at {address} within 1 s"
    ):
        procs.client(address, timeout=1)
    assert time.monotonic() - started < 5


def test_a_wrong_token_fails_at_once(procs: Procs) -> None:
    _, address = procs.scheduler()
    env = dict(procs.env, REGROW_TOKEN="not-the-token")
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "regrow.cli", "worker", address, "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1 and "token" in r.stderr, r.stderr
    assert time.monotonic() - started < 15  # not the 60 s of --timeout
    with pytest.raises(Exception, match="token"):
        Client(address, token="not-the-token", timeout=60, set_as_default=False)


def test_bad_address_flags_are_usage_errors(procs: Procs, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "regrow.cli", *args],
            env=procs.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    r = run("worker", "tcp://127.0.0.1:1", "--interface", "nosuch0")
    assert r.returncode == 2 and "no network interface 'nosuch0'" in r.stderr, r.stderr
    r = run("worker", "tcp://127.0.0.1:1", "--contact-address", "10.0.0.1:99")
    assert r.returncode == 2 and "host only" in r.stderr, r.stderr
    r = run("worker")
    assert r.returncode == 2 and "SCHEDULER_ADDRESS or --scheduler-file" in r.stderr, r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = run("worker", "--scheduler-file", str(bad))
    assert r.returncode == 2 and "not a scheduler file" in r.stderr, r.stderr
    r = run("scheduler", "--interface", "nosuch0")
    assert r.returncode == 2 and "no network interface" in r.stderr, r.stderr
    with pytest.raises(ValueError, match="not both"):
        Client("tcp://127.0.0.1:1", scheduler_file=bad)


def worker_addresses(client: Client) -> dict[str, str]:
    return {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}


def test_listening_everywhere_registers_a_reachable_address(procs: Procs) -> None:
    _, address = procs.scheduler()
    for name, extra in (
        ("everywhere", ["--host", "0.0.0.0"]),
        ("contact", ["--host", "0.0.0.0", "--contact-address", "127.0.0.2"]),
        ("interface", ["--interface", "lo"]),
    ):
        proc, ready = procs.start(["worker", address, "--name", name, *extra])
        wait_ready(proc, ready)
    with procs.client(address) as client:
        client.wait_for_workers(3, timeout=10)
        addrs = worker_addresses(client)
        assert addrs["everywhere"].startswith("tcp://127.0.0.1:"), addrs
        assert addrs["contact"].startswith("tcp://127.0.0.2:"), addrs
        assert addrs["interface"].startswith("tcp://127.0.0.1:"), addrs
        # Peers really reach each other there: every input crosses between workers.
        parts = [
            client.submit(double, i, workers=[name], pure=False)
            for i, name in enumerate(["everywhere", "contact", "interface"] * 2)
        ]
        total = client.submit(add, *parts, workers=["contact"])
        assert total.result(timeout=20) == 2 * sum(range(6))


def test_a_worker_in_another_namespace_advertises_its_own_address(procs: Procs) -> None:
    with contextlib.ExitStack() as stack:
        try:
            link = stack.enter_context(veth_link("regrow-start", "rgs"))
        except VethUnavailable as exc:
            pytest.skip(str(exc))
        _, address = procs.scheduler(0, "--host", link.host_ip)
        inside = procs.start(
            ["worker", address, "--name", "inside", "--host", "0.0.0.0"], prefix=link.in_ns()
        )
        here = procs.start(["worker", address, "--name", "here"])
        for proc, ready in (inside, here):
            wait_ready(proc, ready)
        with procs.client(address) as client:
            addrs = worker_addresses(client)
            assert addrs["inside"].startswith(f"tcp://{link.ns_ip}:"), addrs
            # Without --host, a worker listens where the route to the scheduler goes.
            assert addrs["here"].startswith(f"tcp://{link.host_ip}:"), addrs
            x = client.submit(double, 5, workers=["here"])
            y = client.submit(add, x, 1, workers=["inside"])
            assert y.result(timeout=20) == 11
        stop([p for p, _ in (inside, here)])


@pytest.mark.parametrize("nanny", [True, False], ids=["nanny", "no-nanny"])
def test_death_timeout_ends_a_worker_whose_scheduler_is_gone(procs: Procs, nanny: bool) -> None:
    """A batch job must not outlive its scheduler until its walltime: with
    --death-timeout it closes (its worker with it) once the scheduler stayed away."""
    scheduler, address = procs.scheduler()
    args = ["worker", address, "--death-timeout", "1"]
    worker, ready = procs.start(args if nanny else [*args, "--no-nanny"])
    wait_ready(worker, ready)
    with procs.client(address) as client:
        client.wait_for_workers(1, timeout=10)
        (info,) = client.scheduler_info()["workers"].values()
    pids = [worker.pid, info["pid"]]
    scheduler.send_signal(signal.SIGKILL)
    scheduler.wait()
    assert worker.wait(timeout=20) == 0
    wait_until(
        lambda: (
            not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
        ),
        timeout=10,
        what="the worker process exited with its nanny",
    )


def test_a_scheduler_listening_everywhere_gives_a_reachable_address(
    procs: Procs, tmp_path: Path
) -> None:
    path = tmp_path / "scheduler.json"
    _, address = procs.scheduler(0, "--host", "0.0.0.0", "--scheduler-file", str(path))
    assert not address.startswith("tcp://0.0.0.0"), address
    worker, ready = procs.start(["worker", "--scheduler-file", str(path), "--host", "0.0.0.0"])
    wait_ready(worker, ready)
    with Client(scheduler_file=path, token=procs.token, set_as_default=False) as client:
        assert client.scheduler_address == address
        assert client.submit(add, 20, 22).result(timeout=10) == 42
