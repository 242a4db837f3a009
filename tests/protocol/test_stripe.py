"""Large frames in parts over several connections (protocol.stripe), on real sockets:
the parts land in place, leased connections come back for reuse, and a holder that
cannot send every part fails the fetch with PartsFailed, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from regrow.config import Settings
from regrow.errors import CommClosedError, ProtocolError
from regrow.protocol import shm, stripe
from regrow.protocol.comm import Connection, ConnectionPool, Listener, error_reply
from regrow.protocol.framing import Buffer, FrameDecoder, encode_packet
from regrow.protocol.messages import (
    Ack,
    GetDataMsg,
    GetDataReply,
    GetPartMsg,
    PartsDoneMsg,
    StripedFrames,
)
from regrow.protocol.serialize import dumps, loads

SETTINGS = Settings(handshake_timeout=5, connect_timeout=5)
TOKEN = "tok"
MB = 1 << 20


# ------------------------------------------------------------------ decoder
def _packet(*frames: bytes) -> bytes:
    return b"".join(bytes(b) for b in encode_packet(list(frames)))


def test_decoder_receives_the_expected_frame_into_the_callers_buffer() -> None:
    d = FrameDecoder(max_frames=16, max_frame_bytes=1 << 30)
    payload = bytes(range(256)) * 4096  # 1 MiB, large enough to be received directly
    target = memoryview(bytearray(len(payload)))
    d.expect(target)
    d.feed(_packet(b"header", payload))
    [packet] = d.packets
    assert packet[1] is target and bytes(target) == payload
    # Only once: the next frame of that size gets its own buffer.
    d.feed(_packet(b"header", payload))
    assert d.packets[1][1] is not target and bytes(d.packets[1][1]) == payload


def test_decoder_ignores_an_expected_buffer_of_another_size() -> None:
    d = FrameDecoder(max_frames=16, max_frame_bytes=1 << 30)
    target = memoryview(bytearray(MB))
    d.expect(target)
    payload = b"x" * (MB + 1)
    d.feed(_packet(b"h", payload))
    assert d.packets[0][1] is not target and bytes(d.packets[0][1]) == payload
    assert bytes(target) == bytes(MB)  # untouched


# ------------------------------------------------------------------- plans
@pytest.mark.parametrize("n", [1, stripe.MIN_PART, 3 * stripe.MIN_PART + 7, 100_000_000])
@pytest.mark.parametrize("streams", [1, 2, 4, 7])
def test_ranges_cover_the_frame_in_order(n: int, streams: int) -> None:
    parts = stripe.ranges(n, streams)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert 1 <= len(parts) <= streams
    assert len(parts) == 1 or min(hi - lo for lo, hi in parts) >= stripe.MIN_PART


@pytest.mark.parametrize(
    "sizes",
    [
        {1: 100_000_000},
        {i: 10_000_000 for i in range(1, 11)},
        {2: 3 * stripe.MIN_PART, 5: stripe.MIN_PART + 1, 9: 7 * stripe.MIN_PART + 3},
        {3: stripe.MIN_PART},
    ],
)
@pytest.mark.parametrize("streams", [1, 2, 4, 7])
def test_a_plan_covers_every_frame_once_in_few_parts(sizes: dict[int, int], streams: int) -> None:
    work = stripe.plan(sizes, streams)
    assert 1 <= len(work) <= streams
    got: dict[int, list[tuple[int, int]]] = {}
    for parts in work:
        for index, lo, hi in parts:
            assert 0 <= lo < hi <= sizes[index]
            got.setdefault(index, []).append((lo, hi))
    for index, n in sizes.items():
        pieces = sorted(got[index])
        assert pieces[0][0] == 0 and pieces[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    # At most one part per frame, plus one more where a stream's range ends inside one.
    assert sum(map(len, work)) <= len(sizes) + len(work) - 1
    loads = [sum(hi - lo for _, lo, hi in parts) for parts in work]
    assert max(loads) - min(loads) <= max(2, sum(sizes.values()) // len(work) // 100)


def test_split_leaves_large_frames_out() -> None:
    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB, one out-of-band buffer
    frames = dumps({"a": big, "b": b"small"})
    out, kept = stripe.split(frames, 4 * MB)
    assert list(kept) == [i for i, f in enumerate(frames) if memoryview(f).nbytes >= 4 * MB]
    assert len(kept) == 1
    for i, frame in enumerate(out):
        assert memoryview(frame).nbytes == (0 if i in kept else memoryview(frames[i]).nbytes)
    assert bytes(kept[next(iter(kept))]) == big.tobytes()


# ------------------------------------------------------------- end to end
Handler = Callable[[Connection], Awaitable[None]]


def _holder(holdings: stripe.Holdings, value: object, *, break_parts: bool = False) -> Handler:
    """A peer that answers get-data with ``value`` striped (as a worker does), and
    get-part from ``holdings``; with ``break_parts`` it drops the connection of the
    second part it is asked for instead of answering."""
    asked = itertools.count()

    async def handle(conn: Connection) -> None:
        while True:
            msg, _ = await conn.recv()
            try:
                match msg:
                    case GetDataMsg():
                        out, kept = stripe.split(dumps(value), 2 * MB)
                        striped = stripe.describe(holdings.keep(conn, kept), kept)
                        reply = GetDataReply(keys=["x"], nf=[len(out)], striped=striped)
                        conn.reply(msg, reply, out)
                    case GetPartMsg():
                        if break_parts and next(asked) == 1:
                            conn.abort()
                            return
                        conn.reply(msg, Ack(), [holdings.part(msg)])
                    case PartsDoneMsg():
                        holdings.done(msg.id)
            except (KeyError, ProtocolError) as exc:
                if isinstance(msg, GetPartMsg):
                    conn.reply(msg, error_reply(exc))

    return handle


def _run(handler: Handler, body: Callable[[ConnectionPool, str], Awaitable[None]]) -> None:
    async def main() -> None:
        listener = Listener(handler, token=TOKEN, settings=SETTINGS)
        address = await listener.start("127.0.0.1", 0)
        pool = ConnectionPool(token=TOKEN, settings=SETTINGS)
        try:
            await body(pool, address)
        finally:
            pool.close()
            await listener.close()

    asyncio.run(main())


async def _fetch(pool: ConnectionPool, address: str, streams: int) -> object:
    async def striped(description: Any, frames: list[Buffer]) -> list[Buffer]:
        return await stripe.receive(pool, address, description, frames, streams, 10.0)

    comm = await pool.get(address)
    got = await shm.get_data(comm, ["x"], "", 10.0, striped=striped, streams=streams)
    [(key, frames)] = got
    assert key == "x"
    return loads(frames)


def test_a_striped_value_arrives_whole_and_the_connections_are_kept() -> None:
    holdings = stripe.Holdings()
    a = np.arange(3_000_000, dtype=np.float64)  # 24 MB: 3 parts of 8 MB
    b = np.arange(700_000, dtype=np.int64)[::-1].copy()  # 5.6 MB: 2 parts
    value = {"a": a, "b": b, "c": "small"}

    async def body(pool: ConnectionPool, address: str) -> None:
        for _ in range(2):  # the second time on the same leased connections
            got = await _fetch(pool, address, streams=3)
            assert isinstance(got, dict) and got["c"] == "small"
            np.testing.assert_array_equal(got["a"], a)
            np.testing.assert_array_equal(got["b"], b)
            assert len(pool._spare[address]) == 3
        # The holder forgets what it kept once told the parts are done.
        await asyncio.wait_for(_until(lambda: len(holdings) == 0), 5)

    _run(_holder(holdings, value), body)


def test_a_holder_that_no_longer_keeps_the_value_fails_the_fetch() -> None:
    holdings = stripe.Holdings()
    value = np.ones(1_000_000)
    real_keep = holdings.keep

    def keep_and_forget(conn: Connection, frames: dict[int, memoryview]) -> int:
        tid = real_keep(conn, frames)
        holdings.done(tid)  # gone (expired, say) before any part is asked for
        return tid

    holdings.keep = keep_and_forget  # type: ignore[method-assign]

    async def body(pool: ConnectionPool, address: str) -> None:
        with pytest.raises(stripe.PartsFailed, match="over"):
            await _fetch(pool, address, streams=2)
        assert not pool._spare.get(address)  # not reused: a part may still be on its way
        # The first connection is still fine: the holder answers on it.
        comm = await pool.get(address)
        reply, _ = await comm.request(GetDataMsg(keys=["x"]))
        assert reply.keys == ["x"]

    _run(_holder(holdings, value), body)


def test_a_connection_lost_in_the_middle_of_the_parts_fails_the_fetch() -> None:
    holdings = stripe.Holdings()
    value = np.ones(3_000_000)

    async def body(pool: ConnectionPool, address: str) -> None:
        with pytest.raises(stripe.PartsFailed):
            await asyncio.wait_for(_fetch(pool, address, streams=3), 20)
        assert not pool._spare.get(address)

    _run(_holder(holdings, value, break_parts=True), body)


@pytest.mark.parametrize(
    "described",
    [
        StripedFrames(id=1, frames=[(5, 100)]),  # no such frame
        StripedFrames(id=1, frames=[(0, 100)]),  # a frame that was not left empty
        StripedFrames(id=1, frames=[(1, 1 << 62)]),  # beyond any frame limit
    ],
)
def test_a_malformed_description_is_a_protocol_error(described: StripedFrames) -> None:
    async def main() -> None:
        pool = ConnectionPool(token=TOKEN, settings=SETTINGS)
        with pytest.raises(ProtocolError):
            await stripe.receive(pool, "tcp://127.0.0.1:1", described, [b"head", b""], 2, 1.0)
        assert not pool._spare

    asyncio.run(main())


def test_holdings_refuse_bad_part_requests() -> None:
    async def main() -> None:
        holdings = stripe.Holdings()
        tid = holdings.keep(None, {1: memoryview(b"abcdef")})  # type: ignore[arg-type]
        part = holdings.part(GetPartMsg(id=tid, frame=1, lo=1, hi=4))
        assert bytes(part) == b"bcd"
        with pytest.raises(KeyError, match="over"):
            holdings.part(GetPartMsg(id=tid + 1, frame=1, lo=0, hi=1))
        for frame, lo, hi in ((2, 0, 1), (1, 3, 3), (1, 0, 7)):
            with pytest.raises(ProtocolError):
                holdings.part(GetPartMsg(id=tid, frame=frame, lo=lo, hi=hi))
        holdings.forget(None)  # type: ignore[arg-type]
        assert len(holdings) == 0

    asyncio.run(main())


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


def test_leased_connections_are_exclusive_kept_within_a_cap_and_pruned() -> None:
    async def idle(conn: Connection) -> None:
        with contextlib.suppress(CommClosedError):
            while True:
                await conn.recv()

    async def body(pool: ConnectionPool, address: str) -> None:
        first = await pool.lease(address, 5)
        second = await pool.lease(address, 5)  # none of the first five, which are out
        assert len({id(c) for c in first + second}) == 10
        pool.release(address, first)
        pool.release(address, second)
        assert len(pool._spare[address]) == 8  # the rest closed
        assert sum(c.closed for c in first + second) == 2
        again = await pool.lease(address, 3)
        assert all(any(c is s for s in first + second) for c in again)  # reused
        pool._spare[address][0].abort()  # a spare whose peer went away
        pool.release(address, again, reusable=False)
        assert all(c.closed for c in again)
        await pool.lease(address, 1)
        assert len(pool._spare[address]) == 3  # 5 left, 1 closed and dropped, 1 leased

    _run(idle, body)
