"""The wire format as the security tests speak it, in one place to adapt.

Messages are msgpack maps with an ``"op"`` field and readable field names; a packet's
frame 0 is the msgpack list of ``[message, n_payload_frames]`` pairs, the payload frames
follow (protocol.messages, protocol.framing). Messages here are plain maps, not
protocol.messages' structs, so that they can be broken in every way a peer could.

Also: a raw, blocking peer (``RawPeer``) that performs the real HMAC handshake with
protocol.handshake, and random values: random msgpack, and random messages made from
the schema itself (protocol.messages: its ops, their fields, types and bounds, and its
grouping by sender) with the walk tests/protocol/test_messages.py uses (``schema``).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
import operator
import random
import re
import socket
import struct
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import msgpack
import msgspec
import msgspec.inspect as mi

from regrow.errors import ProtocolError
from regrow.protocol import handshake
from regrow.protocol import messages as pm
from regrow.protocol.comm import parse_address
from regrow.protocol.framing import FrameDecoder, encode_packet
from regrow.protocol.serialize import dumps, dumps_with_refs

from . import schema

Msg = dict[str, Any]
Frames = Sequence[bytes | bytearray | memoryview]


# ------------------------------------------------------------------ encoding


def encode(*msgs: Msg | tuple[Msg, Frames]) -> bytes:
    """One packet, as bytes, carrying ``msgs`` (each a message or (message, frames))."""
    batch = [m if isinstance(m, tuple) else (m, ()) for m in msgs]
    header = msgpack.packb([[m, len(f)] for m, f in batch], use_bin_type=True)
    frames: list[Any] = [header]
    for _, f in batch:
        frames.extend(f)
    return b"".join(bytes(b) for b in encode_packet(frames))


def decode(packet: Sequence[Any]) -> list[tuple[Msg, list[Any]]]:
    """A received packet's messages with their frames."""
    header = msgpack.unpackb(bytes(packet[0]), raw=False, strict_map_key=False)
    out: list[tuple[Msg, list[Any]]] = []
    pos = 1
    for msg, n in header:
        out.append((msg, list(packet[pos : pos + n])))
        pos += n
    return out


def message(op: str, **fields: Any) -> Msg:
    return {"op": op, **fields}


def register_client(client_id: str) -> Msg:
    return message("register-client", client=client_id, reattach=False)


def task_entry(key: str, fn: Callable[..., Any], *args: Any) -> tuple[Msg, list[Any]]:
    """A task as the client submits it: its entry and its frames (function, arguments)."""
    fn_frames = dumps(fn)
    arg_frames, deps = dumps_with_refs((args, {}), lambda _: None)
    frames = [*fn_frames, *arg_frames]
    entry = {"k": key, "d": deps, "fnf": len(fn_frames), "nf": len(frames), "pure": False}
    return entry, frames


def submit(tasks: Iterable[tuple[Msg, list[Any]]], **extra: Any) -> tuple[Msg, list[Any]]:
    """One "submit" message wanting every task it carries."""
    entries: list[Msg] = []
    frames: list[Any] = []
    for entry, f in tasks:
        entries.append(entry)
        frames.extend(f)
    return message("submit", tasks=entries, wanted=[e["k"] for e in entries], **extra), frames


# ------------------------------------------------------------------ a raw peer


