"""Bad input from peers, callers and the command line: refused clearly, and the
scheduler keeps serving everyone else.

The scheduler here is a process of its own, started with the CLI, whose stderr (its
log) the tests read.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from regrow import (
    AuthenticationError,
    Client,
    as_completed,
    wait,
)
from regrow.protocol import handshake
from regrow.protocol.comm import parse_address
from regrow.protocol.framing import FrameDecoder, encode_packet
from regrow.protocol.messages import Msg, pack_messages, unpack_messages
from regrow.scheduler import Scheduler
from regrow.testing import wait_until
from regrow.worker import Worker

from .tasks import inc

TOKEN = "the-right-token"
REGROW = str(Path(sys.executable).parent / "regrow")


def _env(token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGROW_")}
    if token is not None:
        env["REGROW_TOKEN"] = token
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start(args: list[str], ready: Path, log: Path, token: str | None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "regrow.cli",
                *args,
                "--ready-file",
                str(ready),
                "--parent-pid",
                str(os.getpid()),
                "--log-level",
                "INFO",
            ],
            env=_env(token),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_until(ready.exists, timeout=30, what=f"{args[0]} ready")
    except TimeoutError:
        _stop(proc)
        raise
    return proc


@dataclass
class Server:
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, *parts: str) -> str:
        """The first log line holding every one of ``parts`` (waits for it)."""
        found: list[str] = []

        def check() -> bool:
            found[:] = [ln for ln in self.log().splitlines() if all(p in ln for p in parts)]
            return bool(found)

        wait_until(check, timeout=10, what=f"a scheduler log line with {parts}")
        return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A scheduler process (token TOKEN) with one worker process."""
    d = tmp_path_factory.mktemp("bad-input")
    sched = _start(["scheduler", "--port", "0"], d / "s.ready", d / "s.log", TOKEN)
    worker = None
    try:
        address = (d / "s.ready").read_text().strip()
        worker = _start(
            ["worker", address, "--no-nanny", "--name", "w"], d / "w.ready", d / "w.log", TOKEN
        )
        yield Server(address, d / "s.log")
    finally:
        if worker is not None:
            _stop(worker)
        _stop(sched)
    # All that bad input was handled: logged as warnings, never as a crash.
    log = (d / "s.log").read_text(errors="replace") + (d / "w.log").read_text(errors="replace")
    print(log)
    assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture(scope="module")
def good(server: Server) -> Iterator[Client]:
    """A well-behaved client, connected before any bad input arrives."""
    with Client(server.address, token=TOKEN, set_as_default=False, timeout=10) as c:
        assert c.submit(operator.add, 1, 2).result(timeout=30) == 3
        yield c


def still_serving(good: Client) -> None:
    assert good.submit(operator.mul, 6, 7, pure=False).result(timeout=30) == 42
    assert len(good.scheduler_info()["workers"]) == 1


class RawPeer:
    """A hand-driven TCP connection to a regrow server."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_connection(parse_address(address), timeout=10)
        self.port = self.sock.getsockname()[1]
        self.peer = f"tcp://127.0.0.1:{self.port}"
        self.decoder = FrameDecoder(max_frames=1 << 20, max_frame_bytes=1 << 30)
        self.inbox: list[Msg] = []

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *msgs: Msg) -> None:
        bufs = encode_packet(pack_messages([(m, []) for m in msgs]))
        self.send_raw(b"".join(bytes(b) for b in bufs))

    def recv(self) -> Msg:
        while not self.inbox:
            while not self.decoder.packets:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("the server closed the connection")
                self.decoder.feed(data)
            self.inbox.extend(m for m, _ in unpack_messages(self.decoder.packets.popleft()))
        return self.inbox.pop(0)

    def dropped(self) -> bool:
        """Read until the server closes the connection (True) or 10 s pass (error)."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return True
            if not data:
                return True

    def handshake(self, token: str | None) -> Msg:
        hello = self.recv()
        assert hello["op"] == "hello"
        cnonce = handshake.new_nonce()
        mac = handshake.client_mac(token, hello["nonce"], cnonce)
        self.send({"op": "auth", "nonce": cnonce, "mac": mac})
        reply = self.recv()
        if reply["op"] == "welcome":
            assert handshake.verify(
                handshake.server_mac(token, hello["nonce"], cnonce), reply["mac"]
            )
        return reply


