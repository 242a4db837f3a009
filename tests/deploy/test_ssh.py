"""SSHCluster against real sshd servers: one scheduler host and two worker hosts, each a
network namespace running its own sshd (tests/deploy/sshd.py). Computes, survives a cut
link and a killed SSH session, scales past its host list, leaves nothing behind, and
fails fast with one clear line on bad input.

Needs root, iproute2 and openssh-server; skipped (with the reason) otherwise.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

from regrow import Client
from regrow.testing import wait_until

from .sshd import Keys, SSHHost, SSHUnavailable, check_available, ssh_hosts


@pytest.fixture(autouse=True, scope="module")
def _by_value() -> Iterator[None]:
    """The remote workers cannot import this module (tests/ is not on their path): its
    functions travel by value, while this module's tests run (a registration left in
    place would change how every later test's values are pickled)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


HEARTBEAT_TIMEOUT = 3.0


def square(x: int, seconds: float = 0.0) -> int:
    if seconds:
        time.sleep(seconds)
    return x * x


def total(*xs: int) -> int:
    return sum(xs)


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    try:
        check_available()
    except SSHUnavailable as exc:
        print(f"skipping the SSH tests: {exc}")
        pytest.skip(f"SSH tests: {exc}")
    return Keys.make(tmp_path_factory.mktemp("ssh-keys"))


@pytest.fixture
def hosts(keys: Keys, tmp_path: Path) -> Iterator[list[SSHHost]]:
    """Three hosts with sshd (scheduler, two workers) and a fourth with none."""
    try:
        with ssh_hosts(3, keys, tmp_path, bare=1) as made:
            yield made
    except SSHUnavailable as exc:
        print(f"skipping the SSH tests: {exc}")
        pytest.skip(f"SSH tests: {exc}")


Make = Callable[..., "tuple[Any, Client]"]


@pytest.fixture
def make_cluster(keys: Keys, hosts: list[SSHHost]) -> Iterator[Make]:
    """``make_cluster(**SSHCluster keywords) -> (cluster, client)`` on the three sshd
    hosts; both closed at teardown, whatever happened."""
    from regrow.deploy.ssh import SSHCluster

    made: list[tuple[SSHCluster, Client]] = []

    def make(**kwargs: Any) -> tuple[SSHCluster, Client]:
        kwargs.setdefault("connect_options", keys.connect_options())
        kwargs.setdefault("heartbeat_timeout", HEARTBEAT_TIMEOUT)
        kwargs.setdefault("scheduler_options", {"log_level": "WARNING"})
        kwargs.setdefault("worker_options", {"log_level": "WARNING"})
        cluster = SSHCluster([h.address for h in hosts[:3]], **kwargs)
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        made.append((cluster, client))
        return cluster, client

    yield make
    for cluster, client in reversed(made):
        with contextlib.suppress(Exception):
            client.close()
        cluster.close()


def worker_names(client: Client) -> dict[str, str]:
    """``{name: address}`` of the workers the scheduler lists."""
    return {str(w["name"]): a for a, w in client.scheduler_info()["workers"].items()}


