"""The wire protocol's schema (protocol.messages): every message round-trips, and what
does not fit its type is a ProtocolError naming the field, before any handler sees it."""

from __future__ import annotations

import math
import typing
from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regrow.errors import ProtocolError
from regrow.protocol import messages as m
from regrow.protocol.framing import Buffer, FrameDecoder, encode_packet
from regrow.protocol.messages import pack_messages, unpack_messages
from security.schema import message  # tests/ is on sys.path under pytest


def roundtrip(
    batch: list[tuple[m.Message, list[Buffer]]], handshake: bool = False
) -> list[tuple[m.Message, list[Buffer]]]:
    """Through the real path: pack, frame, decode, unpack."""
    d = FrameDecoder(max_frames=1 << 20, max_frame_bytes=1 << 40)
    for buf in encode_packet(pack_messages(batch)):
        d.feed(buf)
    (packet,) = d.packets
    return unpack_messages(packet, handshake=handshake)


# ------------------------------------------------------------------ strategies
# ``message(cls)``: a strategy built from the schema itself (msgspec.inspect), bounds
# included, so a field added to a message is covered without touching this file; the
# wire fuzzer makes its messages with the same walk (tests/security/schema.py).
HANDSHAKE = set(typing.get_args(m.Handshake))


@pytest.mark.parametrize("cls", m.MESSAGE_TYPES, ids=lambda c: m.op_of(c))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_message_round_trips(cls: type[m.Message], data: st.DataObject) -> None:
    msg = data.draw(message(cls))
    frames = data.draw(st.lists(st.binary(max_size=16), max_size=3))
    ((out, out_frames),) = roundtrip([(msg, frames)], handshake=cls in HANDSHAKE)
    assert type(out) is cls and out == msg
    assert [bytes(f) for f in out_frames] == frames


