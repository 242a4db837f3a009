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
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from regrow.config import Settings
from regrow.errors import (
    AuthenticationError,
    CommClosedError,
    ProtocolError,
    RegrowError,
)
from regrow.protocol import handshake
from regrow.protocol.framing import LARGE, Buffer, FrameDecoder, encode_packet
from regrow.protocol.messages import Msg, get, pack_messages, unpack_messages

# While a large frame is received, the socket wakes us once this much of it is in.
_LOWAT = 1 << 20

logger = logging.getLogger("regrow.comm")

# Before authentication a peer may send only one small frame per packet.
_PREAUTH_FRAMES = 1
_PREAUTH_BYTES = 4096
_MAX_FRAMES = 1 << 20
# Buffers smaller than this are joined before writing: fewer syscalls.
_JOIN_BELOW = 64 * 1024
# Larger buffers are sent straight from the caller's memory with send() on a duplicate
# of the socket's descriptor (see Connection._pump). Given 100 MB, asyncio's transport
# (3.11) sends what the socket takes, copies the rest into a bytearray and trims that
# from the front as it drains: two extra passes over the data, the event loop stuck in
# the first. The kernel needs no help: it takes from our buffer what fits, each time the
# socket is writable.
_DIRECT_SEND = LARGE


def parse_address(address: str) -> tuple[str, int]:
    """'tcp://host:port' or 'host:port' -> (host, port), with a clear error."""
    if not isinstance(address, str):
        raise TypeError(f"address must be a string like 'tcp://127.0.0.1:8786', got {address!r}")
    rest = address.removeprefix("tcp://")
    if "://" in rest:
        raise ValueError(f"unsupported address scheme in {address!r}; use tcp://host:port")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not of the form tcp://host:port")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RemoteCallError(RegrowError):
    """The peer could not carry out a request; carries the peer's reason."""


_ERROR_TYPES: dict[str, type[Exception]] = {
    name: getattr(builtins, name)
    for name in ("ValueError", "KeyError", "TypeError", "TimeoutError", "RuntimeError")
}
_ERROR_TYPES.update(ProtocolError=ProtocolError, AuthenticationError=AuthenticationError)


def error_reply(exc: BaseException) -> Msg:
    return {"op": "reply", "error": str(exc), "etype": type(exc).__name__}


