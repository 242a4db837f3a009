"""Connections over TCP on asyncio: the only module of the protocol that does IO.

A ``Connection`` is authenticated before its first message is delivered, batches
outgoing messages (everything sent before the loop next runs goes in one
packet), and matches replies to requests by ``rid``. A peer that breaks the
protocol is logged with the reason and dropped; the server keeps serving others.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ipaddress
import itertools
import logging
import os
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar, cast
from typing import Protocol as TypingProtocol

from regrow.config import Settings
from regrow.errors import (
    AuthenticationError,
    CommClosedError,
    LendRefusedError,
    ProtocolError,
    RegrowError,
    explain,
    reason,
)
from regrow.protocol import bulk, handshake, heap
from regrow.protocol.framing import LARGE, Buffer, FrameDecoder, encode_packet
from regrow.protocol.messages import (
    AuthMsg,
    DeniedMsg,
    ErrorReply,
    HelloMsg,
    Message,
    RefusedMsg,
    Reply,
    Request,
    WelcomeMsg,
    op_of,
    pack_messages,
    reply_type,
    unpack_messages,
)
from regrow.security import Role, Security

# While a large frame is received, the socket wakes us once this much of it is in.
_LOWAT = 1 << 20

logger = logging.getLogger("regrow.comm")

# Before authentication a peer may send only one small frame per packet.
_PREAUTH_FRAMES = 1
_PREAUTH_BYTES = 4096
_MAX_FRAMES = 1 << 20
# Buffers smaller than this are joined before writing: fewer syscalls.
_JOIN_BELOW = 64 * 1024
# Over TLS, large buffers go to the SSL layer in slices of this size (Connection._pump_tls).
_TLS_SLICE = 256 * 1024
# Larger buffers are sent straight from the caller's memory with send() on a duplicate
# of the socket's descriptor (see Connection._pump). Given 100 MB, asyncio's transport
# (3.11) sends what the socket takes, copies the rest into a bytearray and trims that
# from the front as it drains: two extra passes over the data, the event loop stuck in
# the first. The kernel needs no help: it takes from our buffer what fits, each time the
# socket is writable.
_DIRECT_SEND = LARGE


SCHEMES = ("tcp", "tls")


def address_scheme(address: str) -> str:
    """'tls' for a 'tls://' address, else 'tcp' (also for a bare 'host:port')."""
    return "tls" if address.startswith("tls://") else "tcp"


def parse_address(address: str) -> tuple[str, int]:
    """'tcp://host:port', 'tls://host:port' or 'host:port' -> (host, port), with a clear
    error."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a string like 'tcp://127.0.0.1:8786', got {address!r}")
    rest = address
    for scheme in SCHEMES:
        rest = rest.removeprefix(f"{scheme}://")
    if "://" in rest:
        raise ValueError(
            f"unsupported address scheme in {address!r}; use tcp://host:port or tls://host:port"
        )
    host, sep, port = rest.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or int(port) > 65535
        or host.startswith("[") != host.endswith("]")
        or any(c in host for c in "/ \t\n")
    ):
        raise ValueError(f"address {address!r} is not of the form tcp://host:port")
    return host.strip("[]"), int(port)


def normalize_address(address: str) -> str:
    """``address`` with its scheme: 'host:port' means 'tcp://host:port'."""
    parse_address(address)
    return address if "://" in address else f"tcp://{address}"


def format_address(host: str, port: int, scheme: str = "tcp") -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def host_of(address: str) -> str:
    """The host part of an address (without brackets)."""
    return parse_address(address)[0]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HandshakeClosedError(CommClosedError):
    """The peer hung up before the handshake was done: it was stopping, or it is no
    regrow server, or it expects TLS and we spoke plain TCP (or the other way round)."""


class RemoteCallError(RegrowError):
    """The peer could not carry out a request; carries the peer's reason."""


_ERROR_TYPES: dict[str, type[Exception]] = {
    name: getattr(builtins, name)
    for name in (
        "ValueError",
        "KeyError",
        "TypeError",
        "TimeoutError",
        "RuntimeError",
        "PermissionError",
    )
}
_ERROR_TYPES.update(
    ProtocolError=ProtocolError,
    AuthenticationError=AuthenticationError,
    LendRefusedError=LendRefusedError,
)


def error_reply(exc: BaseException) -> ErrorReply:
    return ErrorReply(error=reason(exc), etype=type(exc).__name__)


def refuse(
    comm: Connection, msg: Message, exc: Exception, who: str, log: logging.Logger = logger
) -> None:
    """``msg`` from ``who`` could not be acted on (``exc``). A request is answered with
    the error, and the connection stays. A one-way message cannot be answered, and what
    the peer sends next may rest on it: the reason is logged and the connection closed.
    Every handler of a peer's messages ends here, so nothing escapes into a task. (The
    traceback goes to the debug log: most of these are the peer's doing.)"""
    if comm.closed or isinstance(exc, CommClosedError):
        return  # the peer is gone: nobody to answer, nothing to close
    reason = str(exc) if isinstance(exc, ProtocolError) else explain(exc)
    log.debug("handling %r from %s failed", op_of(msg), who, exc_info=exc)
    if isinstance(msg, Request) and msg.rid:
        log.warning("%s: could not do %r: %s", who, op_of(msg), reason)
        comm.reply(msg, error_reply(exc))
    else:
        log.warning("closing the connection of %s: cannot act on %r: %s", who, op_of(msg), reason)
        comm.abort(ProtocolError(f"cannot act on {op_of(msg)!r}: {reason}"))