@settings(max_examples=50, deadline=None)
@given(
    batch=st.lists(
        st.tuples(
            st.sampled_from([c for c in m.MESSAGE_TYPES if c not in HANDSHAKE]).flatmap(message),
            st.lists(st.binary(max_size=8), max_size=2),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_a_packet_of_several_messages_keeps_them_in_order(
    batch: list[tuple[m.Message, list[bytes]]],
) -> None:
    out = roundtrip([(msg, list(frames)) for msg, frames in batch])
    assert [(msg, [bytes(f) for f in frames]) for msg, frames in out] == batch


def test_the_schema_is_whole() -> None:
    ops = [m.op_of(c) for c in m.MESSAGE_TYPES]
    assert len(ops) == len(set(ops))  # one type per op
    for cls in m.MESSAGE_TYPES:
        assert cls.__doc__, f"{cls.__name__} has no docstring"
        if issubclass(cls, m.Request):
            assert issubclass(m.reply_type(cls), m.Reply)
    # Every message type of the module is in a union (else it could never be received).
    defined = {v for v in vars(m).values() if isinstance(v, type) and issubclass(v, m.Message)} - {
        m.Message,
        m.Reply,
        m.Request,
    }
    assert defined == set(m.MESSAGE_TYPES)


def test_readable_field_names_on_the_wire() -> None:
    (packed,) = pack_messages([(m.TaskFinishedMsg(key="k", run_id=3, nbytes=8), [])])[:1]
    [[wire, n]] = msgpack.unpackb(packed)
    assert wire == {"op": "task-finished", "key": "k", "run": 3, "nbytes": 8} and n == 0


# ------------------------------------------------------------------ hostile input
def header(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def refused(msg: Any, *frames: bytes, handshake: bool = False) -> str:
    """The ProtocolError's text for a packet carrying ``msg`` (a raw msgpack value)."""
    with pytest.raises(ProtocolError) as info:
        unpack_messages([header([[msg, len(frames)]]), *frames], handshake=handshake)
    return str(info.value)


FINISHED = {"op": "task-finished", "key": "k", "run": 1, "nbytes": 8}
TASK = {"k": "x", "d": [], "fnf": 1, "nf": 2}


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        # Unknown op, or none.
        ({"op": "make-me-admin"}, r"Invalid value 'make-me-admin' - at `\$\[0\]\[0\].op`"),
        ({"key": "k"}, "missing required field `op`"),
        ({"op": 7}, r"\.op`"),
        (["op", "ping"], "Expected `object`"),
        # A field of the wrong type, missing, unknown.
        ({**FINISHED, "inline": "not bytes"}, r"Expected `bytes \| null`, got `str` - at .*inline"),
        ({"op": "register-worker", "address": "a", "nthreads": 1, "pid": "abc"}, r"\.pid`"),
        ({"op": "task-finished", "run": 1, "nbytes": 8}, "missing required field `key`"),
        ({**FINISHED, "nbytes2": 1}, "unknown field `nbytes2`"),
        # Floats where an int belongs (inf, NaN, fractions), ints out of bounds.
        ({"op": "submit", "tasks": [{**TASK, "p": math.inf}], "wanted": []}, r"tasks\[0\]\.p`"),
        ({"op": "submit", "tasks": [{**TASK, "r": math.nan}], "wanted": []}, r"tasks\[0\]\.r`"),
        ({"op": "scattered", "keys": [], "replicas": math.inf}, r"\.replicas`"),
        ({"op": "scattered", "keys": [], "replicas": 0}, r"`int` >= 1 - at .*replicas"),
        ({**FINISHED, "nbytes": -1}, r"`int` >= 0 - at .*nbytes"),
        ({**FINISHED, "run": 1.5}, r"\.run`"),
        ({"op": "register-worker", "address": "a", "nthreads": 0}, r"\.nthreads`"),
        # Non-finite or negative floats where seconds belong.
        ({**FINISHED, "duration": math.nan}, r"\.duration`"),
        ({**FINISHED, "duration": math.inf}, r"\.duration`"),
        ({**FINISHED, "duration": -1.0}, r"\.duration`"),
        ({"op": "restart", "timeout": 0}, r"\.timeout`"),
        # Extra nesting: a list where an int or a string belongs, a map for a list.
        ({**FINISHED, "nbytes": [8]}, r"Expected `int`, got `array` - at .*nbytes"),
        ({"op": "who-has", "keys": [["k"]]}, r"keys\[0\]`"),
        ({"op": "who-has", "keys": "not a list"}, r"Expected `array`, got `str`"),
        ({"op": "missing-data", "missing": {"x": "not a list"}}, r"\.missing\[\.\.\.\]`"),
        (
            {"op": "compute", "key": "k", "run": 1, "priority": [[1], 2], "who_has": {}, "fnf": 1},
            r"priority\[0\]`",
        ),
        (
            {"op": "register-worker", "address": "a", "nthreads": 1, "keys": [["k", "8"]]},
            r"keys\[0\]\[1\]`",
        ),
    ],
)
def test_what_does_not_fit_its_type_is_refused_naming_the_field(msg: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_messages([header([[msg, 0]])])


def test_deep_nesting_is_refused_not_a_crash() -> None:
    deep = b"\x91" * 100_000 + b"\x01"  # [[[...[1]...]]], too deep for msgpack to pack
    for msg in (
        {"op": "scheduler-info-reply", "rid": 1, "info": {"x": 0}},  # into an Any field
        {**FINISHED, "nbytes": 0},
    ):
        packed = header([[msg, 0]])
        assert packed.endswith(b"\x00\x00")  # the last field's value 0, then the count
        with pytest.raises(ProtocolError):
            unpack_messages([packed[:-2] + deep + b"\x00"])
    with pytest.raises(ProtocolError):
        unpack_messages([b"\x91" + deep])


def test_the_handshake_decoder_knows_only_the_handshake() -> None:
    assert "Invalid value 'register-client'" in refused(
        {"op": "register-client", "client": "c"}, handshake=True
    )
    assert "Expected `bytes`, got `str`" in refused(
        {"op": "auth", "nonce": "text", "mac": b"x"}, handshake=True
    )
    assert "missing required field `nonce`" in refused({"op": "auth", "mac": b"x"}, handshake=True)
    assert "length <= 64" in refused({"op": "auth", "nonce": b"n" * 65, "mac": b""}, handshake=True)
    # ...and after authentication, the handshake is over.
    assert "Invalid value 'auth'" in refused({"op": "auth", "nonce": b"n", "mac": b"m"})


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        ([b"\xc1"], "undecodable"),
        ([header([[{"op": "ping"}, 0]])[:-3]], "undecodable"),  # truncated
        ([header([]) + b"\x00"], "undecodable"),  # trailing bytes
        ([header({"op": "ping"})], "Expected `array`, got `object`"),
        ([header("hello")], "Expected `array`, got `str`"),
        ([header([{"op": "ping"}])], r"Expected `array`, got `object` - at `\$\[0\]`"),
        ([header([[{"op": "ping"}, 0, 1]])], "length 2"),
        ([header([[{"op": "ping"}, 2]]), b"only one"], "claims frames"),
        ([header([[{"op": "ping"}, -1]])], r"`int` >= 0 - at `\$\[0\]\[1\]`"),
        ([header([[{"op": "ping"}, "1"]]), b"f"], r"\$\[0\]\[1\]"),
        ([header([[{"op": "ping"}, 0]]), b"stray"], "no message claims"),
    ],
)
def test_malformed_packets(packet: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_messages(packet)


def test_an_empty_header_is_no_messages() -> None:
    assert unpack_messages([header([])]) == []
    assert unpack_messages([header([])], handshake=True) == []


def test_senders_build_what_receivers_accept() -> None:
    """Types are what mypy checks at the sender; this shows the encoder refuses nothing a
    receiver would accept, and the decoder gives back the very types."""
    entry = m.TaskEntry(key="x", fn_frames=1, frames=2, priority=-3, workers=["w"], pure=False)
    submit = m.SubmitMsg(tasks=[entry], wanted=["x"], seq=1)
    ((out, _),) = roundtrip([(submit, [b"f", b"a"])])
    assert isinstance(out, m.SubmitMsg) and out.tasks[0] == entry
    # Defaults stay off the wire.
    wire = msgpack.unpackb(msgspec.msgpack.encode(m.TaskEntry(key="x", fn_frames=1, frames=2)))
    assert wire == {"k": "x", "fnf": 1, "nf": 2}
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"k": "x"}, m.TaskEntry)


def test_a_message_that_cannot_be_encoded_spoils_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender's bug (an int past 64 bits) loses that message alone, logged; a reply
    becomes an error reply, so its requester is not left waiting."""
    good = m.StartedMsg(keys=["a"])
    batch: list[tuple[m.Message, list[Buffer]]] = [
        (m.HeartbeatMsg(memory=2**70), []),
        (m.PingReply(rid=7, pid=2**70), [b"dropped with it"]),
        (good, [b"kept"]),
    ]
    out = roundtrip(batch)
    assert [type(msg) for msg, _ in out] == [m.ErrorReply, m.StartedMsg]
    error, _ = out[0]
    assert isinstance(error, m.ErrorReply) and error.rid == 7 and "ping-reply" in error.error
    assert out[1] == (good, [b"kept"])
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]