class RawPeer:
    """A blocking TCP connection to a regrow server, driven by hand."""

    def __init__(
        self, address: str, *, source: str | None = None, timeout: float = 10.0, rcvbuf: int = 0
    ) -> None:
        host, port = parse_address(address)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                # Before connecting, so that the window offered to the peer stays small.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.port = self.sock.getsockname()[1]
        self.decoder = FrameDecoder(max_frames=1 << 20, max_frame_bytes=1 << 30)
        # (Again: a decoder may start with a small staging buffer, grown by set_limits.)
        self.decoder.set_limits(max_frames=1 << 20, max_frame_bytes=1 << 30)
        self.inbox: list[tuple[Msg, list[Any]]] = []

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *msgs: Msg | tuple[Msg, Frames]) -> None:
        self.send_raw(encode(*msgs))

    def recv(self) -> Msg:
        return self.recv_with_frames()[0]

    def recv_with_frames(self) -> tuple[Msg, list[Any]]:
        while not self.inbox:
            while not self.decoder.packets:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise EOFError("the server closed the connection")
                self.decoder.feed(data)
            self.inbox.extend(decode(self.decoder.packets.popleft()))
        return self.inbox.pop(0)

    def recv_until(self, pred: Callable[[Msg], bool]) -> Msg:
        while True:
            msg = self.recv()
            if pred(msg):
                return msg

    def handshake(self, token: str | None) -> Msg:
        """The client's half of the real HMAC handshake: the server's last word."""
        hello = self.recv()
        assert hello["op"] == "hello", hello
        cnonce = handshake.new_nonce()
        self.send(auth_message(token, hello["nonce"], cnonce))
        reply = self.recv()
        if reply["op"] == "welcome":
            assert handshake.verify(
                handshake.server_mac(token, hello["nonce"], cnonce), reply["mac"]
            ), "the server does not know the token"
        return reply

    def wait_closed(self, timeout: float) -> float | None:
        """Read (and drop) whatever comes until the server closes the connection: the
        seconds that took, or None if it was still open after ``timeout`` seconds."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - start
            except TimeoutError:
                return None
            if not data:
                return time.monotonic() - start


def auth_message(token: str | None, server_nonce: bytes, client_nonce: bytes) -> Msg:
    mac = handshake.client_mac(token, server_nonce, client_nonce)
    return message("auth", nonce=client_nonce, mac=mac)


def authenticated(address: str, token: str, **kwargs: Any) -> RawPeer:
    peer = RawPeer(address, **kwargs)
    try:
        reply = peer.handshake(token)
        assert reply["op"] == "welcome", reply
    except BaseException:
        peer.close()
        raise
    return peer


def packet_prefix(*lengths: int, n_frames: int | None = None) -> bytes:
    """A packet's prefix: its frame count, then the lengths of its frames."""
    n = len(lengths) if n_frames is None else n_frames
    return struct.pack(f"!I{len(lengths)}Q", n, *lengths)


# ------------------------------------------------------------------ the schema

# Every message type (the union a receiver validates against, and the handshake's), by op.
MESSAGES: dict[str, type[pm.Message]] = {pm.op_of(c): c for c in pm.MESSAGE_TYPES}
# Ops a fuzzer must not send: they stop the scheduler on purpose.
FORBIDDEN_OPS = frozenset({"shutdown"})
# What a peer may send once authenticated: the union's ops (the handshake's are over).
OPS = sorted({pm.op_of(c) for c in typing.get_args(pm.AnyMessage)} - FORBIDDEN_OPS)
# Every field name of the schema (messages' and nested records'), as on the wire: what
# unknown-field mutations add, to aim at names handlers read.
FIELDS = sorted(
    {
        f.encode_name
        for c in vars(pm).values()
        if isinstance(c, type) and issubclass(c, msgspec.Struct)
        for f in msgspec.structs.fields(c)
    }
)
TASK_FIELDS = [f.encode_name for f in msgspec.structs.fields(pm.TaskEntry)]

REGISTER = ("register-client", "register-worker", "register-nanny")
REGISTERED = ("client-registered", "worker-registered", "nanny-registered")


def sections() -> dict[str, list[str]]:
    """The schema's grouping: the ops under each ``# ---- <title>`` header of
    protocol.messages (``client -> scheduler``...), by title, replies left out (those
    come from the section's receiver)."""
    source = inspect.getsource(pm)
    headers = [
        (n, m.group(1))
        for n, line in enumerate(source.splitlines(), 1)
        if (m := re.fullmatch(r"# -{3,} (.+)", line))
    ]
    where = {c.name: c.lineno for c in ast.parse(source).body if isinstance(c, ast.ClassDef)}
    out: dict[str, list[str]] = {}
    for cls in pm.MESSAGE_TYPES:
        if not issubclass(cls, pm.Reply):
            title = max(h for h in headers if h[0] < where[cls.__name__])[1]
            out.setdefault(title, []).append(pm.op_of(cls))
    return out


def _sent_to_scheduler(role: str) -> list[str]:
    ops = sections().get(f"{role} -> scheduler", [])
    return [op for op in ops if op not in REGISTER and op not in FORBIDDEN_OPS]


