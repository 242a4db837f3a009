"""Connections over real loopback sockets (in this process): authentication, request and
reply, large frames, and peers that break the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pytest

from regrow.config import Settings
from regrow.errors import AuthenticationError, CommClosedError, ProtocolError
from regrow.protocol.comm import Connection, Listener, connect, parse_address
from regrow.protocol.messages import (
    CancelMsg,
    ErrorReply,
    PingMsg,
    RunMsg,
    RunReply,
    WhoHasMsg,
    WhoHasReply,
)
from regrow.protocol.serialize import dumps, loads

SETTINGS = Settings(handshake_timeout=5, connect_timeout=5)


async def echo(conn: Connection) -> None:
    """Answer who-has with each key held by itself, run with its frames, cancel with an
    error, and ping with an answer of the wrong type."""
    try:
        while True:
            msg, frames = await conn.recv()
            match msg:
                case WhoHasMsg():
                    conn.reply(msg, WhoHasReply(who_has={k: [k] for k in msg.keys}))
                case RunMsg():
                    conn.reply(msg, RunReply(ok=True), frames)
                case CancelMsg():
                    conn.reply(msg, ErrorReply(error="asked to fail", etype="ValueError"))
                case PingMsg():
                    conn.send(RunReply(ok=True, rid=msg.rid))
    except CommClosedError:
        pass


def who_has(*keys: str) -> WhoHasMsg:
    return WhoHasMsg(keys=list(keys))


def serve(body: Callable[[Listener, str], Awaitable[None]], token: str | None = "tok") -> Listener:
    async def main() -> Listener:
        listener = Listener(echo, token=token, settings=SETTINGS)
        address = await listener.start("127.0.0.1", 0)
        try:
            await body(listener, address)
        finally:
            await listener.close()
        return listener

    return asyncio.run(main())


def test_request_reply_with_frames() -> None:
    async def body(listener: Listener, address: str) -> None:
        conn = await connect(address, token="tok", settings=SETTINGS)
        try:
            a = np.arange(3_000_000, dtype=np.float64)  # 24 MB: several reads per frame
            reply, frames = await conn.request(RunMsg(), dumps(a))
            assert reply.ok
            np.testing.assert_array_equal(loads(frames), a)
            # Many requests at once are batched and each answered.
            replies = await asyncio.gather(*(conn.request(who_has(str(i))) for i in range(500)))
            assert [list(r.who_has) for r, _ in replies] == [[str(i)] for i in range(500)]
            with pytest.raises(ValueError, match="asked to fail"):
                await conn.request(CancelMsg(keys=[]))
            # A reply of another type than the request's is a protocol error.
            with pytest.raises(ProtocolError, match="answered 'ping' with 'run-reply'"):
                await conn.request(PingMsg())
            assert conn.closed
        finally:
            await conn.close()

    serve(body)


def test_wrong_token() -> None:
    async def body(listener: Listener, address: str) -> None:
        with pytest.raises(AuthenticationError, match="wrong token"):
            await connect(address, token="other", settings=SETTINGS)
        # None given: said so, not called wrong.
        with pytest.raises(AuthenticationError, match="no token given, and this cluster needs"):
            await connect(address, token=None, settings=SETTINGS)
        ok = await connect(address, token="tok", settings=SETTINGS)
        await ok.close()

    listener = serve(body)
    assert listener.rejected == 2


def test_no_token_on_both_sides() -> None:
    async def body(listener: Listener, address: str) -> None:
        conn = await connect(address, token=None, settings=SETTINGS)
        reply, _ = await conn.request(who_has("1"))
        assert reply.who_has == {"1": ["1"]}
        await conn.close()

    serve(body, token=None)


def test_pending_requests_fail_when_the_peer_goes() -> None:
    async def body(listener: Listener, address: str) -> None:
        conn = await connect(address, token="tok", settings=SETTINGS)
        pending = asyncio.ensure_future(conn.request(who_has("x")))
        await asyncio.sleep(0)  # let it be sent
        assert len(listener.connections) == 1
        for server_side in list(listener.connections):
            server_side.abort()
        with pytest.raises(CommClosedError):
            await pending
        with pytest.raises(CommClosedError):
            conn.send(PingMsg())

    async def silent(conn: Connection) -> None:
        await conn.closed_event.wait()

    async def main() -> None:
        listener = Listener(silent, token="tok", settings=SETTINGS)
        address = await listener.start("127.0.0.1", 0)
        try:
            await body(listener, address)
        finally:
            await listener.close()

    asyncio.run(main())


def test_garbage_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async def body(listener: Listener, address: str) -> None:
        reader, writer = await asyncio.open_connection(*parse_address(address))
        await reader.read(4096)  # the hello
        writer.write(struct.pack("!I", 1000) + b"x" * 100)
        await writer.drain()
        assert await reader.read() == b""  # dropped
        writer.close()
        await writer.wait_closed()
        # Others are still served.
        conn = await connect(address, token="tok", settings=SETTINGS)
        assert (await conn.request(who_has("5")))[0].who_has == {"5": ["5"]}
        await conn.close()

    with caplog.at_level(logging.WARNING, logger="regrow.comm"):
        listener = serve(body)
    assert listener.rejected == 1
    assert any("packet announces 1000 frames" in r.getMessage() for r in caplog.records)


@contextlib.contextmanager
def raw_server(payload: bytes) -> Iterator[str]:
    """A plain TCP server on loopback: for one connection, sends ``payload`` (nothing if
    empty), then waits for the peer to hang up."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)

    def run() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(payload)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        thread.join(10)
        sock.close()


def test_client_side_limits_before_auth() -> None:
    """A 'server' that sends an oversized frame before the handshake is refused."""
    with raw_server(struct.pack("!IQ", 1, 1 << 30)) as address:

        async def main() -> None:
            with pytest.raises((CommClosedError, ProtocolError)):
                await connect(address, token="tok", settings=SETTINGS)

        asyncio.run(main())


def test_connect_refused_and_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]

    async def refused() -> None:
        await connect(f"tcp://127.0.0.1:{port}", token="tok", settings=SETTINGS)

    with pytest.raises(OSError):
        asyncio.run(refused())

    with raw_server(b"") as address:

        async def silent() -> None:
            await connect(address, token="tok", settings=SETTINGS, timeout=0.3)

        with pytest.raises(TimeoutError):
            asyncio.run(silent())


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://127.0.0.1:8786", ("127.0.0.1", 8786)),
        ("localhost:1", ("localhost", 1)),
        ("tcp://[::1]:99", ("::1", 99)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "tcp://", "host", "tcp://host:", "http://h:1", "h:x"])
def test_parse_bad_address(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)
    with pytest.raises(TypeError):
        parse_address(1234)  # type: ignore[arg-type]
