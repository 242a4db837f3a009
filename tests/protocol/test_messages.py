"""Messages: msgpack headers plus payload frames; malformed input is a ProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from regrow.errors import ProtocolError
from regrow.protocol.framing import Buffer, FrameDecoder, encode_packet
from regrow.protocol.messages import Msg, get, get_str_list, pack_messages, unpack_messages


def roundtrip(batch: list[tuple[Msg, list[Buffer]]]) -> list[tuple[Msg, list[Buffer]]]:
    """Through the real path: pack, frame, decode, unpack."""
    d = FrameDecoder(max_frames=1 << 20, max_frame_bytes=1 << 40)
    for buf in encode_packet(pack_messages(batch)):
        d.feed(buf)
    (packet,) = d.packets
    return unpack_messages(packet)


def test_round_trip_of_several_messages_with_frames() -> None:
    batch: list[tuple[Msg, list[Buffer]]] = [
        ({"op": "compute", "key": "x-1", "who_has": {"a": ["tcp://h:1"]}, "p": [0, -1]}, [b"fn"]),
        ({"op": "heartbeat"}, []),
        (
            {"op": "put-data", "keys": ["a", "b"], "nf": [2, 1], "blob": b"\x00\xff"},
            [b"a0", bytearray(b"a1"), memoryview(b"b0")],
        ),
        ({"op": "unicode", "text": "héllo ✓", "n": 2**63 - 1, "f": 1.5, "none": None}, []),
    ]
    out = roundtrip(batch)
    assert [m for m, _ in out] == [m for m, _ in batch]
    assert [[bytes(f) for f in fr] for _, fr in out] == [[bytes(f) for f in fr] for _, fr in batch]


def test_int_map_keys_survive() -> None:
    ((msg, _),) = roundtrip([({"op": "x", "m": {1: "a", 2: "b"}}, [])])
    assert msg["m"] == {1: "a", 2: "b"}


def header(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        ([b"\xc1"], "undecodable"),
        ([b"\x92\x01"], "undecodable"),  # truncated
        ([header([]) + b"\x00"], "undecodable"),  # trailing bytes
        ([header({"op": "x"})], "not a list"),
        ([header("hello")], "not a list"),
        ([header([{"op": "x"}])], "pair"),
        ([header([[{"op": "x"}, 0, 1]])], "pair"),
        ([header([[["op", "x"], 0]])], "dict"),
        ([header([[{"key": "x"}, 0]])], "dict"),
        ([header([[{"op": 7}, 0]])], "dict"),
        ([header([[{"op": b"x"}, 0]])], "dict"),
        ([header([[{"op": "x"}, 2]]), b"only one"], "claims frames"),
        ([header([[{"op": "x"}, -1]])], "claims frames"),
        ([header([[{"op": "x"}, "1"]]), b"f"], "claims frames"),
        ([header([[{"op": "x"}, 0]]), b"stray"], "no message claims"),
    ],
)
def test_malformed_headers(packet: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_messages(packet)


def test_get_checks_presence_and_type() -> None:
    msg: Msg = {"op": "task-finished", "key": "k", "nbytes": 10, "keys": ["a", 1]}
    assert get(msg, "key", str) == "k"
    assert get(msg, "nbytes", (int, float)) == 10
    with pytest.raises(ProtocolError, match=r"'task-finished' lacks field 'worker'"):
        get(msg, "worker", str)
    with pytest.raises(ProtocolError, match="should be str, got int"):
        get(msg, "nbytes", str)
    with pytest.raises(ProtocolError, match="should be int or float"):
        get(msg, "key", (int, float))
    with pytest.raises(ProtocolError, match="should hold strings"):
        get_str_list(msg, "keys")
    assert get_str_list({"op": "x", "keys": ["a", "b"]}, "keys") == ["a", "b"]