# What each kind of peer sends the scheduler once registered: its section's messages;
# a client also pings (an "any to any" request). The nanny's section goes both ways:
# a nanny sends only this.
CLIENT_OPS = [*_sent_to_scheduler("client"), "ping"]
WORKER_OPS = _sent_to_scheduler("worker")
NANNY_OPS = ["worker-died"]


# ------------------------------------------------------------------ random values

# Keys and addresses fuzzed messages share, so that they meet each other's tasks and
# fake workers (never the legitimate ones: those have other names). Which string fields
# draw from them, by wire name (``name{}``: a map's keys); other strings are random.
KEYS = [f"fz-{i}" for i in range(40)]
ADDRESSES = [f"tcp://127.0.0.1:{i}" for i in range(1, 6)]
POOLS = {
    **dict.fromkeys(["key", "keys", "k", "d", "wanted", "dependency", "missing{}"], KEYS),
    **dict.fromkeys(
        ["address", "nanny", "worker", "workers", "holders", "w", "missing"], ADDRESSES
    ),
}
EDGE = 0.25  # how often a well-typed value is drawn at its type's edges

Draw = Callable[[], Any]


def _small_result() -> bytes:
    return dumps(12345)[0]  # what a worker sends inline for a small int


class Draws(schema.Maker[Draw]):
    """Seeded random draws of well-typed wire values (structs as maps, with their wire
    field names and ``op``), within the schema's bounds, at their edges now and then."""

    # Optional fields a struct's draw includes (a task pinned to fake workers, or
    # waiting for keys that never come, runs nowhere: most tasks are plain).
    OPTIONAL: ClassVar[dict[type, float]] = {pm.TaskEntry: 0.15}

    def __init__(self, values: Values) -> None:
        self.values = values
        self.rng = values.rng

    def integer(self, lo: int, hi: int) -> Draw:
        edges = [v for v in (lo, lo + 1, hi - 1, hi, 0, 1, 2**31, 2**32) if lo <= v <= hi]
        a = min(max(lo, 1), hi)
        b = max(min(hi, 99), a)
        return lambda: self.rng.choice(edges) if self.edge() else self.rng.randint(a, b)

    def floating(
        self, lo: float | None, hi: float | None, exclude_min: bool, exclude_max: bool
    ) -> Draw:
        def fits(x: float) -> bool:
            above = lo is None or (x > lo if exclude_min else x >= lo)
            return above and (hi is None or (x < hi if exclude_max else x <= hi))

        edges = [x for x in (lo, hi, 0.0, -0.0, 5e-324, 1e-300, 1e9) if x is not None and fits(x)]
        a = max(lo if lo is not None else -1e6, 0.001)
        b = max(min(hi if hi is not None else 1e6, 2.0), a)

        def draw() -> float:
            x = self.rng.uniform(a, b)
            return self.rng.choice(edges) if edges and self.edge() else x if fits(x) else a

        return draw

    def boolean(self) -> Draw:
        return lambda: self.rng.random() < 0.5

    def text(self, lo: int, hi: int | None, field: str) -> Draw:
        pool = POOLS.get(field)
        r = self.rng

        def draw() -> str:
            if pool is ADDRESSES and self.edge():
                s = r.choice(["", "nowhere", "tcp://[::1]:1", self.values.text()])
            elif pool is not None:
                s = self.values.text() if self.edge() else r.choice(pool)
            else:
                s = (
                    r.choice(["", "x" * 3000, self.values.text()])
                    if self.edge()
                    else self.values.text()
                )
            return s[:hi].ljust(lo, "x")

        return draw

    def binary(self, lo: int, hi: int | None, field: str) -> Draw:
        r = self.rng
        sizes = [n for n in (0, 1, 31, 32, 33, 64, 300) if lo <= n <= (hi if hi is not None else n)]
        size = min(max(32, lo), hi if hi is not None else 32)

        def draw() -> bytes:
            if field == "inline" and not self.edge():
                return _small_result()
            return r.randbytes(r.choice([*sizes, lo]) if self.edge() else size)

        return draw

    def none(self) -> Draw:
        return lambda: None

    def anything(self) -> Draw:
        return lambda: self.values.value(2)

    def sequence(self, item: Draw, lo: int, hi: int | None) -> Draw:
        def draw() -> list[Any]:
            n = self.rng.choice([0, 1, 500] if self.edge() else [1, 2, 3])
            return [item() for _ in range(min(max(n, lo), hi if hi is not None else n))]

        return draw

    def fixed(self, items: list[Draw]) -> Draw:
        return lambda: [item() for item in items]

    def mapping(self, key: Draw, value: Draw, lo: int, hi: int | None) -> Draw:
        def draw() -> dict[Any, Any]:
            n = self.rng.randrange(4)
            return {key(): value() for _ in range(min(max(n, lo), hi if hi is not None else n))}

        return draw

    def one_of(self, options: list[Draw]) -> Draw:
        return lambda: self.rng.choice(options)()

    def struct(self, t: mi.StructType, fields: list[tuple[mi.Field, Draw]]) -> Draw:
        optional = self.OPTIONAL.get(t.cls, 0.5)

        def draw() -> Msg:
            out: Msg = {} if t.tag is None else {str(t.tag_field): t.tag}
            for f, value in fields:
                if f.required or self.rng.random() < optional:
                    out[f.encode_name] = value()
            return out

        return draw

    def edge(self) -> bool:
        return self.rng.random() < EDGE