# ------------------------------------------------------------------ tokens


def test_wrong_token_is_refused(server: Server, good: Client) -> None:
    for token in ("wrong", None):
        env_token = os.environ.pop("REGROW_TOKEN", None)
        try:
            with pytest.raises(AuthenticationError, match="refused"):
                Client(server.address, token=token, set_as_default=False, timeout=10)
        finally:
            if env_token is not None:
                os.environ["REGROW_TOKEN"] = env_token
    line = server.wait_for_log("rejected connection from tcp://127.0.0.1:", "wrong token")
    assert "WARNING" in line
    still_serving(good)


def test_wrong_token_raw(server: Server, good: Client) -> None:
    with RawPeer(server.address) as peer:
        reply = peer.handshake("not it")
        assert reply == {"op": "denied", "reason": "wrong token"}
        assert peer.dropped()
    server.wait_for_log(f"rejected connection from {peer.peer}", "wrong token")
    still_serving(good)


def test_right_token_raw_handshake_then_register(server: Server) -> None:
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "register-client", "client": "raw-client"})
        assert peer.recv()["op"] == "registered"
        peer.send({"op": "ping", "rid": 1})
        assert peer.recv() == {"op": "reply", "rid": 1}


# ----------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\xde\xad\xbe\xef" * 8, "packet announces"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "packet announces"),
        (struct.pack("!IQ", 1, 1 << 20), "exceeds the limit"),
        (struct.pack("!I", 0), "packet announces 0 frames"),
        (b"".join(encode_packet([b"\xc1\xc1\xc1"])), "undecodable message header"),
        (b"".join(encode_packet([b"\x93\x01\x02\x03"])), "not a [message, n_frames] pair"),
    ],
)
def test_garbage_before_auth_is_dropped_and_logged(
    server: Server, good: Client, garbage: bytes, reason: str
) -> None:
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        peer.send_raw(garbage)
        assert peer.dropped()
    line = server.wait_for_log(f"dropping connection from {peer.peer}", reason)
    assert "WARNING" in line
    still_serving(good)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"op": "register-client", "client": "sneaky"}, "expected 'auth'"),
        ({"op": "auth", "nonce": "text", "mac": b"x"}, "field 'nonce' should be bytes"),
        ({"op": "auth", "mac": b"x"}, "lacks field 'nonce'"),
    ],
)
def test_wrong_messages_before_auth(server: Server, good: Client, msg: Msg, reason: str) -> None:
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        peer.send(msg)
        assert peer.dropped()
    server.wait_for_log(f"rejected connection from {peer.peer}", reason)
    still_serving(good)


def test_bad_messages_after_auth(server: Server, good: Client) -> None:
    # A first message that registers nothing: dropped.
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "make-me-admin"})
        reply = peer.recv()
        assert reply["op"] == "error" and "register" in reply["error"]
        assert peer.dropped()
    server.wait_for_log(f"dropping {peer.peer}", "first message must register")
    # A registered client sending nonsense gets error replies and stays connected.
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "register-client", "client": "raw-nonsense"})
        assert peer.recv()["op"] == "registered"
        peer.send({"op": "no-such-op", "rid": 7})
        reply = peer.recv()
        assert reply["rid"] == 7 and "no-such-op" in reply["error"]
        peer.send({"op": "who-has", "keys": "not a list", "rid": 8})
        reply = peer.recv()
        assert reply["rid"] == 8 and "keys" in reply["error"]
        peer.send(
            {
                "op": "submit",
                "tasks": [{"k": "x", "nf": 5, "fnf": 1, "d": []}],
                "wanted": ["x"],
                "rid": 9,
            }
        )
        assert "frame counts" in peer.recv()["error"]
        peer.send({"op": "missing-data", "missing": {"x": "not a list"}, "rid": 11})
        assert "missing-data" in peer.recv()["error"]
        peer.send({"op": "ping", "rid": 10})
        assert peer.recv() == {"op": "reply", "rid": 10}
    server.wait_for_log("bad message from client raw-nonsense", "no-such-op")
    still_serving(good)