class Connection:
    """One authenticated, bidirectional, message-oriented TCP connection."""

    def __init__(self, *, peer: str, local: str, settings: Settings) -> None:
        self.peer = peer
        self.local = local
        self.settings = settings
        self.decoder = FrameDecoder(max_frames=_PREAUTH_FRAMES, max_frame_bytes=_PREAUTH_BYTES)
        self.transport: asyncio.Transport | None = None
        self._incoming: deque[tuple[Msg, list[Buffer]]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[Msg, list[Buffer]]]] = {}
        self._rids = itertools.count(1)
        self._out: list[tuple[Msg, Sequence[Buffer]]] = []
        # Bytes to send ourselves, in order, once the transport's buffer is empty.
        self._sendq: deque[memoryview] = deque()
        self._sent: asyncio.Future[None] | None = None
        self._direct: socket.socket | None = None
        self._direct_armed = False
        self._flush_scheduled = False
        self._paused: asyncio.Future[None] | None = None
        self._closed = False
        self.close_reason: BaseException | None = None
        self.closed_event = asyncio.Event()
        self.authenticated = False
        self.bytes_received = 0

    # -- called by the protocol -------------------------------------------------
    def _on_packet(self, packet: list[Buffer]) -> None:
        replies: list[tuple[asyncio.Future[tuple[Msg, list[Buffer]]], Msg, list[Buffer]]] | None
        replies = None
        for msg, frames in unpack_messages(packet):
            if msg["op"] == "reply" and "rid" in msg:
                fut = self._pending.pop(msg["rid"], None)
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
            for fut, msg, frames in replies:
                fut.set_result((msg, frames))

    def _on_lost(self, exc: BaseException | None) -> None:
        if self._closed and self.closed_event.is_set():
            return
        self._closed = True
        if self.close_reason is None:
            self.close_reason = exc
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
        if transport is None or self._closed or transport.get_write_buffer_size():
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

    async def recv(self) -> tuple[Msg, list[Buffer]]:
        while not self._incoming:
            if self._closed:
                raise CommClosedError(f"connection to {self.peer} closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        return self._incoming.popleft()

    def send(self, msg: Msg, frames: Sequence[Buffer] = ()) -> None:
        if self._closed:
            raise CommClosedError(f"connection to {self.peer} closed")
        self._out.append((msg, frames))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def reply(self, request: Msg, msg: Msg, frames: Sequence[Buffer] = ()) -> None:
        rid = request.get("rid")
        if rid is None:
            return
        msg["op"] = "reply"
        msg["rid"] = rid
        self.send(msg, frames)

    async def request(
        self,
        msg: Msg,
        frames: Sequence[Buffer] = (),
        timeout: float | None = None,
        idle_timeout: float | None = None,
    ) -> tuple[Msg, list[Buffer]]:
        """Send ``msg`` and wait for its reply.

        ``idle_timeout``: give up when the peer sends no byte at all for that long (a
        frozen or cut-off peer), however long a reply that keeps arriving takes.
        """
        rid = next(self._rids)
        msg["rid"] = rid
        fut: asyncio.Future[tuple[Msg, list[Buffer]]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self.send(msg, frames)
            async with asyncio.timeout(timeout):
                reply, rframes = await self._reply(fut, idle_timeout)
        finally:
            self._pending.pop(rid, None)
            if not fut.done():
                fut.cancel()
        if "error" in reply:
            etype = _ERROR_TYPES.get(str(reply.get("etype")), RemoteCallError)
            raise etype(f"{self.peer} could not do {msg['op']!r}: {reply['error']}")
        return reply, rframes

    async def _reply(
        self, fut: asyncio.Future[tuple[Msg, list[Buffer]]], idle_timeout: float | None
    ) -> tuple[Msg, list[Buffer]]:
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

    def abort(self, reason: BaseException | None = None) -> None:
        if reason is not None and self.close_reason is None:
            self.close_reason = reason
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
            max_frames=_MAX_FRAMES, max_frame_bytes=self.settings.max_frame_bytes
        )


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, conn_factory: Callable[[asyncio.Transport], Connection]) -> None:
        self._factory = conn_factory
        self.conn: Connection | None = None
        self._sock: Any = None
        self._lowat = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        # Paused as soon as anything is left in its buffer, resumed once it is empty:
        # Connection._pump sends only when it is (and is called again then).
        transport.set_write_buffer_limits(high=0)
        self.conn = self._factory(transport)
        self.conn.transport = transport
        sock = transport.get_extra_info("socket")
        self._sock = sock if sock is not None and sock.family != socket.AF_UNIX else None

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.conn is not None
        return self.conn.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        assert conn is not None
        conn.bytes_received += nbytes
        try:
            conn.decoder.buffer_updated(nbytes)
            while conn.decoder.packets:
                conn._on_packet(conn.decoder.packets.popleft())
        except ProtocolError as exc:
            logger.warning("dropping connection from %s: %s", conn.peer, exc)
            conn.abort(exc)
            return
        self._set_lowat(conn.decoder.direct_remaining)

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
    return format_address(peer[0], peer[1]), format_address(sock[0], sock[1])


Handler = Callable[[Connection], Awaitable[None]]


