"""Hypothesis against the sans-IO parts a stranger reaches first: the frame decoder (every
byte a peer sends goes through it, before authentication too) and the handshake's MACs.

The decoder, whatever it is fed and however the stream is split: yields packets or
raises ProtocolError, nothing else; never reserves memory beyond its limits for what a
peer merely announces; and gives back valid packets exactly, under every split.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import random
import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from regrow.errors import ProtocolError
from regrow.protocol import framing, handshake
from regrow.protocol.framing import FrameDecoder, encode_packet

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Sizes where the decoder changes paths: its staging buffer, the direct-read threshold,
# the size from which frames get a mapping of their own.
STAGING = 256 * 1024
DIRECT = STAGING // 2
EDGES = [0, 1, 7, 8, 4095, 4096, 4097, DIRECT - 1, DIRECT, DIRECT + 1, STAGING + 3]

# (max_frames, max_frame_bytes): before authentication, a small peer, the scheduler's.
LIMITS = st.sampled_from([(1, 4096), (3, 1 << 16), (1 << 20, 1 << 30)])


def decoder(max_frames: int, max_frame_bytes: int, grown: bool = False) -> FrameDecoder:
    """A decoder with these limits: built with them, or ``grown`` to them from those
    before authentication (as a connection's decoder is)."""
    kwargs: dict[str, Any] = {"max_frames": max_frames, "max_frame_bytes": max_frame_bytes}
    if "max_header_bytes" in inspect.signature(FrameDecoder).parameters:
        kwargs["max_header_bytes"] = max_frame_bytes
    if not grown:
        return FrameDecoder(**kwargs)
    dec = FrameDecoder(max_frames=1, max_frame_bytes=4096)
    dec.set_limits(**kwargs)
    return dec


@functools.lru_cache(maxsize=512)
def blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def packet_bytes(frames: list[bytes]) -> bytes:
    return b"".join(bytes(b) for b in encode_packet(frames))


def drive(dec: FrameDecoder, data: bytes, cuts: list[int], partial: list[int]) -> list[list[bytes]]:
    """Feed ``data`` cut at ``cuts``, as asyncio's BufferedProtocol does: into the buffer
    ``get_buffer`` offers, each time filling at most ``partial[i]`` bytes of it. Returns
    the packets, as bytes."""
    out: list[list[bytes]] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    i = 0
    for lo, hi in itertools.pairwise(bounds):
        view = memoryview(data)[lo:hi]
        while view.nbytes:
            target = dec.get_buffer(-1)
            assert target.nbytes > 0, "get_buffer offered no room"
            limit = partial[i % len(partial)] if partial else view.nbytes
            i += 1
            n = max(1, min(target.nbytes, view.nbytes, limit))
            target[:n] = view[:n]
            view = view[n:]
            dec.buffer_updated(n)
            while dec.packets:
                out.append([bytes(f) for f in dec.packets.popleft()])
    return out


@contextlib.contextmanager
def reservations() -> Iterator[list[int]]:
    """The sizes of the frame buffers the decoder reserves (before their bytes arrive)."""
    sizes: list[int] = []
    real = framing.uninitialized

    def spy(n: int) -> memoryview:
        sizes.append(n)
        return real(n)

    with mock.patch.object(framing, "uninitialized", spy):
        yield sizes


def fed_safely(
    limits: tuple[int, int], data: bytes, cuts: list[int], partial: list[int]
) -> list[list[bytes]]:
    """Feed ``data``: packets, or none after a ProtocolError; any other exception, and any
    reservation or Python allocation out of proportion to the limits, fails."""
    max_frames, max_frame_bytes = limits
    dec = decoder(max_frames, max_frame_bytes)
    packets: list[list[bytes]] = []
    tracemalloc.start()
    try:
        with reservations() as sizes, contextlib.suppress(ProtocolError):
            packets = drive(dec, data, cuts, partial)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    largest = max(max_frame_bytes, 8 * max_frames)
    assert all(0 <= n <= largest for n in sizes), f"reserved {max(sizes)} bytes, limit {largest}"
    # What a peer can make it hold: what it sent (copied once or twice), one frame being
    # received, and the staging buffer.
    bound = 3 * len(data) + min(largest, max(sizes, default=0)) + 2 * STAGING + (1 << 16)
    assert peak <= bound, f"peak {peak} bytes of Python memory for {len(data)} bytes fed"
    return packets


# ------------------------------------------------------------------ random streams


@FUZZ
@given(
    limits=LIMITS,
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
    partial=st.lists(st.integers(1, 600), max_size=4),
)
def test_random_bytes(
    limits: tuple[int, int], data: bytes, cuts: list[int], partial: list[int]
) -> None:
    fed_safely(limits, data, cuts, partial)


@FUZZ
@given(
    limits=LIMITS,
    count=st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
    lengths=st.lists(
        st.one_of(st.sampled_from(EDGES), st.integers(0, 2**64 - 1)), min_size=0, max_size=4
    ),
    tail=st.binary(max_size=2000),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
)
def test_random_prefixes(
    limits: tuple[int, int], count: int, lengths: list[int], tail: bytes, cuts: list[int]
) -> None:
    """A prefix that parses (a count, lengths of any size), then anything."""
    data = struct.pack(f"!I{len(lengths)}Q", count, *lengths) + tail
    fed_safely(limits, data, cuts, [])


# ------------------------------------------------------------------ valid packets

FRAME = st.tuples(st.integers(0, 64), st.one_of(st.sampled_from(EDGES), st.integers(0, 300)))
PACKETS = st.lists(st.lists(FRAME, min_size=1, max_size=4), min_size=1, max_size=4)


@FUZZ
@given(
    packets=PACKETS,
    cuts=st.lists(st.integers(0, 2**20), max_size=10),
    partial=st.lists(st.integers(1, 70_000), max_size=4),
    grown=st.booleans(),
)
def test_valid_packets_round_trip(
    packets: list[list[tuple[int, int]]], cuts: list[int], partial: list[int], grown: bool
) -> None:
    frames = [[blob(seed, n) for seed, n in p] for p in packets]
    data = b"".join(packet_bytes(p) for p in frames)
    dec = decoder(1 << 20, 1 << 30, grown)
    assert drive(dec, data, cuts, partial) == frames
    assert dec.idle


def test_every_split_of_a_small_stream() -> None:
    frames = [[b"h", b"", b"payload"], [b"\x90"], [bytes(range(256)) * 3, b"x"]]
    data = b"".join(packet_bytes(p) for p in frames)
    for cut in range(len(data) + 1):
        assert drive(decoder(4, 4096), data, [cut], []) == frames
    for cut in range(0, len(data) + 1, 7):
        for partial in (1, 2, 3, 5, 8):
            assert drive(decoder(4, 4096), data, [cut, cut * 3], [partial]) == frames


@settings(max_examples=30, deadline=None)
@given(size=st.sampled_from([DIRECT, STAGING + 1, (1 << 20) + 5]), step=st.integers(4096, 1 << 18))
def test_large_frames_round_trip(size: int, step: int) -> None:
    frames = [[b"head", blob(size, size)], [b"next"]]
    data = b"".join(packet_bytes(p) for p in frames)
    assert drive(decoder(4, 1 << 30), data, list(range(0, len(data), step)), []) == frames


# ------------------------------------------------------------------ corrupted lengths


@FUZZ
@given(
    packets=PACKETS,
    where=st.integers(0, 10_000),
    value=st.one_of(
        st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**40, 2**63, 2**64 - 1]),
        st.integers(0, 2**64 - 1),
    ),
    cuts=st.lists(st.integers(0, 2**20), max_size=6),
    limits=LIMITS,
)
def test_corrupted_lengths(
    packets: list[list[tuple[int, int]]],
    where: int,
    value: int,
    cuts: list[int],
    limits: tuple[int, int],
) -> None:
    """A valid stream whose frame count or one frame length is overwritten."""
    frames = [[blob(seed, n) for seed, n in p] for p in packets]
    target = where % len(frames)
    chunks = [packet_bytes(p) for p in frames]
    bad = bytearray(chunks[target])
    n = len(frames[target])
    field = where % (n + 1)
    if field == 0:
        struct.pack_into("!I", bad, 0, value % 2**32)
    else:
        struct.pack_into("!Q", bad, 4 + 8 * (field - 1), value)
    chunks[target] = bytes(bad)
    fed_safely(limits, b"".join(chunks), cuts, [])


