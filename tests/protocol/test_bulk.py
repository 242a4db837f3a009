"""Large frames moved on threads of their own (protocol.bulk): over real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from regrow.config import Settings
from regrow.errors import CommClosedError
from regrow.protocol import bulk
from regrow.protocol.comm import Connection, Listener, connect
from regrow.protocol.framing import encode_packet
from regrow.protocol.messages import RunMsg, RunReply, pack_messages
from regrow.testing import wait_until

SETTINGS = Settings(handshake_timeout=5, connect_timeout=5)
BIG = bulk.THREAD_FROM + 3 * (1 << 20) + 7  # odd: not a multiple of any read size
DEADLINE = 10.0


def bulk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("regrow-bulk")]


def no_bulk_threads_left() -> None:
    for thread in bulk_threads():
        thread.join(DEADLINE)
    assert not bulk_threads()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which way each Bulk the connections start goes ('recv' or 'send')."""
    seen: list[str] = []
    real = bulk.Bulk

    class Counted(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append("recv" if kwargs["receive"] else "send")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bulk, "Bulk", Counted)
    return seen


async def answer(conn: Connection) -> None:
    """Each run request answered with its frames reversed."""
    with contextlib.suppress(CommClosedError):
        while True:
            msg, frames = await conn.recv()
            assert isinstance(msg, RunMsg)
            conn.reply(msg, RunReply(ok=True), frames[::-1])


