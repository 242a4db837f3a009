"""FrameDecoder: byte streams in any chunking become the same packets; limits hold."""

from __future__ import annotations

import mmap
import random
import struct
from collections.abc import Iterator, Sequence

import pytest

from regrow.errors import ProtocolError
from regrow.protocol.framing import Buffer, FrameDecoder, encode_packet

BIG = 1 << 40
_STAGING = 256 * 1024
_DIRECT = _STAGING // 2


def wire(*packets: Sequence[Buffer]) -> bytes:
    """The bytes a peer writes for these packets, back to back."""
    out = bytearray()
    for frames in packets:
        for buf in encode_packet(frames):
            out += buf
    return bytes(out)


def decoder(max_frames: int = 1 << 20, max_frame_bytes: int = BIG) -> FrameDecoder:
    return FrameDecoder(max_frames=max_frames, max_frame_bytes=max_frame_bytes)


def as_bytes(packets: Sequence[Sequence[Buffer]]) -> list[list[bytes]]:
    return [[bytes(f) for f in frames] for frames in packets]


def chunks(data: bytes, sizes: Sequence[int]) -> Iterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        yield data[pos : pos + n]
        pos += n
        i += 1


SAMPLE: list[list[bytes]] = [
    [b"header"],
    [b"h", b"", b"payload" * 10, b""],
    [b"\x00" * 17, b"\xff" * 3],
    [bytes(range(256)) * 4],
]


def test_encode_packet_layout() -> None:
    bufs = encode_packet([b"ab", b"", b"cde"])
    assert bytes(bufs[0]) == struct.pack("!I3Q", 3, 2, 0, 3)
    assert [bytes(b) for b in bufs[1:]] == [b"ab", b"", b"cde"]
    with pytest.raises(ValueError):
        encode_packet([])


def test_fed_byte_by_byte() -> None:
    data = wire(*SAMPLE)
    d = decoder()
    for i in range(len(data)):
        d.feed(data[i : i + 1])
        if i < len(data) - 1:
            assert len(d.packets) < len(SAMPLE)
    assert as_bytes(d.packets) == SAMPLE
    assert d.idle


def test_fed_in_one_chunk() -> None:
    d = decoder()
    d.feed(wire(*SAMPLE) * 3)
    assert as_bytes(d.packets) == SAMPLE * 3
    assert d.idle


@pytest.mark.parametrize("sizes", [[2], [3, 5, 7], [4095, 1, 65537], [1 << 20]])
def test_fed_in_odd_chunks(sizes: list[int]) -> None:
    data = wire(*SAMPLE)
    d = decoder()
    for piece in chunks(data, sizes):
        d.feed(piece)
    assert as_bytes(d.packets) == SAMPLE


def test_not_idle_in_the_middle_of_a_packet() -> None:
    data = wire([b"hello", b"world"])
    d = decoder()
    assert d.idle
    for cut in (1, 4, 10, len(data) - 1):
        d = decoder()
        d.feed(data[:cut])
        assert not d.idle
        assert not d.packets
        d.feed(data[cut:])
        assert d.idle
        assert as_bytes(d.packets) == [[b"hello", b"world"]]


@pytest.mark.parametrize(
    "size", [_DIRECT - 1, _DIRECT, _DIRECT + 1, _STAGING - 1, _STAGING, _STAGING + 3]
)
def test_frames_around_the_buffer_sizes_fed_byte_by_byte(size: int) -> None:
    payload = random.Random(size).randbytes(size)
    data = wire([b"head", payload], [b"next"])
    d = decoder()
    view = memoryview(data)
    for i in range(len(view)):
        d.feed(view[i : i + 1])
    assert as_bytes(d.packets) == [[b"head", payload], [b"next"]]
    assert d.idle


def test_large_frames_in_big_chunks_arrive_whole_and_writeable() -> None:
    rng = random.Random(1)
    big = [rng.randbytes(3 * 1024 * 1024 + 7), rng.randbytes(10 * 1024 * 1024)]
    packets = [[b"h1", big[0], b"small"], [b"h2", big[1]], [b"h3"]]
    data = wire(*packets)
    for sizes in ([1 << 16], [1 << 20, 13], [len(data)]):
        d = decoder()
        for piece in chunks(data, sizes):
            d.feed(piece)
        got = list(d.packets)
        assert as_bytes(got) == packets
        # Large frames get a buffer of their own (an anonymous mapping, not zero-filled
        # first): writeable, never a copy of the stream.
        for frame in (got[0][1], got[1][1]):
            assert isinstance(frame, memoryview) and not frame.readonly
            assert isinstance(frame.obj, mmap.mmap)
        memoryview(got[1][1])[0] = 0