def test_bad_task_report_from_a_worker(server: Server, good: Client) -> None:
    """A worker's report whose small result is not bytes: logged, and nothing else changes."""
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "register-worker", "address": "tcp://127.0.0.1:9", "nthreads": 1})
        assert peer.recv()["op"] == "registered"
        peer.send({"op": "task-finished", "key": "k", "run": 1, "nbytes": 8, "inline": "not bytes"})
        server.wait_for_log("bad message from worker tcp://127.0.0.1:9", "'inline' must be bytes")
    wait_until(
        lambda: len(good.scheduler_info()["workers"]) == 1, timeout=10, what="the raw worker gone"
    )
    still_serving(good)


def test_connection_closed_in_the_middle_of_a_message(server: Server, good: Client) -> None:
    # Before authentication: a packet prefix announcing a frame, then nothing.
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        peer.send_raw(struct.pack("!IQ", 1, 100) + b"half")
    server.wait_for_log(f"connection from {peer.peer}", "in the middle of a message")
    # After authentication and registration, half of a big message.
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "register-client", "client": "raw-half"})
        assert peer.recv()["op"] == "registered"
        whole = b"".join(
            bytes(b)
            for b in encode_packet(pack_messages([({"op": "ping", "rid": 1}, [b"x" * 1_000_000])]))
        )
        peer.send_raw(whole[: len(whole) // 2])
    server.wait_for_log(f"connection from {peer.peer}", "in the middle of a message")
    still_serving(good)


def test_silent_peer_does_not_block_others(server: Server, good: Client) -> None:
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        still_serving(good)  # while a handshake is left hanging


# ------------------------------------------------ a server that misbehaves


class FakeServer:
    """Accepts one connection on loopback, writes ``payload``, then closes it."""

    def __init__(self, payload: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.payload = payload
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.payload)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        struct.pack("!IQ", 1, 50) + b"cut short",
    ],
)
def test_client_to_a_server_that_is_not_regrow(payload: bytes) -> None:
    with FakeServer(payload) as fake, pytest.raises(OSError, match="could not connect"):
        Client(fake.address, token=TOKEN, set_as_default=False, timeout=5)


def test_client_to_nowhere() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        Client(f"tcp://127.0.0.1:{port}", token=TOKEN, set_as_default=False, timeout=5)


# --------------------------------------------------------------- binding


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_non_loopback_bind_without_token_is_refused(host: str) -> None:
    async def scheduler() -> None:
        s = Scheduler(host=host, port=0, token=None)
        try:
            await s.start()
        finally:
            await s.close()

    async def worker() -> None:
        w = Worker("tcp://127.0.0.1:1", host=host, port=0, token=None)
        try:
            await w.start()
        finally:
            await w.close()

    for run in (scheduler, worker):
        with pytest.raises(AuthenticationError, match="refusing to listen"):
            asyncio.run(run())


def test_loopback_bind_without_token_is_allowed() -> None:
    async def main() -> str:
        s = Scheduler(host="127.0.0.1", port=0, token=None)
        try:
            return await s.start()
        finally:
            await s.close()

    assert asyncio.run(main()).startswith("tcp://127.0.0.1:")


# ------------------------------------------------------ wrong arguments