def pattern(n: int, seed: int) -> bytes:
    block = bytes((seed * 31 + i) % 251 for i in range(4096))
    return (block * (n // len(block) + 1))[:n]


def test_large_frames_go_both_ways_on_threads(started: list[str]) -> None:
    async def main() -> None:
        listener = Listener(answer, token="tok", settings=SETTINGS)
        address = await listener.start("127.0.0.1", 0)
        conn = await connect(address, token="tok", settings=SETTINGS)
        try:
            a, b = pattern(BIG, 1), bytearray(pattern(BIG + 1, 2))
            for _ in range(3):  # the connection reads on after each threaded frame
                reply, frames = await conn.request(RunMsg(), [a, b"small", b])
                assert reply.ok
                assert [bytes(f) for f in frames] == [bytes(b), b"small", a]
            many = await asyncio.gather(*(conn.request(RunMsg(), [b"x"]) for _ in range(100)))
            assert all(bytes(f[0]) == b"x" for _, f in many)
            assert conn.bytes_received > 6 * BIG
        finally:
            await conn.close()
            await listener.close()

    asyncio.run(main())
    # Each way, each of the two large frames, each of three times, by a thread.
    assert started.count("send") == 12
    assert started.count("recv") == 12
    no_bulk_threads_left()


def answering_in_part(servers: list[Connection], part: int) -> Callable[[Connection], Any]:
    """A handler that answers a run request with the header of a reply carrying one
    frame of BIG bytes, then ``part`` bytes of that frame, then nothing more."""

    async def handler(conn: Connection) -> None:
        servers.append(conn)
        with contextlib.suppress(CommClosedError):
            msg, _ = await conn.recv()
            assert isinstance(msg, RunMsg)
            reply = RunReply(ok=True, rid=msg.rid)
            buffers = encode_packet(pack_messages([(reply, [bytes(BIG)])]))
            assert conn.transport is not None
            for buf in buffers[:-1]:
                conn.transport.write(buf)
            if part:
                conn.transport.write(memoryview(buffers[-1])[:part])
            await conn.closed_event.wait()

    return handler


def against_a_partial_reply(
    part: int, body: Callable[[Connection, list[Connection]], Awaitable[None]]
) -> None:
    """``body(connection, the server's connections)`` against ``answering_in_part``."""

    async def main() -> None:
        servers: list[Connection] = []
        listener = Listener(answering_in_part(servers, part), token="tok", settings=SETTINGS)
        address = await listener.start("127.0.0.1", 0)
        conn = await connect(address, token="tok", settings=SETTINGS)
        try:
            await body(conn, servers)
        finally:
            await conn.close()
            await listener.close()

    asyncio.run(main())
    no_bulk_threads_left()


def test_peer_gone_in_the_middle_of_a_large_frame() -> None:
    """The holder dies after part of a large frame: the request fails at once, with the
    connection, and the receiving thread ends."""

    async def body(conn: Connection, servers: list[Connection]) -> None:
        pending = asyncio.ensure_future(conn.request(RunMsg()))
        async with asyncio.timeout(DEADLINE):
            while conn.bulk_recv is None:  # the frame's size is known: a thread reads
                await asyncio.sleep(0.005)
        servers[0].abort()
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(CommClosedError, match=r"middle of a frame|closed"):
                await pending
        assert conn.closed

    against_a_partial_reply(1 << 20, body)


def test_closing_while_a_large_frame_comes_ends_its_thread() -> None:
    """Our side gives up (a request's timeout, a close) while a frame is half in: the
    thread is woken, not left waiting for bytes that will not come."""

    async def body(conn: Connection, servers: list[Connection]) -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="sent nothing"):
            await conn.request(RunMsg(), idle_timeout=0.3)
        assert time.monotonic() - started < DEADLINE
        assert conn.bulk_recv is not None  # the thread waits for the frame
        await conn.close()
        assert conn.closed

    against_a_partial_reply(0, body)


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(server.getsockname())
    b, _ = server.accept()
    server.close()
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def run_bulk(sock: socket.socket, view: memoryview, receive: bool) -> tuple[Any, Any]:
    """A Bulk on a loop of its own, in a thread; (the Bulk, a future of (moved, error))."""
    loop = asyncio.new_event_loop()
    result: asyncio.Future[tuple[int, BaseException | None]] = loop.create_future()
    moving = bulk.Bulk(
        sock, view, receive=receive, loop=loop, done=lambda n, e: result.set_result((n, e))
    )
    runner = threading.Thread(target=loop.run_until_complete, args=(result,), daemon=True)
    runner.start()
    return moving, (result, runner, loop)


def outcome(handle: Any) -> tuple[int, BaseException | None]:
    result, runner, loop = handle
    runner.join(DEADLINE)
    assert not runner.is_alive()
    loop.close()
    out: tuple[int, BaseException | None] = result.result()
    return out


def test_a_bulk_receive_counts_its_progress_and_lowers_its_low_water_mark() -> None:
    data = os.urandom(BIG)
    lowat = 1 << 20
    with tcp_pair() as (writer, reader):
        # As a connection leaves it while a large frame comes: wake only at 1 MiB.
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        into = memoryview(bytearray(BIG))
        moving, handle = run_bulk(reader, into, receive=True)
        writer.sendall(data[:-100])
        # Progress shows before the frame is whole (less than the low-water mark may
        # wait unread: the rest of a frame is on its way).
        wait_until(lambda: moving.moved >= BIG - 100 - lowat)
        assert moving.thread.is_alive()
        # Fewer bytes than 1 MiB are still to come: the mark must come down for them.
        writer.sendall(data[-100:])
        assert outcome(handle) == (BIG, None)
        assert into == data
        assert reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


def test_a_bulk_receive_ends_when_the_peer_closes_or_it_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with tcp_pair() as (writer, reader):
        moving, handle = run_bulk(reader, memoryview(bytearray(BIG)), receive=True)
        writer.sendall(bytes(4096))
        wait_until(lambda: moving.moved == 4096)
        writer.close()
        moved, error = outcome(handle)
        assert moved == 0 and isinstance(error, ConnectionResetError)
    # Its own looks come only every 10 minutes here: only the cancel's wake-up can end
    # it within the test's deadline.
    monkeypatch.setattr(bulk, "_POLL_MS", 600_000)
    with tcp_pair() as (writer, reader):
        moving, handle = run_bulk(reader, memoryview(bytearray(BIG)), receive=True)
        writer.sendall(bytes(4096))
        wait_until(lambda: moving.moved == 4096)  # then it waits for more
        moving.cancel()
        _, error = outcome(handle)
        assert isinstance(error, ConnectionError)


def test_a_bulk_send_reaches_a_slow_reader_and_can_be_cancelled() -> None:
    data = os.urandom(BIG)
    with tcp_pair() as (reader, writer):
        moving, handle = run_bulk(writer, memoryview(data), receive=False)
        got = bytearray()
        while len(got) < BIG:
            chunk = reader.recv(1 << 16)
            assert chunk
            got += chunk
        assert outcome(handle) == (BIG, None)
        assert got == data
    with tcp_pair() as (reader, writer):
        moving, handle = run_bulk(writer, memoryview(data), receive=False)
        wait_until(lambda: moving.moved > 0)  # the kernel's buffers fill; it waits
        moving.cancel()
        _, error = outcome(handle)
        assert isinstance(error, OSError)
    no_bulk_threads_left()
