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

from regrow.client.keys import KeyTable
from regrow.errors import CommClosedError, SchedulerLostError
from regrow.protocol import shm
from regrow.protocol.comm import Connection, ConnectionPool, connect, reconnect_delays, spawn
from regrow.protocol.framing import Buffer
from regrow.protocol.messages import Msg, get, get_str_list
from regrow.protocol.serialize import loads

if TYPE_CHECKING:
    from regrow.client.client import Client

logger = logging.getLogger("regrow.client")

# Requests that may be sent again after the scheduler was lost (they change nothing,
# or nothing more the second time).
_REPEATABLE = frozenset({"who-has", "scheduler-info", "ping", "cancel"})


class Session:
    """The client's async half: lives in the loop thread."""

    def __init__(self, client: Client, keys: KeyTable) -> None:
        self.client = client
        self.keys = keys
        self.comm: Connection | None = None
        self.pool = ConnectionPool(token=client.token, settings=client.settings)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.release_buffer: list[str] = []
        self.release_scheduled = False
        # Submissions the scheduler has not yet confirmed (journaled): sent again after
        # a reconnect, so a scheduler that died before writing them still gets them.
        self.unacked: dict[int, tuple[Msg, list[Buffer] | tuple[()]]] = {}
        self.seq = itertools.count(1)
        self.scheduler_id = ""
        self.journaled = False
        self.connected = asyncio.Event()

    async def _register(self, timeout: float, reattach: bool) -> Connection:
        c = self.client
        comm = await connect(
            c.scheduler_address, token=c.token, settings=c.settings, timeout=timeout
        )
        msg: Msg = {"op": "register-client", "client": c.id, "reattach": reattach}
        if reattach:
            # The keys we still hold: a scheduler back from its journal lets go of any
            # other it has us want (a release it lost with its death).
            msg["keys"] = self.keys.held_keys()
        comm.send(msg)
        reply, _ = await comm.recv()
        if reply["op"] != "registered":
            await comm.close()
            raise OSError(f"scheduler refused this client: {reply.get('error')}")
        previous = self.scheduler_id
        self.scheduler_id = str(reply.get("id", ""))
        self.journaled = bool(reply.get("journal"))
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
        except (OSError, TimeoutError, CommClosedError) as exc:
            raise OSError(
                f"could not connect to a regrow scheduler at {self.client.scheduler_address} "
                f"within {timeout} s: {exc or type(exc).__name__}"
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
                wanted = get_str_list(msg, "wanted")
                if any(k not in held for k in wanted):
                    # Released or cancelled since: send the tasks, but want only the rest.
                    msg = {**msg, "wanted": [k for k in wanted if k in held]}
                assert self.comm is not None
                self.comm.send(msg, frames)
            if keys:
                self.send({"op": "desire-keys", "keys": keys})
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
        state = self.keys.state
        try:
            while True:
                msg, frames = await comm.recv()
                op = msg["op"]
                st = state(msg.get("key", ""))
                if op == "key-in-memory":
                    if st is not None:
                        inline = msg.get("inline")
                        st.finish(
                            str(msg.get("type", "")),
                            int(msg.get("nbytes", 0)),
                            inline if isinstance(inline, bytes) else None,
                        )
                elif op == "key-erred":
                    if st is not None:
                        st.set_error(
                            exception=bytes(frames[0]) if frames else b"",
                            traceback=bytes(frames[1]) if len(frames) > 1 else b"",
                            text=str(msg.get("text", "")),
                            kind=str(msg.get("kind", "")),
                            blame=str(msg.get("blame", "")),
                            workers=tuple(msg.get("workers") or ()),
                        )
                elif op == "key-cancelled":
                    if st is not None:
                        st.cancel()
                elif op == "key-lost":
                    if st is not None:
                        st.lost()
                elif op == "key-interrupted":
                    for listener in list(self.client._interrupt_listeners):
                        listener(str(msg.get("key")), str(msg.get("worker")))
                elif op == "event":
                    self.client._record_event(str(msg.get("topic")), str(msg.get("message")))
                elif op == "submit-ack":
                    upto = int(msg.get("seq", 0))
                    for seq in [s for s in self.unacked if s <= upto]:
                        del self.unacked[seq]
                elif op == "scheduler-closing":
                    pass  # the connection closes next; reconnecting decides what follows
                else:
                    logger.warning("unexpected message from scheduler: %r", op)
        except CommClosedError:
            if self.client.status in ("closing", "closed"):
                return
            spawn(self._reconnect("the connection closed"), self.tasks, "client-reconnect")

    def send(self, msg: Msg, frames: list[Buffer] | tuple[()] = ()) -> None:
        if self.comm is None or self.comm.closed:
            return
        self.comm.send(msg, frames)

    def submit(self, msg: Msg, frames: list[Buffer] | tuple[()]) -> None:
        seq = next(self.seq)
        msg["seq"] = seq
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
            self.send({"op": "release-keys", "keys": keys})
        if again:
            # Its old state went with its last Future; the scheduler, which still counts
            # this client among those wanting it, would not report it again unasked.
            self.send({"op": "desire-keys", "keys": again})

    async def request(self, msg: Msg, timeout: float | None = None) -> tuple[Msg, list[Buffer]]:
        if not self.connected.is_set() and self.client.status == "reconnecting":
            async with asyncio.timeout(self.client.settings.reconnect_timeout):
                await self.connected.wait()
        comm = self.comm
        try:
            if comm is None or comm.closed:
                raise CommClosedError("not connected to the scheduler")
            return await comm.request(msg, timeout=timeout)
        except CommClosedError as exc:
            if not (self.journaled and msg.get("op") in _REPEATABLE):
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
        reply, _ = await self.request({"op": "who-has", "keys": keys})
        who_has: dict[str, list[str]] = get(reply, "who_has", dict)
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
            except (OSError, CommClosedError, TimeoutError) as exc:
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
            self.send({"op": "missing-data", "missing": missing})
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
                {
                    "op": "put-data",
                    "keys": [items[i][0] for i in idx],
                    "nf": [len(items[i][1]) for i in idx],
                },
                frames,
            )

        await asyncio.gather(*(put(w, idx) for w, idx in by_worker.items()))
        await self.request(
            {
                "op": "scattered",
                "replicas": replicas,
                "keys": [
                    {"key": key, "nbytes": nbytes, "type": type_name, "workers": targets[i]}
                    for i, (key, _, nbytes, type_name) in enumerate(items)
                ],
            }
        )

    async def run(self, frames: list[Buffer], workers: list[str]) -> dict[str, tuple[bool, Any]]:
        async def one(worker: str) -> tuple[str, tuple[bool, Any]]:
            comm = await self.pool.get(worker)
            reply, out = await comm.request({"op": "run"}, frames)
            return worker, (bool(reply.get("ok")), loads(out))

        return dict(await asyncio.gather(*(one(w) for w in workers)))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.comm is not None:
            await self.comm.close()
        self.pool.close()
