"""Bad input from peers, callers and the command line: refused clearly, and the
scheduler keeps serving everyone else.

The scheduler here is a process of its own, started with the CLI, whose stderr (its
log) the tests read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from regrow import (
    AuthenticationError,
    Client,
    as_completed,
    wait,
)
from regrow.config import Settings
from regrow.core import events as ev
from regrow.protocol import handshake
from regrow.protocol.comm import connect, parse_address
from regrow.protocol.framing import FrameDecoder, encode_packet
from regrow.protocol.messages import (
    CancelMsg,
    ClientRegisteredMsg,
    DesireKeysMsg,
    PingMsg,
    RegisterClientMsg,
)
from regrow.scheduler import Scheduler
from regrow.testing import wait_until
from regrow.worker import Worker

from .tasks import inc

TOKEN = "the-right-token"

# Messages as a hostile peer sends them: plain msgpack maps, whatever their fields.
Msg = dict[str, Any]


def packet(*msgs: Msg, frames: list[bytes] | None = None) -> bytes:
    """One packet carrying ``msgs`` (the last one with ``frames``), as bytes."""
    counts = [0] * len(msgs)
    if frames:
        counts[-1] = len(frames)
    header = msgpack.packb([[m, n] for m, n in zip(msgs, counts, strict=True)])
    return b"".join(bytes(b) for b in encode_packet([header, *(frames or [])]))


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
        self.send_raw(packet(*msgs))

    def recv(self) -> Msg:
        while not self.inbox:
            while not self.decoder.packets:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError("the server closed the connection")
                self.decoder.feed(data)
            header = msgpack.unpackb(self.decoder.packets.popleft()[0], strict_map_key=False)
            self.inbox.extend(m for m, _ in header)
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
        assert peer.recv()["op"] == "client-registered"
        peer.send({"op": "ping", "rid": 1})
        reply = peer.recv()
        assert reply["op"] == "ping-reply" and reply["rid"] == 1
        assert reply["address"] == server.address


# ----------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\xde\xad\xbe\xef" * 8, "packet announces"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "packet announces"),
        (struct.pack("!IQ", 1, 1 << 20), "exceeds the limit"),
        (struct.pack("!I", 0), "packet announces 0 frames"),
        (b"".join(encode_packet([b"\xc1\xc1\xc1"])), "undecodable message header"),
        (b"".join(encode_packet([b"\x93\x01\x02\x03"])), "invalid message: Expected `array`"),
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
        # Before authentication only the handshake's messages are understood.
        ({"op": "register-client", "client": "sneaky"}, "Invalid value 'register-client'"),
        ({"op": "auth", "nonce": "text", "mac": b"x"}, "Expected `bytes`, got `str`"),
        ({"op": "auth", "mac": b"x"}, "missing required field `nonce`"),
    ],
)
def test_wrong_messages_before_auth(server: Server, good: Client, msg: Msg, reason: str) -> None:
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        peer.send(msg)
        assert peer.dropped()
    server.wait_for_log(f"dropping connection from {peer.peer}", reason)
    still_serving(good)


def registered(server: Server, first: Msg) -> RawPeer:
    """A raw peer, authenticated, whose first message ``first`` was accepted."""
    peer = RawPeer(server.address)
    try:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send(first)
        assert peer.recv()["op"] in ("client-registered", "worker-registered"), first
    except BaseException:
        peer.__exit__()
        raise
    return peer


def no_crash(server: Server) -> None:
    """Bad input was refused in a handler's guard: nothing escaped into a task."""
    log = server.log()
    assert "never retrieved" not in log and "Traceback" not in log, log


def test_a_first_message_that_registers_nothing(server: Server, good: Client) -> None:
    # A message the scheduler knows, but that registers nothing: refused, dropped.
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "ping", "rid": 1})
        reply = peer.recv()
        assert reply["op"] == "refused" and "register" in reply["reason"]
        assert peer.dropped()
    server.wait_for_log(f"dropping {peer.peer}", "first message must register")
    # An op nobody knows: dropped before anything reads it.
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "make-me-admin"})
        assert peer.dropped()
    server.wait_for_log(f"dropping connection from {peer.peer}", "Invalid value 'make-me-admin'")
    still_serving(good)
    no_crash(server)


