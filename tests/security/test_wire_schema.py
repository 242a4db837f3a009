"""The wire fuzzer's messages come from the schema (protocol.messages): its ops, who
sends which, and well-typed messages that the receiver's validation accepts, but for
the share the fuzzer breaks on purpose. No cluster: the receiver's decoding only."""

from __future__ import annotations

import collections
import random
import typing

import pytest

from regrow.errors import ProtocolError
from regrow.protocol import messages as pm
from regrow.protocol.framing import FrameDecoder

from . import wire


def accepted(msg: wire.Msg, frames: list[bytes], handshake: bool = False) -> bool:
    """Whether a receiver's validation (protocol.messages) accepts the packet."""
    decoder = FrameDecoder(max_frames=1 << 20, max_frame_bytes=1 << 30)
    decoder.feed(wire.encode((msg, frames)))
    (packet,) = decoder.packets
    try:
        pm.unpack_messages(packet, handshake=handshake)
    except ProtocolError:
        return False
    return True


def test_the_ops_are_the_schemas() -> None:
    union = {pm.op_of(c) for c in typing.get_args(pm.AnyMessage)}
    assert wire.FORBIDDEN_OPS.issubset(union)
    assert set(wire.OPS) == union - wire.FORBIDDEN_OPS
    named = [*wire.REGISTER, *wire.REGISTERED, *wire.NANNY_OPS, "ping", "submit", "auth"]
    assert set(named) <= set(wire.MESSAGES), "an op named by the fuzzer left the schema"
    assert {"k", "nf", "run", "nbytes", "who_has", "rid"} <= set(wire.FIELDS)


def test_who_sends_what_follows_the_schemas_grouping() -> None:
    sections = wire.sections()
    assert {"client -> scheduler", "worker -> scheduler"} <= set(sections)
    client, worker = set(wire.CLIENT_OPS), set(wire.WORKER_OPS)
    # What the fuzzer sent when its lists were written by hand, at least.
    assert {"submit", "release-keys", "cancel", "who-has", "restart", "ping"} <= client
    assert {"heartbeat", "task-finished", "task-erred", "steal-response"} <= worker
    for op in client | worker | set(wire.NANNY_OPS):
        assert not issubclass(wire.MESSAGES[op], pm.Reply), op
        assert op in wire.OPS, op
    assert not client & worker
    assert not (client | worker) & {*wire.REGISTER, *wire.FORBIDDEN_OPS}


@pytest.mark.parametrize("seed", range(3))
def test_unbroken_messages_are_well_typed(seed: int) -> None:
    """Every op, drawn within its bounds (edges included), passes validation; a
    submission's frame counts add up to its frames."""
    values = wire.Values(random.Random(seed))
    values.broken = 0.0
    for op in wire.OPS:
        for _ in range(40):
            msg, frames = values.msg([op])
            assert msg["op"] == op
            assert wire.packable(msg) and accepted(msg, frames), (op, msg)
            if op == "submit":
                assert sum(t["nf"] for t in msg["tasks"]) == len(frames)
    for _ in range(40):
        msg, frames = values.msg(["auth"])
        assert accepted(msg, frames, handshake=True), msg


@pytest.mark.parametrize(("broken", "lo", "hi"), [(0.0, 0.0, 0.0), (0.25, 0.12, 0.3), (1, 0.6, 1)])
def test_a_share_of_messages_is_broken(broken: float, lo: float, hi: float) -> None:
    """``broken``: the share broken (a few breakages, such as frames that do not match,
    or a missing field that has a default, pass the header's validation)."""
    values = wire.Values(random.Random(7))
    values.broken = broken
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(2000):
        msg, frames = values.msg()
        seen["accepted" if wire.packable(msg) and accepted(msg, frames) else "refused"] += 1
    assert lo <= seen["refused"] / 2000 <= hi, seen