def running(pids: set[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def regrow_pids(hosts: list[SSHHost]) -> set[int]:
    return {p.pid for h in hosts for p in h.regrow_processes()}


def secrets_dirs() -> set[str]:
    return set(glob.glob("/tmp/regrow-ssh.*"))


def token_dir(host: SSHHost) -> str:
    """The secrets directory the host's regrow processes read their token from."""
    [path] = {
        args[args.index("--token-file") + 1]
        for args in (p.cmdline() for p in host.regrow_processes())
        if "--token-file" in args
    }
    return os.path.dirname(path)


# ------------------------------------------------------------------- tests
def test_computes_a_graph_on_two_worker_hosts(make_cluster: Make, hosts: list[SSHHost]) -> None:
    cluster, client = make_cluster()
    names = worker_names(client)
    assert sorted(names) == sorted(cluster._unit_names())
    # One worker on each worker host, listening on the address it was reached by.
    for h in hosts[1:3]:
        [addr] = [a for n, a in names.items() if n.startswith(f"{h.address}-")]
        assert h.address in addr
    assert cluster.scheduler_address.startswith(f"tcp://{hosts[0].address}:")
    assert [len(h.regrow_processes()) > 0 for h in hosts[:3]] == [True, True, True]

    futs = client.map(square, range(200))
    assert client.submit(total, *futs).result(timeout=30) == sum(x * x for x in range(200))
    dsk = {"a": 1, "b": (inc, "a"), "c": (add, "a", "b"), "d": (total, "a", "b", "c")}
    assert client.get(dsk, ["c", "d"]) == [3, 6]
    # Both hosts did work.
    holders = {a for addrs in client.who_has(futs).values() for a in addrs}
    assert len(holders) == 2
    logs = cluster.get_logs()
    assert set(logs) == {"scheduler", *names}
    # The token never shows on a command line.
    assert cluster.token
    for p in (p for h in hosts for p in h.regrow_processes()):
        assert cluster.token not in " ".join(p.cmdline())


def test_survives_a_worker_hosts_link_going_down(
    make_cluster: Make, keys: Keys, hosts: list[SSHHost], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="regrow.deploy")
    # Results stay on their workers (none inline), so those on the cut host are lost
    # and must be recomputed; keepalives notice the dead link within ~2 s.
    options = keys.connect_options(keepalive_interval=0.5, keepalive_count_max=3)
    cluster, client = make_cluster(
        connect_options={**options, "connect_timeout": 2}, inline_result_bytes=0
    )
    cut = hosts[2]
    [victim] = [n for n in worker_names(client) if n.startswith(f"{cut.address}-")]
    old = {p.pid for p in cut.regrow_processes()}
    futs = client.map(square, range(60), seconds=0.05)
    wait_until(
        lambda: (
            (w := client.scheduler_info()["workers"].get(worker_names(client)[victim])) is not None
            and w["nkeys"] >= 3
        ),
        timeout=30,
        what="the worker on the host to cut holds results",
    )
    cut.link.cut()
    assert client.gather(futs) == [x * x for x in range(60)]
    assert client.submit(total, *futs).result(timeout=30) == sum(x * x for x in range(60))
    wait_until(
        lambda: victim not in worker_names(client),
        timeout=HEARTBEAT_TIMEOUT + 10,
        what="the cut worker is removed",
    )
    # The cluster noticed its session is gone and keeps trying to start a new one.
    wait_until(
        lambda: f"worker {victim} on {cut.address}" in caplog.text,
        timeout=15,
        what="the lost session is noticed",
    )
    assert len(cluster._unit_names()) == 2

    # The link comes back: the cluster reconnects and has two workers again; the old
    # processes are gone (sshd dropped their silent session, or the new unit stopped them).
    cut.restore()

    def back_to_two() -> bool:
        names = set(worker_names(client))
        return len(names) == 2 and victim not in names and names == set(cluster._unit_names())

    wait_until(back_to_two, timeout=30, what="two workers again")
    wait_until(lambda: not running(old), timeout=15, what="the old processes exit")
    assert client.submit(total, *client.map(inc, range(10))).result(timeout=30) == 55

    # Cut again and close at once: close() is not held up by the unreachable host.
    dirs = [token_dir(h) for h in hosts[:3]]
    cut.link.cut()
    started = time.monotonic()
    cluster.close(timeout=4)
    assert time.monotonic() - started < 7
    assert not hosts[0].regrow_processes() and not hosts[1].regrow_processes()
    # The reachable hosts' secrets are removed; the cut one keeps its own (the test
    # removes it: it is this machine's /tmp too).
    assert [os.path.exists(d) for d in dirs] == [False, False, True]
    shutil.rmtree(dirs[2])


def test_survives_a_killed_ssh_session(make_cluster: Make, hosts: list[SSHHost]) -> None:
    cluster, client = make_cluster()
    host = hosts[1]
    [victim] = [n for n in worker_names(client) if n.startswith(f"{host.address}-")]
    # The process the session started (the nanny): its parent is sshd's session process.
    [top] = [p for p in host.regrow_processes() if (pp := p.parent()) and pp.name() == "sshd"]
    assert victim in top.cmdline()
    session = host.session_of(top)
    old = {p.pid for p in host.regrow_processes()}
    futs = client.map(square, range(60), seconds=0.05)
    wait_until(lambda: sum(f.done() for f in futs) >= 5, timeout=30, what="some results")
    session.kill()  # SIGKILL to the sshd process of that one session, by PID
    assert client.gather(futs) == [x * x for x in range(60)]
    # Its processes saw their parent go and exited; a new unit took its place.
    wait_until(lambda: not running(old), timeout=15, what="the session's processes exit")

    def back_to_two() -> bool:
        names = set(worker_names(client))
        return len(names) == 2 and victim not in names and names == set(cluster._unit_names())

    wait_until(back_to_two, timeout=30, what="two workers again")
    assert sum(n.startswith(f"{host.address}-") for n in worker_names(client)) == 1
    assert client.submit(total, *client.map(inc, range(10))).result(timeout=30) == 55


def test_scale_past_the_host_list_and_close_leaves_nothing(
    make_cluster: Make, hosts: list[SSHHost]
) -> None:
    before = secrets_dirs()
    cluster, client = make_cluster()
    cluster.scale(3)
    cluster.wait_for_workers(3, timeout=30)
    names = worker_names(client)
    assert len(names) == 3
    # The third worker went round the list again: to the first worker host.
    assert sum(n.startswith(f"{hosts[1].address}-") for n in names) == 2
    futs = client.map(square, range(30), seconds=0.01)
    assert client.submit(total, *futs).result(timeout=30) == sum(x * x for x in range(30))
    del futs
    cluster.scale(1)
    wait_until(lambda: len(worker_names(client)) == 1, timeout=30, what="scaled down to 1")
    assert len(cluster._unit_names()) == 1
    cluster.scale(2)
    cluster.wait_for_workers(2, timeout=30)

    pids = regrow_pids(hosts)
    made = secrets_dirs() - before
    assert len(made) == 3  # one per host, 0700
    assert all(os.stat(d).st_mode & 0o777 == 0o700 for d in made)
    assert all(os.stat(f"{d}/token").st_mode & 0o777 == 0o600 for d in made)
    client.close()
    started = time.monotonic()
    cluster.close()
    assert time.monotonic() - started < 10
    # close() saw every process exit: none left, by recorded pid or under any sshd.
    assert running(pids) == []
    assert regrow_pids(hosts) == set()
    assert [h.processes() for h in hosts] == [[], [], [], []]
    assert not (secrets_dirs() & made)
    assert set(cluster.get_logs()) >= {"scheduler", *names}


def test_tls(make_cluster: Make, hosts: list[SSHHost]) -> None:
    cluster, client = make_cluster(security=True, scheduler_options={}, worker_options={})
    assert cluster.scheduler_address.startswith("tls://")
    assert client.submit(total, *client.map(inc, range(10))).result(timeout=30) == 55
    # At the default level (INFO), each process's log reaches get_logs().
    logs = cluster.get_logs()
    assert "registered" in logs["scheduler"]
    assert all(logs[name] for name in cluster._unit_names())


# --------------------------------------------------------------- bad input
def test_unknown_option_is_refused_before_connecting(keys: Keys) -> None:
    from regrow.deploy.ssh import SSHCluster

    with pytest.raises(ValueError, match="unknown worker_options key 'nthread'"):
        SSHCluster(["h0", "h1"], worker_options={"nthread": 2})
    with pytest.raises(ValueError, match="unknown scheduler_options key 'name'"):
        SSHCluster(["h0", "h1"], scheduler_options={"name": "x"})
    with pytest.raises(ValueError, match="at least two hosts"):
        SSHCluster(["h0"])
    with pytest.raises(ValueError, match="connect_options has 1 entries for 2 hosts"):
        SSHCluster(["h0", "h1"], connect_options=[{}])


@pytest.mark.parametrize(
    "case", ["worker-host-down", "scheduler-host-down", "auth", "no-python", "bad-scheduler"]
)
def test_bad_input_fails_fast_with_one_line(case: str, keys: Keys, hosts: list[SSHHost]) -> None:
    from regrow.deploy.ssh import SSHCluster

    up, bare = hosts[0], hosts[3]
    addresses = [up.address, hosts[1].address]
    kwargs: dict[str, Any] = {"connect_options": keys.connect_options(), "timeout": 20}
    if case == "worker-host-down":
        addresses, match = (
            [up.address, bare.address],
            f"connect to {bare.address} port 22: Connection refused$",
        )
    elif case == "scheduler-host-down":
        addresses, match = (
            [bare.address, up.address],
            f"connect to {bare.address} port 22: Connection refused$",
        )
    elif case == "auth":
        kwargs["connect_options"] = keys.connect_options(client_keys=[str(keys.stranger_key)])
        match = f"log in to {up.address}: Permission denied"
    elif case == "no-python":
        kwargs["remote_python"] = "/nonexistent/python3"
        match = f"scheduler on {up.address} exited with code 127 while starting: .*not found"
    else:
        kwargs["scheduler_options"] = {"journal": "/nonexistent/dir/journal.db"}
        match = f"scheduler on {up.address} exited with code 1 while starting: .*journal"
    before = secrets_dirs()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=match) as info:
        SSHCluster(addresses, **kwargs)
    assert time.monotonic() - started < 10
    assert "\n" not in str(info.value)
    # Nothing left behind: no process, no secrets directory.
    assert [h.processes() for h in hosts] == [[], [], [], []]
    assert secrets_dirs() == before


def test_the_remote_command_keeps_every_word_and_watches_the_session(tmp_path: Path) -> None:
    """What the remote login shell runs: the words arrive whole, the settings are in the
    environment, the pid comes first, and the parent to watch is the shell's own parent
    (there, the session's sshd; here, this process)."""
    from regrow.deploy.ssh import WORKER_FLAGS, cli_flags, remote_command

    flags = cli_flags({"nthreads": 2, "memory_limit": "1GB", "nanny": False}, WORKER_FLAGS, "k")
    assert flags == ["--nthreads", "2", "--memory-limit", "1GB", "--no-nanny"]
    fake = tmp_path / "my python"
    fake.write_text(
        '#!/bin/sh\necho "pid $$"\nfor a in "$@"; do echo "[$a]"; done\necho "$REGROW_X"\n'
    )
    fake.chmod(0o755)
    command = remote_command(str(fake), ["worker", "--name", "it's a $name"], {"REGROW_X": "1 2"})
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    lines = out.stdout.splitlines()
    pid = lines[0].split()[1]
    assert lines == [
        f"regrow-pid {pid}",
        f"pid {pid}",  # exec all the way: one process
        "[-m]", "[regrow.cli]", "[worker]", "[--name]", "[it's a $name]",
        "[--parent-pid]", f"[{os.getpid()}]",
        "1 2",
    ]  # fmt: skip