class Values:
    """Random msgpack values of every type, and random messages made from the schema,
    from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.ops = OPS
        # The share of messages ``msg`` breaks (a strict receiver drops their sender).
        self.broken = 0.25
        self._draws = Draws(self)
        self._made: dict[type, Draw] = {}

    def atom(self) -> Any:
        r = self.rng
        kind = r.randrange(14)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.randint(-5, 5)
        if kind == 3:  # the extremes msgpack can carry
            return r.choice([2**64 - 1, 2**63, 2**63 - 1, -(2**63), 2**32, -(2**31) - 1])
        if kind == 4:
            return r.choice([math.inf, -math.inf, math.nan, -0.0, 1e308, 5e-324])
        if kind == 5:
            return r.uniform(-1e6, 1e6)
        if kind == 6:
            return self.text()
        if kind == 7:
            return r.randbytes(r.choice([0, 1, 8, 32, 300]))
        if kind == 8:
            return r.choice(["", "\x00", "\ud7ff\ue000", "tcp://127.0.0.1:1", "x" * 5000])
        if kind == 9:
            return msgpack.ExtType(r.randrange(128), r.randbytes(r.randrange(6)))
        if kind == 10:
            return r.choice(self.ops)
        if kind == 11:
            return r.randint(-(2**63), 2**64 - 1)
        if kind == 12:
            return r.randint(0, 2000)
        return r.choice(KEYS)

    def text(self) -> str:
        r = self.rng
        alphabet = "abcxyz-_:/.0123456789 é€😀\t"
        return "".join(r.choice(alphabet) for _ in range(r.randrange(12)))

    def value(self, depth: int = 3) -> Any:
        """Any msgpack value: atoms, lists, maps (keys of any type), deep nesting."""
        r = self.rng
        if depth <= 0 or r.random() < 0.55:
            return self.atom()
        kind = r.randrange(4)
        if kind == 0:
            return [self.value(depth - 1) for _ in range(r.randrange(5))]
        if kind == 1:
            return {self.field(): self.value(depth - 1) for _ in range(r.randrange(5))}
        if kind == 2:  # deep nesting
            v: Any = self.atom()
            for _ in range(r.randrange(10, 200)):
                v = [v]
            return v
        return [self.text() for _ in range(r.randrange(6))]  # a well-typed str list

    def field(self) -> Any:
        r = self.rng
        if r.random() < 0.8:
            return r.choice(FIELDS) if r.random() < 0.5 else self.text()
        return r.choice([0, -1, 2**63, None, True, 1.5, b"bin"])

    # -- well-typed values, made from the schema --------------------------------
    def of(self, cls: type) -> Any:
        """A well-typed wire value of the message or record type ``cls``: a map."""
        made = self._made.get(cls)
        if made is None:
            made = self._made[cls] = schema.walk(mi.type_info(cls), self._draws)
        return made()

    def tasks(self) -> tuple[list[Msg], list[bytes]]:
        """Task entries whose frame counts add up, and their frames: real tasks (they run
        on the worker) or frames of random bytes (they fail to unpickle there)."""
        r = self.rng
        entries: list[Msg] = []
        frames: list[bytes] = []
        for _ in range(r.randrange(4)):
            entry = self.of(pm.TaskEntry)
            if r.random() < 0.8:
                real, f = task_entry(entry["k"], operator.add, r.randrange(100), r.randrange(100))
                f = [bytes(x) for x in f]
                entry["fnf"] = real["fnf"]
            else:
                f = [r.randbytes(r.randrange(40)) for _ in range(r.randint(2, 3))]
                entry["fnf"] = 1
            entry["nf"] = len(f)
            entries.append(entry)
            frames.extend(f)
        return entries, frames

    def msg(self, ops: Sequence[str] | None = None) -> tuple[Msg, list[bytes]]:
        """A random message: well-typed for one of ``ops`` (default: any the scheduler
        may receive), made from the schema; then, for a ``broken`` share of them, broken:
        a field of the wrong type or missing, an unknown field or op, bad frames..."""
        r = self.rng
        op = r.choice(list(ops) if ops is not None else self.ops)
        m: Msg = self.of(MESSAGES[op])
        frames: list[bytes] = []
        if op == "submit":
            m["tasks"], frames = self.tasks()
            if r.random() < 0.8:
                m["wanted"] = [t["k"] for t in m["tasks"]]
        elif op == "task-erred":
            frames = [r.randbytes(20), r.randbytes(20)]  # its exception and traceback
        if r.random() < self.broken:
            frames = self.break_(m, frames)
        return m, frames

    def break_(self, m: Msg, frames: list[bytes]) -> list[bytes]:
        """Break ``m`` in place (one way at random): the frames it then carries."""
        r = self.rng
        names = [k for k in m if k != "op"]
        kind = r.choices(range(8), weights=[30, 15, 10, 10, 10, 10, 5, 10])[0]
        if kind == 0 and names:  # a value of any type: inf, NaN, huge ints, nesting...
            m[r.choice(names)] = self.value()
        elif kind == 1 and names:  # the same, deep inside a field's value
            self._poke(m, r.choice(names))
        elif kind == 2 and names:
            del m[r.choice(names)]
        elif kind == 4 and m.get("op") == "submit" and m.get("tasks"):
            task = r.choice(m["tasks"])
            task[r.choice([*TASK_FIELDS, "x"])] = self.value(1)
        elif kind == 5:
            return [r.randbytes(r.choice([0, 1, 16, 1000])) for _ in range(r.randrange(4))]
        elif kind == 6:
            m["rid"] = self.atom()
        elif kind == 7:  # an unknown op, another op's (its fields are wrong), or none
            unknown = ["make-me-admin", self.text(), "", "hello", "auth", r.choice(self.ops)]
            if r.random() < 0.1:
                del m["op"]
            else:
                m["op"] = r.choice([*unknown, 7, None, b"submit"])
        else:  # an unknown field (or a known one of another message)
            m[self.field()] = self.value()
        return frames

    def _poke(self, container: Any, name: Any) -> None:
        """Replace a value somewhere under ``container[name]`` with a random one."""
        r = self.rng
        inner = container[name]
        if isinstance(inner, dict) and inner:
            self._poke(inner, r.choice(list(inner)))
        elif isinstance(inner, list) and inner:
            self._poke(inner, r.randrange(len(inner)))
        else:
            container[name] = self.value(1) if r.random() < 0.5 else self.atom()


def is_registered(msg: Msg) -> bool:
    """The scheduler's answer to a registration (a client's, a worker's or a nanny's)."""
    return msg.get("op") in REGISTERED


def is_reply(msg: Msg, rid: int) -> bool:
    return msg.get("rid") == rid and msg.get("op") != "error-reply"


def packable(m: Msg) -> bool:
    with contextlib.suppress(ValueError, TypeError, OverflowError):
        msgpack.packb(m, use_bin_type=True)
        return True
    return False


def check_protocol_error(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; a ProtocolError is an answer, any other exception a finding."""
    try:
        return fn()
    except ProtocolError:
        return None