def test_get_buffer_and_buffer_updated_like_asyncio() -> None:
    """Drive the decoder as asyncio.BufferedProtocol does, filling part of each buffer."""
    rng = random.Random(7)
    packets = [
        [b"x" * rng.randrange(0, 300_000) for _ in range(rng.randrange(1, 5))] for _ in range(30)
    ]
    data = memoryview(wire(*packets))
    d = decoder()
    pos = 0
    while pos < len(data):
        buf = d.get_buffer(-1)
        assert buf.nbytes > 0
        n = min(buf.nbytes, rng.choice([1, 100, 5000, 200_000]), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        d.buffer_updated(n)
        pos += n
    assert as_bytes(d.packets) == packets
    assert d.idle


@pytest.mark.parametrize("count", [0, 3, 1 << 31])
def test_frame_count_out_of_limits(count: int) -> None:
    d = decoder(max_frames=2)
    with pytest.raises(ProtocolError, match="frames"):
        d.feed(struct.pack("!I", count))


def test_frame_too_large() -> None:
    d = decoder(max_frame_bytes=100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        d.feed(struct.pack("!IQQ", 2, 10, 101))


def test_frame_at_the_limit_is_accepted() -> None:
    d = decoder(max_frames=2, max_frame_bytes=100)
    d.feed(wire([b"a" * 100, b"b" * 100]))
    assert as_bytes(d.packets) == [[b"a" * 100, b"b" * 100]]


def test_limit_violation_detected_byte_by_byte() -> None:
    d = decoder(max_frames=1, max_frame_bytes=4096)
    data = struct.pack("!IQ", 1, 4097) + b"z" * 10
    with pytest.raises(ProtocolError):
        for i in range(len(data)):
            d.feed(data[i : i + 1])


def test_preauth_limits_then_raised() -> None:
    """The limits a server uses before authentication, then lifted after it."""
    d = decoder(max_frames=1, max_frame_bytes=4096)
    d.feed(wire([b"a" * 4096]))
    assert len(d.packets) == 1
    d.set_limits(max_frames=16, max_frame_bytes=1 << 20)
    d.feed(wire([b"b" * 5000, b"c"]))
    assert as_bytes(d.packets)[1] == [b"b" * 5000, b"c"]
    d.set_limits(max_frames=1, max_frame_bytes=10)
    with pytest.raises(ProtocolError):
        d.feed(wire([b"d" * 11]))


def test_garbage_is_refused() -> None:
    d = decoder(max_frames=1, max_frame_bytes=4096)
    with pytest.raises(ProtocolError):
        d.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_receive_pool_reuses_a_mapping_only_once_nothing_views_it() -> None:
    import numpy as np

    from regrow.protocol.framing import ReceivePool

    pool = ReceivePool(limit=64 << 20)
    a = pool.take(3 << 20)
    b = pool.take(3 << 20)  # a is still in use: a mapping of its own
    assert pool.bytes == 8 << 20 and pool.reused == 0
    a[:4] = b"aaaa"
    arr = np.frombuffer(a, dtype=np.uint8)  # an array built on it, as unpickling does
    del a
    c = pool.take(3 << 20)
    assert pool.reused == 0  # the array still views a's mapping
    del arr
    d = pool.take(3 << 20)
    assert pool.reused == 1 and bytes(d[:4]) == b"aaaa"  # a's mapping, contents not reset
    assert len({id(memoryview(x).obj) for x in (b, c, d)}) == 3
    del b, c, d
    assert pool.trim() == 12 << 20
    assert pool.bytes == 0


def test_receive_pool_limit() -> None:
    from regrow.protocol.framing import ReceivePool

    off = ReceivePool()
    x = off.take(4 << 20)
    assert off.bytes == 0 and len(x) == 4 << 20  # not kept
    pool = ReceivePool(limit=8 << 20)
    big = pool.take(6 << 20)
    other = pool.take(6 << 20)  # no room: a mapping of its own, not kept
    assert pool.bytes == 6 << 20
    del big
    small = pool.take(2 << 20)  # the free 6 MiB one is too large for it: a new one fits
    assert pool.bytes == 8 << 20 and pool.reused == 0
    # A free mapping up to twice the size asked for is reused.
    reuse = pool.take(4 << 20)
    assert pool.reused == 1 and len(memoryview(reuse).obj) == 6 << 20  # type: ignore[arg-type]
    del reuse
    # No room for 7 MiB (8 once aligned): the free mapping is given back, and as that is
    # still not enough, the new one is not kept.
    more = pool.take(7 << 20)
    assert pool.bytes == 2 << 20
    assert [len(m) for m in (small, more, other)] == [2 << 20, 7 << 20, 6 << 20]


def test_receive_pool_given_back_once_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's pool (``idle_release``) gives its free mappings back once nothing was
    taken for that long; one in use stays; a worker's (None) keeps them."""
    from regrow.protocol import framing

    now = [1000.0]
    monkeypatch.setattr(framing.time, "monotonic", lambda: now[0])
    pool = framing.ReceivePool(limit=16 << 20)
    kept = pool.take(2 << 20)
    freed = pool.take(2 << 20)
    del freed
    assert pool.release_if_idle() == 0  # idle_release None: a worker's, kept
    pool.idle_release = 5.0
    now[0] += 4.9
    assert pool.release_if_idle() == 0  # not idle long enough
    now[0] += 0.2
    assert pool.release_if_idle() == 2 << 20  # the free one; ``kept`` is still viewed
    assert pool.bytes == 2 << 20
    del kept
    pool.take(1 << 20)  # a take makes it busy again
    assert pool.release_if_idle() == 0
