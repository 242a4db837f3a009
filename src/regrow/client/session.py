"""A client's session: its IO, in the loop its client runs in (``loop.py``).

Owns the connection to the scheduler (registering, listening for the news of keys,
requests and their replies, reconnecting and reattaching after the scheduler is lost,
resending unacknowledged submissions) and the connections to workers, from which it
fetches results and to which it scatters data directly, never through the scheduler.

It must not be called from outside its loop (the client hands it work with
``ClientLoop.run``/``arun``/``call_soon``), nor decide what the user sees: it settles
the states in the client's ``KeyTable`` and reports the rest to its ``Client``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from regrow.client.keys import KeyTable
from regrow.errors import CommClosedError, ProtocolError, SchedulerLostError
from regrow.protocol import shm
from regrow.protocol.comm import (
    Connection,
    ConnectionPool,
    connect,
    reconnect_delays,
    refuse,
    registered,
    spawn,
)
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import (
    CancelMsg,
    ClientRegisteredMsg,
    DesireKeysMsg,
    EventMsg,
    KeyCancelledMsg,
    KeyErredMsg,
    KeyInMemoryMsg,
    KeyInterruptedMsg,
    KeyLostMsg,
    Message,
    MissingDataMsg,
    PingMsg,
    PutDataMsg,
    R,
    RegisterClientMsg,
    ReleaseKeysMsg,
    Request,
    RunMsg,
    ScatteredEntry,
    ScatteredMsg,
    SchedulerClosingMsg,
    SchedulerInfoMsg,
    SubmitAckMsg,
    SubmitMsg,
    WhoHasMsg,
    op_of,
)
from regrow.protocol.serialize import loads

if TYPE_CHECKING:
    from regrow.client.client import Client

logger = logging.getLogger("regrow.client")

# Requests that may be sent again after the scheduler was lost (they change nothing,
# or nothing more the second time).
_REPEATABLE = (WhoHasMsg, SchedulerInfoMsg, PingMsg, CancelMsg)


def _repeatable(msg: Message) -> bool:
    return isinstance(msg, _REPEATABLE)


class Session:
    """The client's async half: lives in the loop thread."""

    def __init__(self, client: Client, keys: KeyTable) -> None:
        self.client = client
        self.keys = keys
        self.comm: Connection | None = None
        self.pool = ConnectionPool(
            token=client.token, settings=client.settings, security=client.security
        )
        self.tasks: set[asyncio.Task[Any]] = set()
        self.release_buffer: list[str] = []
        self.release_scheduled = False
        # Submissions the scheduler has not yet confirmed (journaled): sent again after
        # a reconnect, so a scheduler that died before writing them still gets them.
        self.unacked: dict[int, tuple[SubmitMsg, list[Buffer] | tuple[()]]] = {}
        self.seq = itertools.count(1)
        self.scheduler_id = ""
        self.journaled = False
        self.connected = asyncio.Event()

    async def _register(self, timeout: float, reattach: bool) -> Connection:
        c = self.client
        comm = await connect(
            c.scheduler_address,
            token=c.token,
            settings=c.settings,
            timeout=timeout,
            security=c.security,
        )
        # Reattaching, the keys we still hold: a scheduler back from its journal lets go
        # of any other it has us want (a release it lost with its death).
        held = self.keys.held_keys() if reattach else None
        comm.send(RegisterClientMsg(client=c.id, reattach=reattach, keys=held))
        reply = await registered(comm, ClientRegisteredMsg, "this client", OSError)
        previous = self.scheduler_id
        self.scheduler_id = reply.id
        self.journaled = reply.journal
        self.comm = comm
        if reattach:
            self._reattach(same=self.journaled and self.scheduler_id == previous)
        self.connected.set()
        if self.release_buffer:
            self._flush_releases()  # futures released while the scheduler was away
        spawn(self._listen(comm), self.tasks, "client-listen")
        return comm

    async def start(self, timeout: float) -> None:
        try:
            await self._register(timeout, reattach=False)
        except TimeoutError as exc:
            raise OSError(
                f"could not connect to a regrow scheduler at {self.client.scheduler_address} "
                f"within {timeout} s" + (f": {exc}" if str(exc) else "")
            ) from None
        except (OSError, CommClosedError) as exc:
            raise OSError(
                f"could not connect to a regrow scheduler at {self.client.scheduler_address}: "
                f"{exc or type(exc).__name__}"
            ) from None

    def _reattach(self, same: bool) -> None:
        """Back on a scheduler after losing it: pick our futures up where they were."""
        client = self.client
        keys = self.keys.held_keys()
        if same:
            # It rebuilt its state from its journal: resend what it may not have written,
            # and ask where each of our keys stands (the answers settle waiting futures).
            held = set(keys)
            for seq in sorted(self.unacked):
                msg, frames = self.unacked[seq]
                if any(k not in held for k in msg.wanted):
                    # Released or cancelled since: send the tasks, but want only the rest.
                    msg = msgspec.structs.replace(msg, wanted=[k for k in msg.wanted if k in held])
                assert self.comm is not None
                self.comm.send(msg, frames)
            if keys:
                self.send(DesireKeysMsg(keys=keys))
            logger.info("reattached to the scheduler (journaled): %d futures", len(keys))
        else:
            self.unacked.clear()
            client._fail_pending(
                "the scheduler restarted without a journal, so the work it held is gone"
            )
            client._record_event("workers", "reconnected to a scheduler that lost its state")

    async def _reconnect(self, reason: str) -> None:
        client = self.client
        self.connected.clear()
        client.status = "reconnecting"
        client._record_event("workers", f"lost the scheduler ({reason}); reconnecting")
        deadline = time.monotonic() + client.settings.reconnect_timeout
        delays = reconnect_delays()
        while time.monotonic() < deadline and client.status == "reconnecting":
            try:
                await self._register(min(5.0, max(0.1, deadline - time.monotonic())), True)
                client.status = "running"
                client._record_event("workers", "reconnected to the scheduler")
                return
            except (OSError, TimeoutError, CommClosedError) as exc:
                delay = next(delays)
                logger.info("scheduler unreachable (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        if client.status == "reconnecting":
            client._scheduler_gone(
                f"{reason}, and no scheduler came back within {client.settings.reconnect_timeout} s"
            )

    async def _listen(self, comm: Connection) -> None:
        try:
            while True:
                msg, frames = await comm.recv()
                try:
                    self._news(msg, frames)
                except Exception as exc:
                    refuse(comm, msg, exc, "the scheduler", logger)
        except CommClosedError:
            if self.client.status in ("closing", "closed"):
                return
            spawn(self._reconnect("the connection closed"), self.tasks, "client-reconnect")

    def _news(self, msg: Message, frames: list[Buffer]) -> None:
        """What the scheduler tells us unasked: keys settled, events, acknowledgements."""
        match msg:
            case KeyInMemoryMsg():
                st = self.keys.state(msg.key)
                if st is not None:
                    st.finish(msg.type, msg.nbytes, msg.inline)
            case KeyErredMsg():
                st = self.keys.state(msg.key)
                if st is not None:
                    st.set_error(
                        exception=bytes(frames[0]) if frames else b"",
                        traceback=bytes(frames[1]) if len(frames) > 1 else b"",
                        text=msg.text,
                        kind=msg.kind,
                        blame=msg.blame,
                        workers=tuple(msg.workers),
                    )
            case KeyCancelledMsg():
                st = self.keys.state(msg.key)
                if st is not None:
                    st.cancel()
            case KeyLostMsg():
                st = self.keys.state(msg.key)
                if st is not None:
                    st.lost()
            case KeyInterruptedMsg():
                for listener in list(self.client._interrupt_listeners):
                    listener(msg.key, msg.worker)
            case EventMsg():
                self.client._record_event(msg.topic, msg.message)
            case SubmitAckMsg():
                for seq in [s for s in self.unacked if s <= msg.seq]:
                    del self.unacked[seq]
            case SchedulerClosingMsg():
                pass  # the connection closes next; reconnecting decides what follows
            case _:
                raise ProtocolError(f"the scheduler does not send a client {op_of(msg)!r}")

    def send(self, msg: Message, frames: list[Buffer] | tuple[()] = ()) -> None:
        if self.comm is None or self.comm.closed:
            return
        self.comm.send(msg, frames)

    def submit(self, msg: SubmitMsg, frames: list[Buffer] | tuple[()]) -> None:
        seq = next(self.seq)
        msg.seq = seq
        self.unacked[seq] = (msg, frames)
        self.send(msg, frames)

    def release(self, key: str) -> None:
        self.release_buffer.append(key)
        if not self.release_scheduled:
            self.release_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_releases)

    def _flush_releases(self) -> None:
        self.release_scheduled = False
        if not self.connected.is_set() or self.comm is None or self.comm.closed:
            return  # kept until the scheduler is back (see _register)
        released, self.release_buffer = self.release_buffer, []
        # A key released and then re-acquired before this flush is still wanted.
        keys, again = self.keys.released(released)
        if keys:
            self.send(ReleaseKeysMsg(keys=keys))
        if again:
            # Its old state went with its last Future; the scheduler, which still counts
            # this client among those wanting it, would not report it again unasked.
            self.send(DesireKeysMsg(keys=again))

    async def request(
        self, msg: Request[R], timeout: float | None = None
    ) -> tuple[R, list[Buffer]]:
        if not self.connected.is_set() and self.client.status == "reconnecting":
            async with asyncio.timeout(self.client.settings.reconnect_timeout):
                await self.connected.wait()
        comm = self.comm
        try:
            if comm is None or comm.closed:
                raise CommClosedError("not connected to the scheduler")
            return await comm.request(msg, timeout=timeout)
        except CommClosedError as exc:
            if not (self.journaled and _repeatable(msg)):
                raise SchedulerLostError(str(exc)) from None
            lost = exc
        # A journaled scheduler comes back: wait for it (the connection's loss may not
        # have been noticed yet) and ask again, as the request can be repeated.
        deadline = time.monotonic() + self.client.settings.reconnect_timeout
        while not (self.connected.is_set() and self.comm is not comm):
            if self.client.status in ("lost", "closing", "closed") or time.monotonic() > deadline:
                raise SchedulerLostError(str(lost))
            await asyncio.sleep(0.01)
        return await self.request(msg, timeout)

    async def gather(self, keys: list[str]) -> dict[str, Any]:
        """Fetch results straight from the workers that hold them."""
        reply, _ = await self.request(WhoHasMsg(keys=keys))
        who_has = reply.who_has
        results: dict[str, Any] = {}
        # Each key's holders, starting at a different one per key to spread the load.
        untried: dict[str, list[str]] = {}
        for i, key in enumerate(keys):
            holders = list(who_has.get(key) or [])
            if holders:
                untried[key] = holders[i % len(holders) :] + holders[: i % len(holders)]
        # Holders that answered without a key the scheduler says they have.
        missing: dict[str, list[str]] = {}

        same_host = shm.HOST if self.client.settings.shared_memory else ""

        async def fetch(worker: str, ks: list[str]) -> None:
            try:
                comm = await self.pool.get(worker)
                # A frozen holder must not hold us up: its keys get recomputed elsewhere.
                values = await shm.get_data(
                    comm, ks, same_host, idle_timeout=self.client.settings.heartbeat_timeout + 2
                )
            except (OSError, CommClosedError, TimeoutError, ProtocolError) as exc:
                logger.info("could not fetch from %s: %s", worker, exc)
                return
            for key, parts in values:
                results[key] = loads(parts)
            for key in ks:
                if key not in results:
                    missing.setdefault(key, []).append(worker)

        while untried:
            by_worker: dict[str, list[str]] = {}
            for key, holders in untried.items():
                by_worker.setdefault(holders.pop(0), []).append(key)
            await asyncio.gather(*(fetch(w, ks) for w, ks in by_worker.items()))
            untried = {k: hs for k, hs in untried.items() if hs and k not in results}
        if missing:
            # Tell the scheduler, or it would keep naming them and we would keep asking.
            self.send(MissingDataMsg(missing=missing))
        return results

    async def scatter(
        self,
        items: list[tuple[str, list[Buffer], int, str]],
        targets: list[list[str]],
        replicas: int = 1,
    ) -> None:
        by_worker: dict[str, list[int]] = {}
        for i, workers in enumerate(targets):
            for w in workers:
                by_worker.setdefault(w, []).append(i)

        async def put(worker: str, idx: list[int]) -> None:
            comm = await self.pool.get(worker)
            frames: list[Buffer] = []
            for i in idx:
                frames.extend(items[i][1])
            await comm.request(
                PutDataMsg(keys=[items[i][0] for i in idx], nf=[len(items[i][1]) for i in idx]),
                frames,
            )

        await asyncio.gather(*(put(w, idx) for w, idx in by_worker.items()))
        entries = [
            ScatteredEntry(key=key, nbytes=nbytes, type=type_name, workers=targets[i])
            for i, (key, _, nbytes, type_name) in enumerate(items)
        ]
        await self.request(ScatteredMsg(keys=entries, replicas=replicas))

    async def run(self, frames: list[Buffer], workers: list[str]) -> dict[str, tuple[bool, Any]]:
        async def one(worker: str) -> tuple[str, tuple[bool, Any]]:
            comm = await self.pool.get(worker)
            reply, out = await comm.request(RunMsg(), frames)
            return worker, (reply.ok, loads(out))

        return dict(await asyncio.gather(*(one(w) for w in workers)))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.comm is not None:
            await self.comm.close()
        self.pool.close()