@pytest.mark.parametrize(
    ("prefix", "limits"),
    [
        (struct.pack("!IQ", 1, 1 << 40), (1, 4096)),
        (struct.pack("!I", 1 << 31), (1, 4096)),
        (struct.pack("!IQ", 1, 16 << 30), (1 << 20, 1 << 30)),
        (struct.pack("!IQQ", 2, 10, 16 << 30), (1 << 20, 1 << 30)),
        (struct.pack("!I", (1 << 20) + 1), (1 << 20, 1 << 30)),
    ],
)
def test_oversize_announcements_refused_at_once(prefix: bytes, limits: tuple[int, int]) -> None:
    with reservations() as sizes, pytest.raises(ProtocolError):
        drive(decoder(*limits), prefix, [], [])
    assert not sizes, f"reserved {sizes} before refusing"


def test_header_limit() -> None:
    if "max_header_bytes" not in inspect.signature(FrameDecoder).parameters:
        pytest.fail("FrameDecoder takes no max_header_bytes (Settings.max_header_bytes)")
    dec = FrameDecoder(max_frames=4, max_frame_bytes=1 << 30, max_header_bytes=1 << 20)
    with reservations() as sizes, pytest.raises(ProtocolError, match="header"):
        dec.feed(struct.pack("!IQ", 1, (1 << 20) + 1))
    assert not sizes
    dec = FrameDecoder(max_frames=4, max_frame_bytes=1 << 30, max_header_bytes=1 << 20)
    dec.feed(packet_bytes([b"h", b"x" * ((1 << 20) + 1)]))  # only frame 0 is a header
    assert len(dec.packets) == 1


