"""Moving results between processes: serving this worker's data, fetching a peer's.

Owns: the listener's side of peer and client connections (``get-data`` with its
same-host fast paths: sealed memfds, lent buffers, /dev/shm exports; striped parts for
other hosts; ``put-data`` from a client's scatter; ``run``), the connection pool to
peers, and fetching keys from one holder into the data store.
Must not: decide what to fetch or from whom (``core.worker_state`` does), or talk to
the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from regrow.config import Settings
from regrow.errors import CommClosedError, LendRefusedError, ProtocolError
from regrow.protocol import lend, shm, stripe
from regrow.protocol.comm import Connection, ConnectionPool, refuse
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import (
    Ack,
    GetDataMsg,
    GetDataReply,
    GetPartMsg,
    HelloPeerMsg,
    LentDoneMsg,
    LentFrames,
    Message,
    PartsDoneMsg,
    PingMsg,
    PingReply,
    PutDataMsg,
    PutDataReply,
    RunMsg,
    RunReply,
    SealedFile,
    ShmFile,
    StripedFrames,
    op_of,
)
from regrow.protocol.serialize import sizeof
from regrow.security import Security
from regrow.worker.execution import loads_locked, run_function
from regrow.worker.spill import SpillBuffer

if TYPE_CHECKING:
    from regrow.worker.shell import Worker

logger = logging.getLogger("regrow.worker")


class Transfers:
    def __init__(
        self,
        worker: Worker,
        data: SpillBuffer,
        settings: Settings,
        token: str | None,
        host_id: str,
        on_put: Callable[[dict[str, tuple[int, str]]], None],
        security: Security | None = None,
    ) -> None:
        self.worker = worker
        self.data = data
        self.settings = settings
        self.host_id = host_id
        self.on_put = on_put
        self.peers = ConnectionPool(
            token=token,
            settings=settings,
            security=security,
            role="worker",
            hello=HelloPeerMsg(),
        )
        # Files exported to /dev/shm for a requester to map (shm.export), by path.
        self._exported: dict[str, ShmFile] = {}
        # Buffers lent to peers (protocol.lend), by connection and lend id.
        self.lent: dict[Connection, dict[int, list[list[Buffer]]]] = {}
        # Large frames kept for requesters on other hosts to fetch in parts.
        self.striped = stripe.Holdings()
        self._lend_ids = itertools.count(1)
        # Bytes of new memory made to serve requests (pickle streams, mapped spill
        # files), until the kernel has taken them: reported with the worker's memory.
        self.in_flight = 0
        # Bytes of results sent to peers, and received from them (their sizes here).
        self.sent = 0
        self.received = 0
        self._freed = asyncio.Event()

    def close(self) -> None:
        """Files in /dev/shm that no requester mapped yet go, and the peer connections."""
        for info in list(self._exported.values()):
            self._discard_export(info)
        self.peers.close()

    async def serve(self, comm: Connection) -> None:
        try:
            with contextlib.suppress(CommClosedError):
                while True:
                    msg, frames = await comm.recv()
                    try:
                        await self._peer_message(comm, msg, frames)
                    except Exception as exc:  # answer it: never leave the peer waiting
                        refuse(comm, msg, exc, f"peer {comm.peer}", logger)
        finally:
            # Whatever it borrowed and did not give back, it cannot be reading any more.
            self.lent.pop(comm, None)
            self.striped.forget(comm)

    def _discard_export(self, info: ShmFile) -> None:
        self._exported.pop(info.path, None)
        shm.discard(info)

    def _lend(
        self, comm: Connection, groups: list[list[Buffer]]
    ) -> tuple[LentFrames | None, list[list[Buffer]]]:
        """Lend the large buffers of ``groups`` (see protocol.lend): their addresses, and
        the groups with those frames left empty."""
        loan = lend.Loan()
        out = [list(g) for g in groups]
        for g, group in enumerate(groups):
            for f, frame in enumerate(group):
                if f and loan.add(g, f, frame):  # frame 0, the pickle stream, goes inline
                    out[g][f] = b""
        if not loan.frames:
            return None, groups
        lend_id = next(self._lend_ids)
        # Only what is lent is kept: the rest (a pickle stream) goes once it is sent.
        self.lent.setdefault(comm, {})[lend_id] = [[groups[g][f] for g, f, _, _ in loan.frames]]
        return LentFrames(pid=os.getpid(), id=lend_id, frames=loan.frames, made=loan.made), out

    async def _peer_message(self, comm: Connection, msg: Message, frames: list[Buffer]) -> None:
        match msg:
            case GetDataMsg():
                await self._get_data(comm, msg)
            case GetPartMsg():
                comm.reply(msg, Ack(), [self.striped.part(msg)])
                await comm.drain()
            case PartsDoneMsg():
                self.striped.done(msg.id)
            case LentDoneMsg():
                self.lent.get(comm, {}).pop(msg.id, None)
            case PutDataMsg():
                if msg.lent is not None:
                    frames = await self._borrow(msg, frames)
                self._put_data(comm, msg, frames)
            case RunMsg():
                ok, out = await asyncio.to_thread(run_function, frames, self.worker)
                comm.reply(msg, RunReply(ok=ok), out)
            case PingMsg():
                comm.reply(msg, PingReply(address=self.worker.address, pid=os.getpid()))
            case HelloPeerMsg():
                pass
            case _:
                raise ProtocolError(f"a worker's peer does not send {op_of(msg)!r}")

    def _copy_budget(self) -> int:
        budget = self.settings.transfer_copy_bytes
        if self.worker.memory_limit:
            budget = min(budget, self.worker.memory_limit // 8)
        return budget

    async def _get_data(self, comm: Connection, msg: GetDataMsg) -> None:
        keys: list[str] = []
        later: list[str] = []
        groups: list[list[Buffer]] = []
        sealed: dict[int, SealedFile] = {}
        same_host = bool(self.host_id) and msg.host == self.host_id
        # Sending never costs a copy of all that is asked: values go from their own
        # buffers (or their spill files' pages), and what must be new memory (pickle
        # streams, mapped spill files) stops at a budget; the requester asks again for
        # the rest, once this reply is out of our memory.
        budget = self._copy_budget()
        if self.in_flight >= budget:
            await self._budget_freed(budget)
        copied = 0
        for key in msg.keys:
            if key not in self.data:
                continue
            if keys and self.in_flight + copied >= budget:
                later.append(key)
                continue
            record = self.data.sealed_of(key) if same_host else None
            if record is not None:
                # Its large buffers are mapped by the requester: nothing is copied.
                sealed[len(groups)] = record.describe()
                groups.append(list(record.frames))
            else:
                try:
                    frames, cost = self.data.frames_to_send(key)
                except KeyError:
                    continue  # freed meanwhile
                groups.append(frames)
                copied += cost
            keys.append(key)
        # Counted in the memory the worker reports until the kernel has taken it.
        self.in_flight += copied
        try:
            info = None
            lent: LentFrames | None = None
            if same_host and msg.vm and lend.usable:
                # The requester copies large buffers straight out of our memory: keep
                # them alive until it says it is done (or its connection closes).
                lent, groups = self._lend(comm, groups)
            if same_host:
                # Same host: other large buffers go through /dev/shm, one memcpy, no socket.
                groups, info = shm.export(groups)
                if info is not None:
                    # Should the requester never map it, the file must not outlive us long.
                    self._exported[info.path] = info
                    asyncio.get_running_loop().call_later(60, self._discard_export, info)
            out = [frame for group in groups for frame in group]
            reply = GetDataReply(
                keys=keys,
                nf=[len(g) for g in groups],
                shm=info,
                sealed=sealed or None,
                lent=lent,
                later=later or None,
            )
            del groups
            if not same_host and msg.streams > 1:
                # Its large frames go by several connections: see protocol.stripe.
                out, kept = stripe.split(out, self.settings.stripe_bytes)
                if kept:
                    reply.striped = stripe.describe(self.striped.keep(comm, kept), kept)
            comm.reply(msg, reply, out)
            self.sent += sum(memoryview(frame).nbytes for frame in out)
            del out
            await comm.drain()
        finally:
            self.in_flight -= copied
            if self.in_flight < budget:
                self._freed.set()

    async def _budget_freed(self, budget: int) -> None:
        """Wait until other replies in flight leave room for this one's copies: serving
        many requesters at once costs no more than serving one. Not forever: a
        requester that stopped reading (frozen) must not hold up the others for longer
        than its heartbeat would take to be missed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.heartbeat_timeout):
                while self.in_flight >= budget:
                    self._freed.clear()
                    await self._freed.wait()

    async def _borrow(self, msg: PutDataMsg, frames: list[Buffer]) -> list[Buffer]:
        """The frames a client on this host lent, read out of its memory (one copy);
        LendRefusedError if they cannot be (another host, or no permission): the client
        then sends them inline."""
        lent = msg.lent
        assert lent is not None
        if not self.host_id or msg.host != self.host_id or not lend.usable:
            raise LendRefusedError("this worker cannot read the client's memory")
        frames = list(frames)
        wanted: list[tuple[int, int, int, int]] = []
        made = dict(lent.made)
        for i, (_, f, address, nbytes) in enumerate(lent.frames):
            if not 0 <= f < len(frames) or memoryview(frames[f]).nbytes:
                raise ProtocolError("put-data: a lent frame is out of range or not empty")
            wanted.append((f, address, nbytes, made.get(i, 0)))

        # The new objects are made here, on the event loop's (main) thread, where malloc
        # keeps freed memory warm (protocol.heap); the thread only copies into them.
        targets = [lend.target(nbytes, kind) for _, _, nbytes, kind in wanted]

        def read_all() -> None:
            for (f, address, nbytes, kind), into in zip(wanted, targets, strict=True):
                frames[f] = lend.read(lent.pid, address, nbytes, kind, into=into)

        try:
            await asyncio.to_thread(read_all)
        except lend.Refused as exc:
            raise LendRefusedError(f"reading the client's memory failed: {exc}") from None
        return frames

    def _put_data(self, comm: Connection, msg: PutDataMsg, frames: list[Buffer]) -> None:
        keys, counts = msg.keys, msg.nf
        if len(keys) != len(counts) or sum(counts) != len(frames):
            raise ProtocolError("put-data: keys, counts and frames disagree")
        pos = 0
        values: dict[str, Any] = {}
        for key, nf in zip(keys, counts, strict=True):
            # All or nothing: if one value cannot be unpickled, none is kept.
            try:
                values[key] = loads_locked(frames[pos : pos + nf])
            except Exception as exc:
                self.worker.check_imports(exc, f"unpickling scattered {key!r} failed")
                raise
            pos += nf
        nbytes: dict[str, int] = {}
        types: dict[str, str] = {}
        for key, value in values.items():
            nbytes[key] = sizeof(value)
            self.data.set(key, value, nbytes[key])
            types[key] = type(value).__name__
        self.on_put({key: (nbytes[key], types[key]) for key in values})
        comm.reply(msg, PutDataReply(nbytes=nbytes, types=types))

    async def fetch(
        self, holder: str, keys: list[str]
    ) -> tuple[dict[str, tuple[int, str]], BaseException | None]:
        """Fetch what ``holder`` has of ``keys``: the keys got, and the error if ``holder``
        answered but its data cannot reach us (it failed to serialize it, or we fail to
        deserialize it). Not being able to talk to ``holder`` is no such error."""
        idle_timeout = self.settings.heartbeat_timeout + 2
        streams = self.settings.transfer_streams

        async def striped(description: StripedFrames, frames: list[Buffer]) -> list[Buffer]:
            return await stripe.receive(
                self.peers, holder, description, frames, streams, idle_timeout
            )

        got: dict[str, tuple[int, str]] = {}
        unreadable: list[BaseException] = []

        def take(values: list[tuple[str, list[Buffer]]]) -> None:
            # Stored as each reply comes: the store spills to make room as it fills.
            for key, parts in values:
                if unreadable:
                    return
                try:
                    value = loads_locked(parts)
                except Exception as exc:
                    unreadable.append(exc)
                    self.worker.check_imports(exc, f"unpickling {key!r} from {holder} failed")
                    return
                nbytes = sizeof(value)
                self.data.set(key, value, nbytes)
                self.received += nbytes
                got[key] = (nbytes, type(value).__name__)

        try:
            comm = await self.peers.get(holder)
            try:
                await shm.get_data(
                    comm,
                    keys,
                    self.host_id,
                    idle_timeout,
                    striped=striped,
                    streams=streams,
                    take=take,
                )
            except stripe.PartsFailed as exc:
                if comm.closed or isinstance(exc.__cause__, TimeoutError):
                    raise  # the holder is gone, or not answering: asking again won't help
                # The holder is there but its parts did not come: once more, whole.
                logger.warning("fetching parts from %s failed (%s); fetching whole", holder, exc)
                rest = [k for k in keys if k not in got]
                await shm.get_data(comm, rest, self.host_id, idle_timeout, take=take)
        except (OSError, CommClosedError, TimeoutError, ProtocolError) as exc:
            logger.warning("could not fetch %d key(s) from %s: %s", len(keys), holder, exc)
            return got, None
        except Exception as exc:  # the holder's error reply, or one we cannot read
            logger.warning("%s cannot send %d key(s): %s", holder, len(keys), exc)
            return got, exc
        if unreadable:
            logger.warning("cannot deserialize data from %s: %r", holder, unreadable[0])
            return got, unreadable[0]
        return got, None