TASK = {"k": "x", "d": [], "fnf": 1, "nf": 2}


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ({"op": "no-such-op", "rid": 7}, "Invalid value 'no-such-op' - at `$[0][0].op`"),
        ({"op": "who-has", "keys": "not a list", "rid": 8}, "got `str` - at `$[0][0].keys`"),
        # What the outside tester found raising outside the handlers' guard.
        ({"op": "submit", "tasks": [{**TASK, "p": math.inf}], "wanted": []}, "tasks[0].p`"),
        ({"op": "scattered", "keys": [], "replicas": math.inf, "rid": 1}, ".replicas`"),
        ({"op": "submit", "tasks": [{**TASK, "r": [1]}], "wanted": []}, "tasks[0].r`"),
        (
            {"op": "scattered", "replicas": 1, "rid": 1, "keys": [{"key": "s", "nbytes": [8]}]},
            "keys[0].nbytes`",
        ),
        ({"op": "restart", "timeout": [30], "rid": 1}, ".timeout`"),
        ({"op": "missing-data", "missing": {"x": "not a list"}}, ".missing[...]`"),
        ({"op": "cancel", "keys": ["x"], "force": "yes", "rid": 1}, ".force`"),
    ],
)
def test_wrong_types_from_a_client_drop_its_connection(
    server: Server, good: Client, msg: Msg, reason: str
) -> None:
    with registered(server, {"op": "register-client", "client": uuid.uuid4().hex}) as peer:
        peer.send(msg)
        assert peer.dropped()  # no reply: the message never reached a handler
    line = server.wait_for_log(f"dropping connection from {peer.peer}: invalid message", reason)
    assert "WARNING" in line
    still_serving(good)
    no_crash(server)


@pytest.mark.parametrize(
    ("msg", "frames", "reason"),
    [
        # Well typed, but not what it says: acted on, it cannot be.
        ({"op": "submit", "tasks": [{**TASK, "nf": 5}], "wanted": ["x"]}, [], "frame counts"),
        ({"op": "heartbeat"}, [], "a client does not send 'heartbeat'"),
    ],
)
def test_a_client_message_that_cannot_be_acted_on_drops_its_connection(
    server: Server, good: Client, msg: Msg, frames: list[bytes], reason: str
) -> None:
    client = uuid.uuid4().hex
    with registered(server, {"op": "register-client", "client": client}) as peer:
        peer.send_raw(packet(msg, frames=frames))
        assert peer.dropped()
    server.wait_for_log(f"closing the connection of client {client}", reason)
    still_serving(good)
    no_crash(server)


def test_a_request_that_fails_is_answered_and_the_connection_stays(good: Client) -> None:
    """A worker asked for a part of a transfer it does not hold answers with the error."""
    [worker] = good.scheduler_info()["workers"]
    with RawPeer(worker) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "get-part", "id": 12345, "frame": 0, "lo": 0, "hi": 1, "rid": 1})
        reply = peer.recv()
        assert reply["op"] == "error-reply" and reply["rid"] == 1
        assert reply["etype"] == "KeyError" and "12345" in reply["error"]
        peer.send({"op": "ping", "rid": 2})
        assert peer.recv()["op"] == "ping-reply"