# ------------------------------------------------------------------ handshake

TOKENS = st.one_of(
    st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
)
NONCES = st.binary(min_size=0, max_size=64)
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=64),
    st.lists(st.integers(), max_size=3),
    st.builds(bytearray, st.binary(max_size=40)),
    st.builds(memoryview, st.binary(max_size=40)),
)


@FUZZ
@given(token=TOKENS, other=TOKENS, s=NONCES, c=NONCES)
def test_macs(token: str | None, other: str | None, s: bytes, c: bytes) -> None:
    mac = handshake.client_mac(token, s, c)
    assert isinstance(mac, bytes) and len(mac) == 32
    assert handshake.verify(mac, handshake.client_mac(token, s, c))
    assert handshake.verify(handshake.server_mac(token, s, c), handshake.server_mac(token, s, c))
    # A MAC of one side is never accepted for the other (no reflection).
    assert not handshake.verify(mac, handshake.server_mac(token, s, c))
    assert not handshake.verify(mac, handshake.server_mac(token, c, s))
    if (token or "") != (other or ""):
        assert not handshake.verify(mac, handshake.client_mac(other, s, c))
        assert not handshake.verify(
            handshake.server_mac(token, s, c), handshake.server_mac(other, s, c)
        )


@FUZZ
@given(token=TOKENS, s=NONCES, c=NONCES, given_=ANYTHING)
def test_verify_takes_anything(token: str | None, s: bytes, c: bytes, given_: object) -> None:
    """What a peer sends as its MAC may be any msgpack value: refused, never an error."""
    expected = handshake.client_mac(token, s, c)
    assume(given_ != expected)
    assert handshake.verify(expected, given_) is False


@FUZZ
@given(token=TOKENS, s=NONCES, c=NONCES, flip=st.integers(0, 255))
def test_one_bit_off_is_refused(token: str | None, s: bytes, c: bytes, flip: int) -> None:
    mac = bytearray(handshake.client_mac(token, s, c))
    mac[flip % 32] ^= 1 << (flip % 8)
    assert not handshake.verify(handshake.client_mac(token, s, c), bytes(mac))
    assert not handshake.verify(handshake.client_mac(token, s, c), bytes(mac[:31]))


def test_nonces_are_fresh() -> None:
    nonces = {handshake.new_nonce() for _ in range(1000)}
    assert len(nonces) == 1000 and all(len(n) == 32 for n in nonces)
