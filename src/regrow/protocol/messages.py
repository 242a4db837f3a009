"""Messages: msgpack headers plus payload frames, and checked field access.

A packet's frame 0 is a msgpack list of ``[message, n_payload_frames]`` pairs;
the payload frames follow in order. Several messages share one packet, which is
how many small messages are batched into one write.

Every message is a dict with a string ``op``. Handlers read fields through
``get`` so a malformed message fails with a ProtocolError that names the op and
the field, never with a KeyError deep in a handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgpack

from regrow.errors import ProtocolError
from regrow.protocol.framing import Buffer

Msg = dict[str, Any]
T = TypeVar("T")


def pack_messages(batch: Sequence[tuple[Msg, Sequence[Buffer]]]) -> list[Buffer]:
    header = msgpack.packb([[msg, len(frames)] for msg, frames in batch], use_bin_type=True)
    frames: list[Buffer] = [header]
    for _, payload in batch:
        frames.extend(payload)
    return frames


def unpack_messages(packet: Sequence[Buffer]) -> list[tuple[Msg, list[Buffer]]]:
    try:
        header = msgpack.unpackb(packet[0], raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable message header: {exc}") from None
    if not isinstance(header, list):
        raise ProtocolError("message header is not a list")
    out: list[tuple[Msg, list[Buffer]]] = []
    pos = 1
    for item in header:
        if not (isinstance(item, list) and len(item) == 2):
            raise ProtocolError("message entry is not a [message, n_frames] pair")
        msg, nframes = item
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ProtocolError("message is not a dict with a string 'op'")
        if not isinstance(nframes, int) or nframes < 0 or pos + nframes > len(packet):
            raise ProtocolError(f"message {msg['op']!r} claims frames the packet lacks")
        out.append((msg, list(packet[pos : pos + nframes])))
        pos += nframes
    if pos != len(packet):
        raise ProtocolError("packet carries frames no message claims")
    return out


def get(msg: Msg, name: str, type_: type[T] | tuple[type, ...]) -> T:
    """The field ``name`` of ``msg``, checked to be of ``type_``."""
    try:
        value = msg[name]
    except KeyError:
        raise ProtocolError(f"message {msg.get('op')!r} lacks field {name!r}") from None
    if not isinstance(value, type_):
        raise ProtocolError(
            f"message {msg.get('op')!r}: field {name!r} should be {_name(type_)}, "
            f"got {type(value).__name__}"
        )
    return value  # type: ignore[return-value]


def get_str_list(msg: Msg, name: str) -> list[str]:
    value = get(msg, name, list)
    if not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"message {msg.get('op')!r}: field {name!r} should hold strings")
    return value


def _name(type_: type | tuple[type, ...]) -> str:
    if isinstance(type_, tuple):
        return " or ".join(t.__name__ for t in type_)
    return type_.__name__