def test_wrong_arguments_to_submit_map_gather(good: Client) -> None:
    c = good
    fs = c.map(operator.neg, [1, 2])
    cases: list[tuple[type[Exception], str, Any]] = [
        (TypeError, "callable", lambda: c.submit(1)),
        (TypeError, "callable", lambda: c.submit("operator.add", 1, 2)),
        (ValueError, "retries", lambda: c.submit(operator.neg, 1, retries=-1)),
        (ValueError, "retries", lambda: c.submit(operator.neg, 1, retries=1.5)),
        (TypeError, "key must be a string", lambda: c.submit(operator.neg, 1, key=5)),
        (TypeError, "workers=", lambda: c.submit(operator.neg, 1, workers=[1])),
        (TypeError, "pickle", lambda: c.submit(operator.neg, threading.Lock())),
        (TypeError, "callable", lambda: c.map(1, [1])),
        (TypeError, "at least one iterable", lambda: c.map(operator.neg)),
        (TypeError, "iterables", lambda: c.map(operator.neg, 5)),
        (TypeError, "iterables", lambda: c.map(operator.neg, {"a": 1})),
        (TypeError, "pickle", lambda: c.map(operator.neg, [1, threading.Lock()])),
        (ValueError, "errors must be", lambda: c.gather(fs, errors="ignore")),
        (ValueError, "return_when", lambda: wait(fs, return_when="SOMETIMES")),
        (TypeError, "Futures", lambda: wait([1, 2])),
        (TypeError, "Future", lambda: as_completed([fs[0], "x"])),
        (ValueError, "no such worker", lambda: c.scatter([1], workers=["tcp://127.0.0.1:1"])),
        (ValueError, "replicas", lambda: c.scatter([1], replicas=0)),
        (TypeError, "callable", lambda: c.run(5)),
        (TypeError, "scheduler address", lambda: Client(12345)),
        (ValueError, "not of the form", lambda: Client("nowhere", set_as_default=False)),
        (ValueError, "scheme", lambda: Client("udp://127.0.0.1:1", set_as_default=False)),
    ]
    for exc_type, match, call in cases:
        with pytest.raises(exc_type, match=match):
            call()
    assert c.gather(fs, timeout=30) == [-1, -2]
    still_serving(good)


def test_unpicklable_function_is_a_type_error(good: Client) -> None:
    lock = threading.Lock()
    with pytest.raises(TypeError, match="pickle"):
        good.submit(lambda: lock.locked())
    with pytest.raises(TypeError, match="pickle"):
        good.scatter([lock])
    still_serving(good)


def test_task_function_missing_on_the_worker(good: Client) -> None:
    # ``inc`` lives in the tests package, which this worker cannot import.
    f = good.submit(inc, 1)
    with pytest.raises(ModuleNotFoundError, match="integration"):
        f.result(timeout=30)
    still_serving(good)


# -------------------------------------------------------------------- CLI


def run_cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REGROW, *args],
        env=_env(token),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "error" in ln.lower()]


@pytest.mark.parametrize("nanny", ["--nanny", "--no-nanny"])
def test_cli_worker_with_unreachable_scheduler(nanny: str) -> None:
    proc = run_cli("worker", "tcp://127.0.0.1:1", nanny, token=TOKEN)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("regrow: error:") and "127.0.0.1" in lines[0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["worker", "tcp://127.0.0.1:1", "--bogus"], "--bogus"),
        (["scheduler", "--bogus"], "--bogus"),
        (["worker"], "SCHEDULER_ADDRESS"),
        (["worker", "not-an-address"], "not of the form"),
        (["worker", "tcp://127.0.0.1:1", "--memory-limit", "lots"], "lots"),
        (["worker", "tcp://127.0.0.1:1", "--nthreads", "0"], "nthreads"),
        (["scheduler", "--port", "99999"], "port"),
        (["scheduler", "--token-file", "/nonexistent/token"], "token"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_cli_bad_flags(args: list[str], match: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert match in line


def test_cli_refuses_non_loopback_bind_without_token() -> None:
    proc = run_cli("scheduler", "--host", "0.0.0.0", "--port", "0", token=None)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("regrow: error: refusing to listen on 0.0.0.0")