R = TypeVar("R", bound=Reply)
M = TypeVar("M", bound=Message)


async def registered(
    comm: Connection, expected: type[M], what: str, error: type[Exception] = ProtocolError
) -> M:
    """The scheduler's answer to a registration just sent on ``comm``, if it is an
    ``expected``; else the connection is closed and ``error`` raised with its reason."""
    reply, _ = await comm.recv()
    if isinstance(reply, expected):
        return reply
    await comm.close()
    reason = reply.reason if isinstance(reply, RefusedMsg) else f"sent {op_of(reply)!r}"
    raise error(f"scheduler refused {what}: {reason}")


def _detached(exc: BaseException | None) -> BaseException | None:
    """``exc`` without its traceback and chain, to be kept: a traceback holds the frames
    that raised it, and they the connection that keeps the exception, a cycle that only
    the garbage collector's oldest generation frees (2,000 refused connections left a
    server ~30,000 objects and 10 MB larger until it ran)."""
    if exc is not None:
        exc.__traceback__ = None
        exc.__context__ = None
        exc.__cause__ = None
    return exc


class Connection:
    """One authenticated, bidirectional, message-oriented TCP connection."""

    def __init__(self, *, peer: str, local: str, settings: Settings) -> None:
        self.peer = peer
        self.local = local
        self.settings = settings
        self.decoder = FrameDecoder(max_frames=_PREAUTH_FRAMES, max_frame_bytes=_PREAUTH_BYTES)
        self.transport: asyncio.Transport | None = None
        self._incoming: deque[tuple[Message, list[Buffer]]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[Reply, list[Buffer]]]] = {}
        self._rids = itertools.count(1)
        self._out: list[tuple[Message, Sequence[Buffer]]] = []
        # Bytes to send ourselves, in order, once the transport's buffer is empty.
        self._sendq: deque[memoryview] = deque()
        self._sent: asyncio.Future[None] | None = None
        self._direct: socket.socket | None = None
        self._direct_armed = False
        # A large frame moving on a thread of its own (protocol.bulk), each way.
        self._bulk_send: bulk.Bulk | None = None
        self.bulk_recv: bulk.Bulk | None = None
        self._pumping = False
        self._flush_scheduled = False
        self._paused: asyncio.Future[None] | None = None
        self._closed = False
        self.close_reason: BaseException | None = None
        self.closed_event = asyncio.Event()
        self.authenticated = False
        self._received = 0
        # Over TLS every byte goes through the transport (which encrypts): no direct
        # sends from our memory, no receive low-water mark on the raw socket.
        self.tls = peer.startswith("tls://")
        # The largest frame accepted once authenticated (a Listener sets its own).
        self.max_frame_bytes = settings.max_frame_bytes
        # Bytes that may wait in our memory for the peer to read them before we give up
        # on it; None: no limit (a peer that asked for a large value gets it, however
        # slowly it reads). A scheduler sets it (Listener): it sends only small messages.
        self.max_send_buffer: int | None = None

    # -- called by the protocol -------------------------------------------------
    def _on_packet(self, packet: list[Buffer]) -> None:
        replies: list[tuple[asyncio.Future[tuple[Reply, list[Buffer]]], Reply, list[Buffer]]] | None
        replies = None
        # Each message checked against its type (ProtocolError: the peer is dropped);
        # before authentication, only the handshake's messages are understood.
        for msg, frames in unpack_messages(packet, handshake=not self.authenticated):
            if isinstance(msg, Reply):
                # A reply nobody waits for (its request timed out or was cancelled) is
                # dropped.
                fut = self._pending.pop(msg.rid, None)
                if fut is not None and not fut.done():
                    if replies is None:
                        replies = []
                    replies.append((fut, msg, frames))
                continue
            self._incoming.append((msg, frames))
        # The receiver wakes before the requesters: what the peer sent before a reply is
        # taken in before the reply's requester goes on (a client's request to cancel
        # finds its futures cancelled when it returns).
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if replies is not None:
            for fut, reply, frames in replies:
                fut.set_result((reply, frames))

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._closed and self.closed_event.is_set():
            return
        self._closed = True
        if self.close_reason is None:
            self.close_reason = _detached(exc)
        err = CommClosedError(f"connection to {self.peer} closed" + (f": {exc}" if exc else ""))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._sendq.clear()
        for moving in (self._bulk_send, self.bulk_recv):
            if moving is not None:
                moving.cancel()
        self._close_direct()
        if self._sent is not None and not self._sent.done():
            self._sent.set_result(None)
        self.closed_event.set()

    def _pause(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = asyncio.get_running_loop().create_future()

    def _resume(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        self._pump()

    def _pump(self) -> None:
        """Send queued buffers from their own memory, without the transport's copies.

        Only while the transport's buffer is empty (its high-water mark is 0, so
        resume_writing calls us again once it is): the bytes stay in order. Whatever the
        kernel does not take now waits for the socket to be writable, still uncopied.
        """
        transport = self.transport
        q = self._sendq
        if (
            transport is None
            or self._closed
            or self._bulk_send is not None
            or transport.get_write_buffer_size()
        ):
            return
        if self.tls:
            self._pump_tls(transport)
            return
        try:
            if self._direct is None:
                fd = transport.get_extra_info("socket").fileno()
                self._direct = socket.socket(fileno=os.dup(fd))
                # The send buffer is left to the kernel's autotuning: a fixed 4 MiB one
                # (8 MiB granted) cost the two processes ~8 ms more CPU per 100 MB over a
                # veth pair, and 5 points of the raw socket's speed (30 interleaved
                # repetitions each).
                self._direct.setblocking(False)
            sock = self._direct
            while q:
                head = q[0]
                if head.nbytes >= bulk.THREAD_FROM:
                    self._disarm()
                    self._bulk_send = bulk.Bulk(
                        sock,
                        head,
                        receive=False,
                        loop=asyncio.get_running_loop(),
                        done=self._bulk_sent,
                    )
                    return
                try:
                    n = sock.send(head)
                except (BlockingIOError, InterruptedError):
                    n = 0
                if n < head.nbytes:
                    q[0] = head[n:]
                    if not self._direct_armed:
                        asyncio.get_running_loop().add_writer(sock.fileno(), self._pump)
                        self._direct_armed = True
                    return
                q.popleft()
        except OSError as exc:
            self.abort(exc)
            return
        self._disarm()
        if self._sent is not None and not self._sent.done():
            self._sent.set_result(None)

    def _bulk_sent(self, nbytes: int, error: BaseException | None) -> None:
        """The head of the queue went out on its thread (or did not: ``error``)."""
        self._bulk_send = None
        if self._closed:
            return
        if error is not None:
            self.abort(CommClosedError(f"sending to {self.peer}: {reason(error)}"))
            return
        self._sendq.popleft()
        self._pump()

    def _pump_tls(self, transport: asyncio.Transport) -> None:
        """Over TLS: hand queued buffers to the transport a slice at a time, the next once
        the last is encrypted and taken by the kernel (resume_writing calls us again).

        Given a whole 25 MB frame at once, asyncio's SSL layer encrypts all of it into a
        growing buffer, copies it out and into the socket's buffer, and sends nothing
        until it is done: per 100 MB the sender spent 340 ms of CPU, against 130 ms in
        slices. The SSL layer may call resume_writing from inside write(): not re-entered.
        """
        if self._pumping:
            return
        self._pumping = True
        q = self._sendq
        try:
            while q and not self._closed and not transport.get_write_buffer_size():
                head = q[0]
                if head.nbytes > _TLS_SLICE:
                    q[0] = head[_TLS_SLICE:]
                    head = head[:_TLS_SLICE]
                else:
                    q.popleft()
                transport.write(head)
        finally:
            self._pumping = False
        if not q and self._sent is not None and not self._sent.done():
            self._sent.set_result(None)

    def _disarm(self) -> None:
        if self._direct_armed and self._direct is not None:
            self._direct_armed = False
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                asyncio.get_running_loop().remove_writer(self._direct.fileno())

    def _close_direct(self) -> None:
        # The duplicate keeps the connection open in the kernel: it goes with the transport.
        if self._direct is not None:
            self._disarm()
            self._direct.close()
            self._direct = None

    # -- public ----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def bytes_received(self) -> int:
        """Bytes read from the peer so far, counting a large frame's as its thread reads
        them (a request's idle timeout watches this)."""
        moving = self.bulk_recv
        return self._received + (moving.moved if moving is not None else 0)

    async def recv(self) -> tuple[Message, list[Buffer]]:
        """The next message the peer sent that is not a reply (replies go to their
        ``request``), already checked against its type."""
        while not self._incoming:
            if self._closed:
                raise CommClosedError(f"connection to {self.peer} closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        return self._incoming.popleft()

    def send(self, msg: Message, frames: Sequence[Buffer] = ()) -> None:
        if self._closed:
            raise CommClosedError(f"connection to {self.peer} closed")
        self._out.append((msg, frames))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def reply(
        self, request: Request[R], msg: R | ErrorReply, frames: Sequence[Buffer] = ()
    ) -> None:
        """Answer ``request`` with ``msg`` (nothing is sent if no reply was asked for)."""
        if not request.rid:
            return
        msg.rid = request.rid
        self.send(msg, frames)

    async def request(
        self,
        msg: Request[R],
        frames: Sequence[Buffer] = (),
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> tuple[R, list[Buffer]]:
        """Send ``msg`` and wait for its reply, of the type that answers it.

        An ErrorReply is raised as the peer's exception type (RemoteCallError when it is
        none we know); a reply of another type is a ProtocolError (and drops the peer).

        ``idle_timeout``: give up when the peer sends no byte at all for that long (a
        frozen or cut-off peer), however long a reply that keeps arriving takes.
        """
        rid = next(self._rids)
        msg.rid = rid
        fut: asyncio.Future[tuple[Reply, list[Buffer]]]
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self.send(msg, frames)
            async with asyncio.timeout(timeout):
                reply, rframes = await self._reply(fut, idle_timeout)
        finally:
            self._pending.pop(rid, None)
            if not fut.done():
                fut.cancel()
        if isinstance(reply, ErrorReply):
            etype = _ERROR_TYPES.get(reply.etype, RemoteCallError)
            raise etype(f"{self.peer} could not do {op_of(msg)!r}: {reply.error}")
        if not isinstance(reply, reply_type(type(msg))):
            exc = ProtocolError(f"{self.peer} answered {op_of(msg)!r} with {op_of(reply)!r}")
            logger.warning("dropping connection to %s: %s", self.peer, exc)
            self.abort(exc)
            raise exc
        return cast(R, reply), rframes

    async def _reply(
        self, fut: asyncio.Future[tuple[Reply, list[Buffer]]], idle_timeout: float | None
    ) -> tuple[Reply, list[Buffer]]:
        if idle_timeout is None:
            return await fut
        while True:
            seen = self.bytes_received
            try:
                async with asyncio.timeout(idle_timeout):
                    return await asyncio.shield(fut)
            except TimeoutError:
                if self.bytes_received == seen:
                    raise TimeoutError(f"{self.peer} sent nothing for {idle_timeout} s") from None

    async def drain(self) -> None:
        """Wait until the kernel has taken what we wrote (backpressure)."""
        if self._flush_scheduled:
            self._flush()
        while self._sendq and not self._closed:
            if self._sent is None or self._sent.done():
                self._sent = asyncio.get_running_loop().create_future()
            await self._sent
        if self._paused is not None and not self._paused.done():
            await self._paused
        if self._closed:
            raise CommClosedError(f"connection to {self.peer} closed")

    def expect(self, target: memoryview | None) -> None:
        """Receive the next large frame of ``target``'s size straight into ``target``
        (FrameDecoder.expect): only on a connection used for one request at a time."""
        self.decoder.expect(target)

    def flush(self) -> None:
        """Write what is queued now, instead of when the loop next turns."""
        if self._flush_scheduled:
            self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out or self._closed or self.transport is None:
            self._out.clear()
            return
        batch, self._out = self._out, []
        buffers = encode_packet(pack_messages(batch))
        small = bytearray()
        q = self._sendq
        write = self.transport.write

        def emit(buf: Buffer, large: bool) -> None:
            # Once anything waits in our queue, everything after it must wait too.
            if large or q:
                q.append(memoryview(buf).cast("B"))
                self._pump()
            else:
                write(buf)

        for buf in buffers:
            n = memoryview(buf).nbytes
            if n < _JOIN_BELOW:
                small += buf
                continue
            if small:
                emit(bytes(small), False)
                small = bytearray()
            emit(buf, n > _DIRECT_SEND)
        if small:
            emit(bytes(small), False)
        limit = self.max_send_buffer
        if limit is not None and (waiting := self.transport.get_write_buffer_size()) > limit:
            # Copies of what we sent pile up in our memory: the peer is not reading.
            reason = CommClosedError(
                f"{self.peer} is not reading: {waiting} bytes wait for it "
                f"(max_send_buffer_bytes={limit})"
            )
            logger.warning("disconnecting %s", reason)
            self.abort(reason)

    def abort(self, reason: BaseException | None = None) -> None:
        if reason is not None and self.close_reason is None:
            self.close_reason = _detached(reason)
        self._close_direct()
        if self.transport is not None:
            self.transport.abort()
        self._on_lost(reason)

    async def close(self) -> None:
        if self._flush_scheduled:
            self._flush()
        if self._sendq:
            with contextlib.suppress(TimeoutError, CommClosedError):
                async with asyncio.timeout(10):
                    await self.drain()
        self._close_direct()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if not self.closed_event.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self.closed_event.wait()
            if not self.closed_event.is_set():
                self.abort()

    def _authenticated(self) -> None:
        self.authenticated = True
        self.decoder.set_limits(
            max_frames=_MAX_FRAMES,
            max_frame_bytes=self.max_frame_bytes,
            max_header_bytes=self.settings.max_header_bytes,
        )


# Where bytes of a refused connection go, should any arrive before it is gone.
_DISCARD = bytearray(4096)


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, conn_factory: Callable[[asyncio.Transport], Connection | None]) -> None:
        self._factory = conn_factory
        self.conn: Connection | None = None
        self._sock: Any = None
        self._lowat = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Paused as soon as anything is left in its buffer, resumed once it is empty:
        # Connection._pump sends only when it is (and is called again then).
        # (asyncio's SSL transport pauses at size >= high: 1 there, for the same effect.)
        tls = transport.get_extra_info("sslcontext") is not None
        transport.set_write_buffer_limits(high=1 if tls else 0, low=0)
        conn = self._factory(transport)
        if conn is None:  # refused (a Listener's limits): nothing more is read
            self.conn = None
            return
        self.conn = conn
        conn.transport = transport
        sock = transport.get_extra_info("socket")
        plain = sock is not None and sock.family != socket.AF_UNIX and not conn.tls
        self._sock = sock if plain else None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.conn is None:
            return memoryview(_DISCARD)
        return self.conn.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        if conn is None:
            return
        conn._received += nbytes
        try:
            conn.decoder.buffer_updated(nbytes)
            while conn.decoder.packets:
                conn._on_packet(conn.decoder.packets.popleft())
        except ProtocolError as exc:
            logger.warning("dropping connection from %s: %s", conn.peer, exc)
            conn.abort(exc)
            return
        remaining = conn.decoder.direct_remaining
        self._set_lowat(remaining)
        if remaining >= bulk.THREAD_FROM and self._sock is not None and not conn.closed:
            self._receive_on_thread(conn)

    def _receive_on_thread(self, conn: Connection) -> None:
        """The rest of a large frame is received by a thread of its own (protocol.bulk)
        while the loop stops reading this connection."""
        transport = conn.transport
        assert transport is not None and self._sock is not None

        def done(nbytes: int, error: BaseException | None) -> None:
            conn.bulk_recv = None
            self._lowat = 1  # the thread leaves the socket's low-water mark at 1
            if conn.closed:
                return
            if error is not None:
                conn.abort(CommClosedError(f"receiving from {conn.peer}: {reason(error)}"))
                return
            transport.resume_reading()
            self.buffer_updated(nbytes)

        transport.pause_reading()
        conn.bulk_recv = bulk.Bulk(
            self._sock,
            conn.decoder.get_buffer(-1),
            receive=True,
            loop=asyncio.get_running_loop(),
            done=done,
        )

    def _set_lowat(self, remaining: int) -> None:
        """While a large frame comes in, wake up only once a good part of it is here.

        Each wake-up costs an epoll round and a recv_into; with the default (1 byte),
        100 MB over a veth pair came in many small reads. Never above what is still to
        come: the socket would not turn readable for the last bytes.
        """
        want = max(1, min(remaining, _LOWAT))
        if want == self._lowat or self._sock is None:
            return
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self._lowat = want
        except OSError:
            self._sock = None  # not a socket that has it: leave it as it is

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            if exc is None and not self.conn.decoder.idle and self.conn.close_reason is None:
                exc = ProtocolError("peer closed the connection in the middle of a message")
                logger.warning("connection from %s: %s", self.conn.peer, exc)
            self.conn._on_lost(exc)

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn._pause()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn._resume()


def _peer_of(transport: asyncio.BaseTransport) -> tuple[str, str]:
    peer = transport.get_extra_info("peername") or ("?", 0)
    sock = transport.get_extra_info("sockname") or ("?", 0)
    scheme = "tls" if transport.get_extra_info("sslcontext") is not None else "tcp"
    return format_address(peer[0], peer[1], scheme), format_address(sock[0], sock[1], scheme)


Handler = Callable[[Connection], Awaitable[None]]


class Throttled:
    """Warnings logged at most ``burst`` per ``interval`` seconds; the next one logged
    counts those left out: a flood of bad connections must not become a flood of log,
    and a few refusals are each still told."""

    def __init__(self, log: logging.Logger, interval: float = 10.0, burst: int = 10) -> None:
        self.log = log
        self.interval = interval
        self.burst = burst
        self._window = -interval
        self._told = 0
        self._skipped = 0

    def warning(self, msg: str, *args: object) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._window >= self.interval:
            self._window, self._told = now, 0
        if self._told >= self.burst:
            self._skipped += 1
            return
        self._told += 1
        if self._skipped:
            msg += f" (and {self._skipped} more warnings like these left out)"
            self._skipped = 0
        self.log.warning(msg, *args)


class Listener:
    """A TCP (or TLS) server that authenticates each connection, then hands it to
    ``handler``. Owns every per-connection task; ``close`` cancels them all.

    Who may connect: with TLS, a peer whose certificate the cluster's CA signed, and then
    the token handshake; without, the token handshake only. A server that has neither a
    token nor TLS listens on loopback only, unless ``insecure`` (then it warns).
    Limits: ``settings.max_connections`` at once, ``max_connections_per_host`` from one
    host (a peer past them is closed before anything is read), the handshake within
    ``handshake_timeout``, frames of at most ``max_frame_bytes`` (the scheduler passes
    its smaller limit), and, where ``max_send_buffer`` is given (the scheduler), a peer
    that does not read what is sent to it dropped.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        token: str | None,
        settings: Settings,
        security: Security | None = None,
        role: Role = "worker",
        insecure: bool = False,
        max_frame_bytes: int | None = None,
        max_send_buffer: int | None = None,
    ) -> None:
        self.handler = handler
        self.token = token
        self.settings = settings
        self.security = security or Security()
        self.role = role
        self.insecure = insecure
        self.max_frame_bytes = max_frame_bytes or settings.max_frame_bytes
        self.max_send_buffer = max_send_buffer
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections: set[Connection] = set()
        self.open: dict[str, int] = {}  # host -> connections open from it
        self.address = ""
        self.rejected = 0
        self._warn = Throttled(logger)

    @property
    def open_count(self) -> int:
        return sum(self.open.values())

    async def start(self, host: str, port: int) -> str:
        tls = self.security.context(self.role, server=True)
        if self.token is None and tls is None and not is_loopback(host):
            if not self.insecure:
                raise AuthenticationError(
                    f"refusing to listen on {host} with neither a token nor TLS: anyone who "
                    "reaches it could run code here (set REGROW_TOKEN or --token-file, or "
                    "--tls-ca-file/--tls-cert/--tls-key; or --insecure to accept this)"
                )
            logger.warning(
                "INSECURE: listening on %s with neither a token nor TLS: anyone who can "
                "reach this port can run any code in this cluster's processes",
                host,
            )
        loop = asyncio.get_running_loop()
        _quiet_accept_errors(loop)
        self.server = await loop.create_server(
            self._protocol,
            host,
            port,
            ssl=tls,
            ssl_handshake_timeout=self.settings.handshake_timeout if tls else None,
            backlog=1024,
        )
        sockname = self.server.sockets[0].getsockname()
        self.address = format_address(
            host if host not in ("", "0.0.0.0") else sockname[0],
            sockname[1],
            self.security.scheme(),
        )
        return self.address

    def _protocol(self) -> _Protocol:
        # A socket accepted: before its TLS handshake, which may fail and never reach us.
        trim_soon()
        return _Protocol(self._new_conn)

    def _new_conn(self, transport: asyncio.Transport) -> Connection | None:
        peer, local = _peer_of(transport)
        host = host_of(peer)
        settings = self.settings
        if self.open_count >= settings.max_connections:
            reason = f"{settings.max_connections} connections open (max_connections)"
        elif self.open.get(host, 0) >= settings.max_connections_per_host:
            reason = (
                f"{settings.max_connections_per_host} connections open from that host "
                "(max_connections_per_host)"
            )
        else:
            reason = ""
        if reason:
            self.rejected += 1
            self._warn.warning("refused a connection from %s: %s", peer, reason)
            transport.abort()
            return None
        self.open[host] = self.open.get(host, 0) + 1
        conn = Connection(peer=peer, local=local, settings=settings)
        conn.max_frame_bytes = self.max_frame_bytes
        conn.max_send_buffer = self.max_send_buffer
        task = asyncio.get_running_loop().create_task(self._serve(conn, host))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn

    async def _serve(self, conn: Connection, host: str) -> None:
        try:
            try:
                await self._accept(conn, host)
            except (AuthenticationError, ProtocolError, CommClosedError, TimeoutError) as exc:
                self.rejected += 1
                if isinstance(exc, TimeoutError):
                    exc = TimeoutError(f"no handshake within {self.settings.handshake_timeout:g} s")
                self._warn.warning("rejected connection from %s: %s", conn.peer, exc)
                conn.abort(exc)
                return
            self.connections.add(conn)
            try:
                await self.handler(conn)
            except CommClosedError:
                pass  # the peer went away; the handler has already accounted for it
            finally:
                self.connections.discard(conn)
                if not conn.closed:
                    await conn.close()
        finally:
            left = self.open.get(host, 1) - 1
            if left:
                self.open[host] = left
            else:
                self.open.pop(host, None)
            trim_soon()

    async def _accept(self, conn: Connection, host: str) -> None:
        nonce = handshake.new_nonce()
        if self.token is None and not conn.tls and not self.insecure and not is_loopback(host):
            conn.send(DeniedMsg(reason="this cluster has no token: loopback only"))
            await conn.close()
            raise AuthenticationError("non-loopback peer refused by a cluster without a token")
        conn.send(HelloMsg(v=handshake.PROTOCOL_VERSION, nonce=nonce))
        async with asyncio.timeout(self.settings.handshake_timeout):
            msg, _ = await conn.recv()
        if not isinstance(msg, AuthMsg):
            raise ProtocolError(f"expected 'auth', got {op_of(msg)!r}")
        cnonce = msg.nonce
        if not handshake.verify(handshake.client_mac(self.token, nonce, cnonce), msg.mac):
            if msg.tokenless:
                reason = (
                    "no token given, and this cluster needs its token (Client(token=...), "
                    "REGROW_TOKEN or --token-file)"
                )
            elif self.token is None:
                reason = "a token given, and this cluster has none (connect without one)"
            else:
                reason = "wrong token"
            conn.send(DeniedMsg(reason=reason))
            await conn.close()
            raise AuthenticationError(reason)
        conn.send(WelcomeMsg(mac=handshake.server_mac(self.token, nonce, cnonce)))
        conn._authenticated()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self.server.wait_closed()


_ACCEPT_WARN = Throttled(logger)
_TRIM_DELAY = 1.0
_trim_pending = False


def trim_soon() -> None:
    """Give the memory of closed connections back to the system, a second after the last
    one closed. What TLS handshakes and buffers allocate stays in malloc's heap once
    freed, and a flood of refused connections would leave a server ~10 MB larger for
    good (glibc's malloc_trim; elsewhere nothing)."""
    global _trim_pending
    if heap.budget or _trim_pending:
        return  # a process that keeps freed memory warm gives it back by heap.tidy
    _trim_pending = True
    asyncio.get_running_loop().call_later(_TRIM_DELAY, _trim_now)


def _trim_now() -> None:
    global _trim_pending
    _trim_pending = False
    heap.give_back()


def _quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Out of file descriptors (or buffers), asyncio's accept loop reports every refused
    connection with a traceback, and retries a second later: turn that into one line,
    at most every 10 s."""
    previous = loop.get_exception_handler()
    if getattr(previous, "regrow_quiet", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            _ACCEPT_WARN.warning(
                "cannot accept connections: %s (raise `ulimit -n`?)", context.get("exception")
            )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler.regrow_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def client_tls(address: str, security: Security | None, role: Role) -> ssl.SSLContext | None:
    """The TLS context to reach ``address`` with, or a clear error why we may not."""
    security = security or Security()
    if address_scheme(address) == "tls":
        if not security.has_tls:
            raise ValueError(
                f"{address} is a TLS address: connecting needs security=Security(...) "
                "(or --tls-ca-file/--tls-cert/--tls-key)"
            )
        return security.context(role, server=False)
    if security.require_encryption:
        raise ValueError(
            f"refusing to connect to {address} in plaintext: encryption is required "
            "(use its tls:// address)"
        )
    return None


_NUDGE = b"".join(bytes(b) for b in encode_packet([b"\x90"]))


async def connect(
    address: str,
    *,
    token: str | None,
    settings: Settings,
    timeout: float | None = None,
    security: Security | None = None,
    role: Role = "client",
) -> Connection:
    """Open and authenticate a connection; raises OSError/TimeoutError/AuthenticationError
    (ValueError for an address our security may not reach)."""
    host, port = parse_address(address)
    address = normalize_address(address)
    tls = client_tls(address, security, role)
    loop = asyncio.get_running_loop()
    holder: list[Connection] = []

    def factory(transport: asyncio.Transport) -> Connection:
        peer, local = _peer_of(transport)
        conn = Connection(peer=peer, local=local, settings=settings)
        holder.append(conn)
        return conn

    deadline = settings.connect_timeout if timeout is None else timeout
    async with asyncio.timeout(deadline):
        try:
            await loop.create_connection(
                lambda: _Protocol(factory),
                host,
                port,
                ssl=tls,
                server_hostname="" if tls is not None else None,
                ssl_handshake_timeout=settings.handshake_timeout if tls is not None else None,
            )
        except ssl.SSLError as exc:
            raise AuthenticationError(
                f"TLS handshake with {address} failed: {exc.reason or exc} (is it a TLS "
                "port, and was its certificate signed by our CA?)"
            ) from None
        except ConnectionResetError as exc:
            if tls is None:
                raise
            raise AuthenticationError(
                f"{address} closed the connection during the TLS handshake: it refused our "
                f"certificate, or it is not a TLS port ({exc})"
            ) from None
        conn = holder[0]
        conn.peer = address
        if tls is None and conn.transport is not None:
            # A packet of no messages, which a regrow server passes over: a TLS server
            # takes it for a broken ClientHello and hangs up at once, instead of both
            # ends waiting for the other to speak until the handshake times out.
            conn.transport.write(_NUDGE)
        try:
            msg, _ = await conn.recv()
            if isinstance(msg, DeniedMsg):
                raise AuthenticationError(f"{address} refused us: {msg.reason}")
            if not isinstance(msg, HelloMsg):
                raise ProtocolError(f"{address} is not a regrow server (sent {op_of(msg)!r})")
            if msg.v != handshake.PROTOCOL_VERSION:
                raise ProtocolError(
                    f"{address} speaks protocol version {msg.v}, "
                    f"we speak {handshake.PROTOCOL_VERSION}"
                )
            nonce = msg.nonce
            cnonce = handshake.new_nonce()
            mac = handshake.client_mac(token, nonce, cnonce)
            conn.send(AuthMsg(nonce=cnonce, mac=mac, tokenless=not token))
            reply, _ = await conn.recv()
            if isinstance(reply, DeniedMsg):
                raise AuthenticationError(f"{address} refused us: {reply.reason}")
            if not isinstance(reply, WelcomeMsg) or not handshake.verify(
                handshake.server_mac(token, nonce, cnonce), reply.mac
            ):
                raise AuthenticationError(f"{address} does not know the cluster token")
        except CommClosedError as exc:
            conn.abort()
            reason = conn.close_reason
            hint = "it expects TLS (a tls:// address)" if tls is None else "it refused us"
            raise HandshakeClosedError(
                f"{address} closed the connection during the handshake: it stopped, it is "
                f"not a regrow server, or {hint}" + (f" ({reason})" if reason else "")
            ) from exc
        except BaseException:
            conn.abort()
            raise
    conn._authenticated()
    return conn


# Spare connections kept per peer address (several fetches at once lease more).
_SPARE_MAX = 8


class ConnectionPool:
    """One authenticated connection per peer address, opened on first use, shared; and
    spare connections per address, leased for one caller's exclusive use at a time."""

    def __init__(
        self,
        *,
        token: str | None,
        settings: Settings,
        hello: Message | None = None,
        security: Security | None = None,
        role: Role = "client",
    ) -> None:
        self.token = token
        self.settings = settings
        self.hello = hello
        self.security = security
        self.role = role
        self.comms: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._spare: dict[str, list[Connection]] = {}

    async def _open(self, address: str) -> Connection:
        comm = await connect(
            address,
            token=self.token,
            settings=self.settings,
            security=self.security,
            role=self.role,
        )
        if self.hello is not None:
            comm.send(self.hello)
        return comm

    async def get(self, address: str) -> Connection:
        comm = self.comms.get(address)
        if comm is not None and not comm.closed:
            return comm
        async with self._locks.setdefault(address, asyncio.Lock()):
            comm = self.comms.get(address)
            if comm is None or comm.closed:
                comm = await self._open(address)
                self.comms[address] = comm
        return comm

    async def lease(self, address: str, n: int) -> list[Connection]:
        """``n`` connections to ``address`` that nobody else uses until ``release``."""
        # Forget closed spares everywhere, the connections of peers gone among them.
        for addr in list(self._spare):
            self._spare[addr] = [c for c in self._spare[addr] if not c.closed]
            if not self._spare[addr]:
                del self._spare[addr]
        spare = self._spare.pop(address, [])
        leased, rest = spare[:n], spare[n:]
        if rest:
            self._spare[address] = rest
        opened = await asyncio.gather(
            *(self._open(address) for _ in range(n - len(leased))), return_exceptions=True
        )
        failed = [c for c in opened if isinstance(c, BaseException)]
        leased += [c for c in opened if isinstance(c, Connection)]
        if failed:
            self.release(address, leased)
            raise failed[0]
        return leased

    def release(self, address: str, comms: list[Connection], reusable: bool = True) -> None:
        """Give back leased connections; those not ``reusable`` (a request on them failed
        half-way: a frame may still be on its way into a caller's buffer) are closed."""
        for comm in comms:
            if reusable and not comm.closed and len(self._spare.get(address, ())) < _SPARE_MAX:
                comm.expect(None)
                self._spare.setdefault(address, []).append(comm)
            else:
                comm.abort()

    def close(self) -> None:
        for comm in self.comms.values():
            comm.abort()
        self.comms.clear()
        for spare in self._spare.values():
            for comm in spare:
                comm.abort()
        self._spare.clear()


async def cancel_others(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them to end, all but the one running this: a
    shutdown often runs in one of its service's own tasks, and waiting for itself would
    never end."""
    pending = [t for t in tasks if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def close_once(
    stopped: asyncio.Event, closed: asyncio.Event, shutdown: Callable[[], Awaitable[None]]
) -> None:
    """A service's ``close()``: the first call runs ``shutdown``; a later one returns once
    that is done (serve() relies on it: the process would otherwise exit halfway through
    the shutdown)."""
    if stopped.is_set():
        await closed.wait()
        return
    stopped.set()
    try:
        await shutdown()
    finally:
        closed.set()


def reconnect_delays() -> Iterator[float]:
    """Waits between tries to reach a scheduler that went away: 20 ms, growing by a
    quarter, at most 250 ms. A restarted scheduler takes ~0.4 s to start listening, and
    a try costs one refused connection; coarser steps (50 ms x 1.5, up to 0.5 s) made
    its peers find it up to 250 ms after it was ready."""
    delay = 0.02
    while True:
        yield delay
        delay = min(delay * 1.25, 0.25)


def spawn(coro: Awaitable[Any], tasks: set[asyncio.Task[Any]], name: str = "") -> asyncio.Task[Any]:
    """Start a task owned by ``tasks`` (which forgets it when it ends); log a crash."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    if name:
        task.set_name(name)
    tasks.add(task)

    def done(t: asyncio.Task[Any]) -> None:
        tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            logger.error("task %s failed", t.get_name(), exc_info=t.exception())

    task.add_done_callback(done)
    return task


class Service(TypingProtocol):
    """A scheduler, worker or nanny: something that starts, runs, and closes."""

    stopped: asyncio.Event  # set when it begins to close
    closed: asyncio.Event  # set when it has closed

    async def start(self) -> str: ...

    async def close(self) -> None: ...


async def serve(
    service: Service,
    ready: asyncio.Future[str] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``service``, report its address on ``ready``, run until it stops by itself or
    ``stop`` is set, then close it (also when starting fails)."""
    try:
        address = await service.start()
    except BaseException:
        await service.close()
        raise
    if ready is not None:
        ready.set_result(address)
    waiters = [asyncio.ensure_future(service.stopped.wait())]
    if stop is not None:
        waiters.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        # Told to stop (a signal): a service that can hand its work over does first.
        leave = getattr(service, "leave", None)
        if stop is not None and stop.is_set() and leave is not None:
            await leave()
    finally:
        for w in waiters:
            w.cancel()
        await service.close()