class Listener:
    """A TCP server that authenticates each connection, then hands it to ``handler``.

    Owns every per-connection task; ``close`` cancels them all.
    """

    def __init__(self, handler: Handler, *, token: str | None, settings: Settings) -> None:
        self.handler = handler
        self.token = token
        self.settings = settings
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.connections: set[Connection] = set()
        self.address = ""
        self.rejected = 0

    async def start(self, host: str, port: int) -> str:
        if self.token is None and not is_loopback(host):
            raise AuthenticationError(
                f"refusing to listen on {host}: without a token regrow binds to loopback "
                "only (set REGROW_TOKEN or --token-file to accept other hosts)"
            )
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Protocol(self._new_conn), host, port)
        sockname = self.server.sockets[0].getsockname()
        self.address = format_address(
            host if host not in ("", "0.0.0.0") else sockname[0], sockname[1]
        )
        return self.address

    def _new_conn(self, transport: asyncio.Transport) -> Connection:
        peer, local = _peer_of(transport)
        conn = Connection(peer=peer, local=local, settings=self.settings)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn

    async def _serve(self, conn: Connection) -> None:
        try:
            await self._accept(conn)
        except (AuthenticationError, ProtocolError, CommClosedError, TimeoutError) as exc:
            self.rejected += 1
            logger.warning("rejected connection from %s: %s", conn.peer, exc or type(exc).__name__)
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

    async def _accept(self, conn: Connection) -> None:
        host = conn.peer.removeprefix("tcp://").rpartition(":")[0].strip("[]")
        nonce = handshake.new_nonce()
        if self.token is None and not is_loopback(host):
            conn.send({"op": "denied", "reason": "this cluster has no token: loopback only"})
            await conn.close()
            raise AuthenticationError("non-loopback peer refused by a cluster without a token")
        conn.send({"op": "hello", "v": handshake.PROTOCOL_VERSION, "nonce": nonce})
        async with asyncio.timeout(self.settings.handshake_timeout):
            msg, _ = await conn.recv()
        if msg["op"] != "auth":
            raise ProtocolError(f"expected 'auth', got {msg['op']!r}")
        cnonce = get(msg, "nonce", bytes)
        if not handshake.verify(handshake.client_mac(self.token, nonce, cnonce), msg.get("mac")):
            conn.send({"op": "denied", "reason": "wrong token"})
            await conn.close()
            raise AuthenticationError("wrong token")
        conn.send({"op": "welcome", "mac": handshake.server_mac(self.token, nonce, cnonce)})
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


async def connect(
    address: str, *, token: str | None, settings: Settings, timeout: float | None = None
) -> Connection:
    """Open and authenticate a connection; raises OSError/TimeoutError/AuthenticationError."""
    host, port = parse_address(address)
    loop = asyncio.get_running_loop()
    holder: list[Connection] = []

    def factory(transport: asyncio.Transport) -> Connection:
        peer, local = _peer_of(transport)
        conn = Connection(peer=peer, local=local, settings=settings)
        holder.append(conn)
        return conn

    deadline = settings.connect_timeout if timeout is None else timeout
    async with asyncio.timeout(deadline):
        await loop.create_connection(lambda: _Protocol(factory), host, port)
        conn = holder[0]
        conn.peer = address if address.startswith("tcp://") else f"tcp://{address}"
        try:
            msg, _ = await conn.recv()
            if msg["op"] == "denied":
                raise AuthenticationError(f"{address} refused us: {msg.get('reason')}")
            if msg["op"] != "hello":
                raise ProtocolError(f"{address} is not a regrow server (sent {msg['op']!r})")
            if msg.get("v") != handshake.PROTOCOL_VERSION:
                raise ProtocolError(
                    f"{address} speaks protocol version {msg.get('v')}, "
                    f"we speak {handshake.PROTOCOL_VERSION}"
                )
            nonce = get(msg, "nonce", bytes)
            cnonce = handshake.new_nonce()
            mac = handshake.client_mac(token, nonce, cnonce)
            conn.send({"op": "auth", "nonce": cnonce, "mac": mac})
            reply, _ = await conn.recv()
            if reply["op"] == "denied":
                raise AuthenticationError(f"{address} refused us: {reply.get('reason')}")
            if not handshake.verify(handshake.server_mac(token, nonce, cnonce), reply.get("mac")):
                raise AuthenticationError(f"{address} does not know the cluster token")
        except CommClosedError:
            conn.abort()
            raise CommClosedError(
                f"{address} closed the connection during the handshake "
                "(it stopped, or it is not a regrow server)"
            ) from None
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

    def __init__(self, *, token: str | None, settings: Settings, hello: Msg | None = None) -> None:
        self.token = token
        self.settings = settings
        self.hello = hello
        self.comms: dict[str, Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._spare: dict[str, list[Connection]] = {}

    async def _open(self, address: str) -> Connection:
        comm = await connect(address, token=self.token, settings=self.settings)
        if self.hello is not None:
            comm.send(dict(self.hello))
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
    finally:
        for w in waiters:
            w.cancel()
        await service.close()