def test_a_malformed_registration_leaves_no_phantom_worker(
    server: Server, good: Client, tmp_path: Path
) -> None:
    """The outside tester's case: register-worker with ``"pid": "abc"`` left a worker
    registered at that address for good, and the real one was refused."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with RawPeer(server.address) as peer:
        assert peer.handshake(TOKEN)["op"] == "welcome"
        peer.send({"op": "register-worker", "address": address, "nthreads": 1, "pid": "abc"})
        assert peer.dropped()
    server.wait_for_log(f"dropping connection from {peer.peer}", "`$[0][0].pid`")
    assert address not in good.scheduler_info()["workers"]
    # The real worker at that address registers, and computes.
    args = ["worker", server.address, "--no-nanny", "--port", str(port), "--name", "real"]
    worker = _start(args, tmp_path / "r.ready", tmp_path / "r.log", TOKEN)
    try:
        wait_until(
            lambda: address in good.scheduler_info()["workers"], timeout=10, what="real worker"
        )
        fs = good.map(operator.neg, range(20), workers=[address], pure=False)
        assert good.gather(fs, timeout=30) == [-i for i in range(20)]
    finally:
        _stop(worker)
    assert "refused" not in (tmp_path / "r.log").read_text()
    wait_until(
        lambda: len(good.scheduler_info()["workers"]) == 1, timeout=10, what="real worker gone"
    )
    still_serving(good)
    no_crash(server)


def test_bad_task_report_from_a_worker(server: Server, good: Client) -> None:
    """A worker's report whose small result is not bytes: its connection goes (and the
    worker with it), nothing else changes."""
    worker = {"op": "register-worker", "address": "tcp://127.0.0.1:9", "nthreads": 1}
    with registered(server, worker) as peer:
        peer.send({"op": "task-finished", "key": "k", "run": 1, "nbytes": 8, "inline": "text"})
        assert peer.dropped()
    server.wait_for_log(f"dropping connection from {peer.peer}", "`$[0][0].inline`")
    wait_until(
        lambda: len(good.scheduler_info()["workers"]) == 1, timeout=10, what="the raw worker gone"
    )
    still_serving(good)
    no_crash(server)


def test_connection_closed_in_the_middle_of_a_message(server: Server, good: Client) -> None:
    # Before authentication: a packet prefix announcing a frame, then nothing.
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        peer.send_raw(struct.pack("!IQ", 1, 100) + b"half")
    server.wait_for_log(f"connection from {peer.peer}", "in the middle of a message")
    # After authentication and registration, half of a big message.
    with registered(server, {"op": "register-client", "client": "raw-half"}) as peer:
        whole = packet({"op": "ping", "rid": 1}, frames=[b"x" * 1_000_000])
        peer.send_raw(whole[: len(whole) // 2])
    server.wait_for_log(f"connection from {peer.peer}", "in the middle of a message")
    still_serving(good)


def test_silent_peer_does_not_block_others(server: Server, good: Client) -> None:
    with RawPeer(server.address) as peer:
        assert peer.recv()["op"] == "hello"
        still_serving(good)  # while a handshake is left hanging


# ------------------------------------------------ a server that misbehaves


class FakeServer:
    """Accepts connections on loopback; to each it writes ``payload``, then closes it."""

    def __init__(self, payload: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.payload = payload
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.payload)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() waiting in _serve
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
    """Not a scheduler starting up: it answers, wrongly. That fails at once, not after
    the client's timeout of trying again."""
    started = time.monotonic()
    with FakeServer(payload) as fake, pytest.raises(OSError, match=r"handshake|not a regrow"):
        Client(fake.address, token=TOKEN, set_as_default=False, timeout=30)
    assert time.monotonic() - started < 10


def test_client_to_nowhere() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
        Client(f"tcp://127.0.0.1:{port}", token=TOKEN, set_as_default=False, timeout=1)


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
    # It keeps trying for --timeout (a scheduler may start after it), then gives up.
    proc = run_cli(
        "worker", "tcp://127.0.0.1:1", nanny, "--timeout", "1", "--log-level", "WARNING",
        token=TOKEN,
    )  # fmt: skip
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


# ------------------------------------------------------------ handlers' guard


def test_a_failing_handler_answers_a_request_and_drops_a_one_way_sender(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever a handler raises (here a bug of the core's, planted): a request gets it
    as its error reply and the connection stays; a one-way message closes it."""

    async def main() -> None:
        scheduler = Scheduler(port=0, token=TOKEN)
        address = await scheduler.start()
        conn = None
        try:
            conn = await connect(address, token=TOKEN, settings=Settings())
            conn.send(RegisterClientMsg(client="guarded"))
            assert isinstance((await conn.recv())[0], ClientRegisteredMsg)
            real = scheduler.state.handle

            def planted(*events: ev.Event) -> list[Any]:
                if any(isinstance(e, ev.KeysCancelled | ev.KeysDesired) for e in events):
                    raise RuntimeError("a planted bug")
                return real(*events)

            scheduler.state.handle = planted  # type: ignore[method-assign]
            with pytest.raises(RuntimeError, match="a planted bug"):
                await conn.request(CancelMsg(keys=["x"]))
            reply, _ = await conn.request(PingMsg())  # still connected
            assert reply.address == address
            conn.send(DesireKeysMsg(keys=["x"]))
            await asyncio.wait_for(conn.closed_event.wait(), 10)
        finally:
            if conn is not None:
                conn.abort()
            await scheduler.close()

    with caplog.at_level(logging.WARNING, logger="regrow.scheduler"):
        asyncio.run(main())
    logged = [r.getMessage() for r in caplog.records]
    assert any("could not do 'cancel'" in m and "a planted bug" in m for m in logged), logged
    assert any("cannot act on 'desire-keys'" in m for m in logged), logged


def test_a_task_larger_than_the_scheduler_accepts_is_refused_by_the_client() -> None:
    """Not sent, so not a dropped connection and a misleading 'scheduler lost' later."""
    from regrow import LocalCluster

    with (
        LocalCluster(n_workers=1, scheduler_max_frame_bytes=1_000_000) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        with pytest.raises(ValueError, match="scheduler_max_frame_bytes"):
            client.submit(len, b"x" * 2_000_000)
        big = client.scatter(b"x" * 2_000_000)
        assert client.submit(len, big).result(timeout=30) == 2_000_000
