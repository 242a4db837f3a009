"""A client's session: its IO, in the loop its client runs in (``loop.py``).

Owns the connection to the scheduler (registering, listening for the news of keys,
requests and their replies, reconnecting and reattaching after the scheduler is lost,
resending unacknowledged submissions) and the connections to workers, from which it
fetches results and to which it scatters data directly, never through the scheduler
(``Scattering``: past workers that die and a scheduler that restarts meanwhile).

It must not be called from outside its loop (the client hands it work with
``ClientLoop.run``/``arun``/``call_soon``), nor decide what the user sees: it settles
the states in the client's ``KeyTable`` and reports the rest to its ``Client``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import msgspec

from regrow.client.futures import ERROR
from regrow.client.keys import KeyTable
from regrow.errors import (
    CommClosedError,
    LendRefusedError,
    ProtocolError,
    RegrowError,
    SchedulerLostError,
    explain,
)
from regrow.protocol import framing, lend, shm
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
    CoordinateMsg,
    DesireKeysMsg,
    EventMsg,
    FireAndForgetMsg,
    HasWhatMsg,
    KeyCancelledMsg,
    KeyErredMsg,
    KeyInMemoryMsg,
    KeyInterruptedMsg,
    KeyLostMsg,
    KeyRetriedMsg,
    LentFrames,
    Message,
    MissingDataMsg,
    PingMsg,
    PutDataMsg,
    R,
    RegisterClientMsg,
    ReleaseKeysMsg,
    Request,
    RetryMsg,
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
from regrow.protocol.reach import until_reached
from regrow.protocol.serialize import loads

if TYPE_CHECKING:
    from regrow.client.client import Client

# A client gives its receive pool's mappings back once it has received nothing large
# for this long (s): the process is the user's.
POOL_IDLE_RELEASE = 5.0

logger = logging.getLogger("regrow.client")

# Requests that may be sent again after the scheduler was lost (they change nothing,
# or nothing more the second time). A scatter's registration is not one of them as
# such: the scatter starts again with the new scheduler (see ``Scattering``).
_REPEATABLE = (
    WhoHasMsg,
    HasWhatMsg,
    SchedulerInfoMsg,
    PingMsg,
    CancelMsg,
    RetryMsg,
    CoordinateMsg,  # by its call id, answered once (core.coordination)
)


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
        # Keys fired and forgotten while the scheduler was away: sent once it is back,
        # before the releases of their futures.
        self.fired_buffer: list[str] = []
        # Submissions the scheduler has not yet confirmed (journaled): sent again after
        # a reconnect, so a scheduler that died before writing them still gets them.
        self.unacked: dict[int, tuple[SubmitMsg, list[Buffer] | tuple[()]]] = {}
        # Workers that could not read our memory (another host): scatters to them
        # send their buffers inline.
        self.no_lending: set[str] = set()
        # Keys wanted without Futures (a dask graph's inputs of later batches) to let go
        # once the submissions up to a seq are confirmed: see release_unheld.
        self.unheld_releases: list[tuple[int, list[str]]] = []
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
        comm.send(RegisterClientMsg(client=c.id, reattach=reattach, keys=held, worker=c._worker))
        try:
            reply = await registered(comm, ClientRegisteredMsg, "this client", OSError)
        except BaseException:
            await comm.close()
            raise
        previous = self.scheduler_id
        self.scheduler_id = reply.id
        self.journaled = reply.journal
        self.client._dashboard = reply.dashboard
        self.comm = comm
        if reattach:
            self._reattach(same=self.journaled and self.scheduler_id == previous)
        self.connected.set()
        if self.fired_buffer:
            keys, self.fired_buffer = self.fired_buffer, []
            self.send(FireAndForgetMsg(keys=keys))
        if self.release_buffer:
            self._flush_releases()  # futures released while the scheduler was away
        spawn(self._listen(comm), self.tasks, "client-listen")
        return comm

    async def start(self, timeout: float) -> None:
        """Connect and register; a scheduler not up yet (or restarting) is tried again
        until ``timeout`` (``until_reached``), one that refuses us fails at once."""

        async def attempt(left: float) -> None:
            await self._register(min(left, self.client.settings.connect_timeout), reattach=False)

        address = self.client.scheduler_address
        try:
            await until_reached(attempt, address, timeout, "a regrow scheduler")
        except (OSError, CommClosedError) as exc:
            raise OSError(
                str(exc) or f"could not connect to a regrow scheduler at {address}"
            ) from None
        pool = framing.POOL
        if pool.limit == 0 and self.client.settings.receive_pool_bytes:
            # Receive large values into mappings kept for the next ones (an array of a
            # list of 10 reached the client at 7,400 MB/s instead of 3,600), given back
            # once the client has received none for a while.
            pool.limit = self.client.settings.receive_pool_bytes
            pool.idle_release = POOL_IDLE_RELEASE
        if pool.idle_release is not None:
            spawn(self._release_idle_pool(), self.tasks, "client-pool")

    async def _release_idle_pool(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            framing.POOL.release_if_idle()

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
            self._release_confirmed(None)
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
            case KeyRetriedMsg():
                st = self.keys.state(msg.key)
                if st is not None and st.done():
                    st.reset()
            case KeyInterruptedMsg():
                for listener in list(self.client._interrupt_listeners):
                    listener(msg.key, msg.worker)
            case EventMsg():
                self.client._record_event(msg.topic, msg.message, msg.data)
            case SubmitAckMsg():
                for seq in [s for s in self.unacked if s <= msg.seq]:
                    del self.unacked[seq]
                if self.unheld_releases:
                    self._release_confirmed(msg.seq)
            case SchedulerClosingMsg():
                pass  # the connection closes next; reconnecting decides what follows
            case _:
                raise ProtocolError(f"the scheduler does not send a client {op_of(msg)!r}")

    def send(self, msg: Message, frames: list[Buffer] | tuple[()] = ()) -> None:
        if self.comm is None or self.comm.closed:
            return
        self.comm.send(msg, frames)

    def fire_and_forget(self, keys: list[str]) -> None:
        """Have the scheduler compute ``keys`` whatever becomes of their futures: sent
        after every submission made before (the same stream, in order), and kept for
        the scheduler's return if it is away."""
        if not self.connected.is_set() or self.comm is None or self.comm.closed:
            self.fired_buffer.extend(keys)
            return
        self.send(FireAndForgetMsg(keys=keys))

    def submit(self, msg: SubmitMsg, frames: list[Buffer] | tuple[()]) -> None:
        seq = next(self.seq)
        msg.seq = seq
        self.unacked[seq] = (msg, frames)
        self.send(msg, frames)

    def release_unheld(self, keys: list[str]) -> None:
        """Let go of ``keys``, wanted by submissions without Futures for them, once every
        submission sent so far is confirmed. A journaled scheduler that dies before
        writing the last of them comes back without it; reattaching, we then still want
        these keys (``KeyTable.held_keys``), so it keeps them for the submission we
        resend, which reads them (found by the chaos soak: a dask graph's later batch
        named inputs the restarted scheduler had forgotten)."""
        last = max(self.unacked, default=0)
        if last:
            self.unheld_releases.append((last, keys))
        else:
            self._let_go(keys)

    def _release_confirmed(self, seq: int | None) -> None:
        """Release what waited for submissions up to ``seq`` (None: everything)."""
        due = [keys for s, keys in self.unheld_releases if seq is None or s <= seq]
        self.unheld_releases = [
            (s, keys) for s, keys in self.unheld_releases if seq is not None and s > seq
        ]
        for keys in due:
            self._let_go(keys)

    def _let_go(self, keys: list[str]) -> None:
        self.keys.drop_unheld(keys)
        for key in keys:
            self.release(key)

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
        # A journaled scheduler comes back: wait for it, and ask again, as the request
        # can be repeated.
        await self.back(comm, lost)
        return await self.request(msg, timeout)

    async def back(self, comm: Connection | None, lost: BaseException) -> None:
        """Wait until the session is connected to a scheduler again, over another
        connection than ``comm``, which was lost (``lost`` says how; its loss may not
        have been noticed yet); SchedulerLostError if none comes back in time."""
        deadline = time.monotonic() + self.client.settings.reconnect_timeout
        while not (self.connected.is_set() and self.comm is not comm):
            if self.client.status in ("lost", "closing", "closed") or time.monotonic() > deadline:
                raise SchedulerLostError(str(lost))
            await asyncio.sleep(0.01)

    async def scheduler_comm(self) -> Connection:
        """The connection to the scheduler, once there is one (waiting for a reconnect
        under way, as ``request`` does); SchedulerLostError if none comes in time."""
        comm = self.comm
        if not self.connected.is_set() or comm is None or comm.closed:
            await self.back(comm, CommClosedError("not connected to the scheduler"))
            comm = self.comm
        assert comm is not None
        return comm

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
        wanted: list[str] | None,
        broadcast: bool,
        replicas: int,
        timeout: float | None,
    ) -> None:
        """Put each item on live workers and register it with the scheduler (see
        ``Scattering``); TimeoutError after ``timeout`` s. Whatever may have reached a
        worker is registered, even when this raises: the caller then lets its keys go,
        and the scheduler frees them there."""
        job = Scattering(self, items, wanted, broadcast, replicas, timeout)
        try:
            if timeout is None:
                await job.run()
                return
            try:
                async with asyncio.timeout(timeout) as scope:
                    await job.run()
            except TimeoutError:
                if not scope.expired():
                    raise
                raise TimeoutError(
                    f"scatter: not done within {timeout} s{job.failures()}"
                ) from None
        except BaseException:
            job.register_rest()
            raise

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


# A worker that fails a put this way is dead, refusing or cut off (OSError covers
# CommClosedError and TimeoutError): its share goes to another worker. Anything else
# (it could not unpickle a value, say) would fail anywhere, and is raised.
_UNREACHABLE = OSError
# How many times a scatter places again values the scheduler took for lost as it
# registered them (their holder died in between); then they stay lost.
_LOST_RETRIES = 2


class Scattering:
    """One ``Client.scatter``: its values put on workers and registered with the
    scheduler, whatever dies meanwhile.

    - **Placing** (``_place``): each value goes to ``replicas`` workers (every one, to
      broadcast) among those the scheduler lists (of ``wanted``, if given), least
      memory first, as many as there are. A worker that refuses or closes a put, or
      that the scheduler removes while a put to it hangs (frozen, cut off), is skipped
      for the rest of the call, and its share goes to the others; with none left, the
      scheduler is asked again until one comes (up to the call's timeout, else
      ``connect_timeout``), then RuntimeError names each worker that failed and why.
    - **Registering** (``run``): one ``scattered`` request. It is not simply sent
      again after the scheduler is lost, as the other requests are: the one that comes
      back from its journal may not know the keys, and then it told their holders,
      coming back to it, to drop them. So the scatter starts again with that
      scheduler: the keys it holds already are done, the others placed anew, on the
      workers it lists, and registered. Registering the same keys twice is harmless
      (the scheduler adds holders it knows of, and a client wants a key once).
    - A value the scheduler took for lost as it registered it (its one holder died in
      between) is let go there and placed again: it is still in hand.
    - When the call fails, whatever may have reached a worker and is not registered
      yet is registered at once, without waiting (``register_rest``): the caller's
      release that follows then frees it there, and no worker keeps data that the
      scheduler does not know of.
    """

    def __init__(
        self,
        session: Session,
        items: list[tuple[str, list[Buffer], int, str]],
        wanted: list[str] | None,
        broadcast: bool,
        replicas: int,
        timeout: float | None,
    ) -> None:
        self.session = session
        self.items = items
        self.wanted = wanted
        self.broadcast = broadcast
        self.replicas = replicas
        self.timeout = timeout
        loop = asyncio.get_running_loop()
        self.deadline = None if timeout is None else loop.time() + timeout
        # The copies the scheduler keeps of each (all workers, to broadcast: as many as
        # there were at first).
        self.copies = 0
        # Item -> the workers that took it (since the last loss of the scheduler).
        self.holders: dict[int, list[str]] = {}
        # Item -> every worker it was sent to, whether it took it or not.
        self.sent: dict[int, set[str]] = {}
        # Item -> where it was before the scheduler was lost: placed there again first.
        self.hint: dict[int, list[str]] = {}
        self.registered: set[int] = set()
        # Workers that failed this scatter -> why.
        self.failed: dict[str, str] = {}
        self.asked = False  # whether the scheduler was asked for workers yet

    async def run(self) -> None:
        session = self.session
        todo = list(range(len(self.items)))
        retries = 0
        while todo:
            comm = await session.scheduler_comm()
            await self._place(todo)
            try:
                if session.comm is not comm:
                    raise CommClosedError("the scheduler was lost while the values were placed")
                # _place placed each, or raised.
                await comm.request(self._message({i: self.holders[i] for i in todo}))
            except CommClosedError as exc:
                if not session.journaled:
                    raise SchedulerLostError(str(exc)) from None
                await session.back(comm, exc)
                todo = await self._after_loss(todo)
                continue
            self.registered.update(todo)
            todo = self._lost(todo)
            if todo:
                retries += 1
                if retries > _LOST_RETRIES:
                    return  # their futures raise LostDataError
                self._place_again(todo)

    # ----------------------------------------------------------------- placing
    async def _place(self, todo: list[int]) -> None:
        """Each item of ``todo`` on as many live workers as it takes (at least one)."""
        live = await self._candidates()
        while True:
            live = [w for w in live if w not in self.failed]
            if not live and any(not self.holders.get(i) for i in todo):
                live = await self._wait_for_workers(todo)
            if not self.copies:
                self.copies = len(live) if self.broadcast else self.replicas
            plan = self._plan(todo, live)
            if not plan:
                return
            await self._put_all(plan)

    def _plan(self, todo: list[int], live: list[str]) -> dict[str, list[int]]:
        """Worker -> the items to put there: each item's missing copies on the live
        workers that do not hold it, item ``i`` starting at the ``i``-th (to spread
        them), where it was before the scheduler was lost first."""
        n = len(live)
        need = n if self.broadcast else min(self.replicas, n)
        plan: dict[str, list[int]] = {}
        for i in todo:
            have = self.holders.setdefault(i, [])
            missing = need - len(have)
            if missing <= 0:
                continue
            hint = [w for w in self.hint.get(i, ()) if w in live]
            for w in dict.fromkeys(hint + live[i % n :] + live[: i % n]):
                if missing == 0:
                    break
                if w not in have:
                    plan.setdefault(w, []).append(i)
                    missing -= 1
        return plan

    async def _candidates(self) -> list[str]:
        """The workers the scheduler lists now (of ``wanted``, if given), least memory
        first, but those that failed this scatter."""
        reply, _ = await self.session.request(SchedulerInfoMsg())
        info: dict[str, Any] = reply.info["workers"]
        first, self.asked = not self.asked, True
        if self.wanted is None:
            targets = sorted(info, key=lambda a: info[a]["memory"])
        else:
            by_name = {w["name"]: a for a, w in info.items()}
            targets = list(dict.fromkeys(by_name.get(w, w) for w in self.wanted))
            unknown = [t for t in targets if t not in info]
            if first and unknown:
                raise ValueError(f"scatter: no such worker(s): {unknown}")
            targets = [t for t in targets if t in info]
        return [t for t in targets if t not in self.failed]

    async def _wait_for_workers(self, todo: list[int]) -> list[str]:
        """Live workers, once the scheduler lists one this scatter has not seen fail
        (a replacement); RuntimeError if none comes in time."""
        loop = asyncio.get_running_loop()
        wait = self.session.client.settings.connect_timeout
        limit = loop.time() + wait if self.deadline is None else self.deadline
        delay = 0.02
        while True:
            live = await self._candidates()
            if live:
                return live
            # Raised before the call's own timeout, so that this error, which says
            # why, is the one the caller gets.
            if loop.time() + delay >= limit:
                raise self._nobody(todo, wait if self.timeout is None else self.timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def _put_all(self, plan: dict[str, list[int]]) -> None:
        """Put each worker's items there at once. A worker that fails is skipped from
        then on, and so is one the scheduler removes while its put hangs."""
        for worker, idx in plan.items():
            for i in idx:
                self.sent.setdefault(i, set()).add(worker)
        tasks = {asyncio.create_task(self._put(w, idx)): w for w, idx in plan.items()}
        pending = set(tasks)
        watch = max(0.1, self.session.client.settings.heartbeat_timeout / 2)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, timeout=watch)
                fatal: BaseException | None = None
                for task in done:
                    worker = tasks[task]
                    if task.cancelled():
                        continue  # removed by the scheduler: noted already
                    exc = task.exception()
                    if exc is None:
                        for i in plan[worker]:
                            self.holders[i].append(worker)
                    elif isinstance(exc, _UNREACHABLE):
                        self._fail(worker, explain(exc))
                    else:
                        fatal = exc
                if fatal is not None:
                    raise fatal
                if pending:
                    await self._drop_removed(pending, tasks)
        finally:
            for task in pending:
                task.cancel()

    async def _put(self, worker: str, idx: list[int]) -> None:
        comm = await self.session.pool.get(worker)
        frames: list[Buffer] = []
        for i in idx:
            frames.extend(self.items[i][1])
        keys = [self.items[i][0] for i in idx]
        counts = [len(self.items[i][1]) for i in idx]
        try:
            lent = self._lend(worker, frames, counts)
            if lent is not None:
                try:
                    # The worker reads them out of our memory: they stay alive (in
                    # ``frames``) until it answers.
                    await comm.request(
                        PutDataMsg(keys=keys, nf=counts, host=shm.HOST, lent=lent[0]), lent[1]
                    )
                    return
                except LendRefusedError:
                    self.session.no_lending.add(worker)
            await comm.request(PutDataMsg(keys=keys, nf=counts), frames)
        except asyncio.CancelledError:
            comm.abort()  # its frames may be half sent; the worker is taken for gone
            raise

    def _lend(
        self, worker: str, frames: list[Buffer], counts: list[int]
    ) -> tuple[LentFrames, list[Buffer]] | None:
        """The large frames to lend ``worker`` (on this host, as far as we know), and
        the frames with those left empty; None if none are lent."""
        if (
            not shm.HOST
            or not lend.usable
            or worker in self.session.no_lending
            or not self.session.client.settings.shared_memory
        ):
            return None
        # Where each value's frames start (its pickle stream, sent inline).
        starts = set(itertools.accumulate(counts[:-1], initial=0))
        loan = lend.Loan()
        out = list(frames)
        for f, frame in enumerate(frames):
            if f not in starts and loan.add(0, f, frame):
                out[f] = b""
        if not loan.frames:
            return None
        return LentFrames(pid=os.getpid(), id=0, frames=loan.frames, made=loan.made), out

    async def _drop_removed(
        self, pending: set[asyncio.Task[None]], tasks: dict[asyncio.Task[None], str]
    ) -> None:
        """Give up the puts still waiting on a worker the scheduler no longer lists (it
        stopped answering the scheduler too)."""
        try:
            async with asyncio.timeout(max(0.1, self.session.client.settings.heartbeat_timeout)):
                reply, _ = await self.session.request(SchedulerInfoMsg())
        except (OSError, RegrowError):
            return  # no news from the scheduler: wait on
        listed = reply.info["workers"]
        for task in pending:
            worker = tasks[task]
            if worker not in listed:
                self._fail(worker, "it stopped answering, and the scheduler removed it")
                task.cancel()

    def _fail(self, worker: str, why: str) -> None:
        """``worker`` cannot take data: whatever it took in this scatter goes again."""
        logger.info("scatter: %s could not take its share (%s); placing it elsewhere", worker, why)
        self.failed[worker] = why
        for holders in self.holders.values():
            if worker in holders:
                holders.remove(worker)

    def _nobody(self, todo: list[int], waited: float) -> RuntimeError:
        left = [self.items[i][0] for i in todo if not self.holders.get(i)]
        among = "" if self.wanted is None else f" of {self.wanted}"
        why = (
            "; ".join(f"{w}: {why}" for w, why in self.failed.items())
            if self.failed
            else f"the scheduler lists no worker{among}"
        )
        return RuntimeError(
            f"scatter: no worker{among} could take {len(left)} of the {len(self.items)} "
            f"values ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}) within "
            f"{waited} s: {why}"
        )

    def failures(self) -> str:
        """The workers that failed this scatter, for its error message."""
        if not self.failed:
            return ""
        return "; workers that could not take data: " + "; ".join(
            f"{w}: {why}" for w, why in self.failed.items()
        )

    # ------------------------------------------------------------- registering
    def _message(self, holders: dict[int, list[str]]) -> ScatteredMsg:
        entries = []
        for i, workers in holders.items():
            key, _, nbytes, type_name = self.items[i]
            entries.append(ScatteredEntry(key=key, nbytes=nbytes, type=type_name, workers=workers))
        return ScatteredMsg(keys=entries, replicas=max(1, self.copies))

    async def _after_loss(self, todo: list[int]) -> list[int]:
        """Back on a scheduler (from its journal) after losing one: the items of
        ``todo`` it does not hold, to place and register again."""
        keys = [self.items[i][0] for i in todo]
        reply, _ = await self.session.request(WhoHasMsg(keys=keys))
        held = {k for k, ws in reply.who_has.items() if ws}
        again = []
        for i in todo:
            self.hint[i] = self.holders.pop(i, [])
            if self.items[i][0] in held:
                self.registered.add(i)  # it had journaled them, and the holders are back
            else:
                again.append(i)
        return again

    def _lost(self, todo: list[int]) -> list[int]:
        """The items the scheduler, as it registered them, took for lost. Its news of
        them came before its answer (one connection, in order), and the session read
        it before this call went on (``Connection.recv``)."""
        lost = []
        for i in todo:
            st = self.session.keys.state(self.items[i][0])
            if st is not None and st.status == ERROR and st.kind == "LostDataError":
                lost.append(i)
        return lost

    def _place_again(self, todo: list[int]) -> None:
        """Let the lost keys of ``todo`` go at the scheduler (an erred key is not
        registered again) and wait for their news again."""
        keys = [self.items[i][0] for i in todo]
        logger.info(
            "scatter: %d values lost as they were registered; placing them again", len(keys)
        )
        self.session.send(ReleaseKeysMsg(keys=keys))
        for i in todo:
            self.registered.discard(i)
            self.holders.pop(i, None)
            st = self.session.keys.state(self.items[i][0])
            if st is not None:
                st.reset()

    def register_rest(self) -> None:
        """The call failed: register what was sent and not registered yet, with every
        worker it was sent to (a put cut short may have landed; the scheduler ignores a
        worker it does not know, and the release that follows frees the keys on the
        others, holding them or not), without waiting (no reply is asked for)."""
        rest = {
            i: sorted(workers)
            for i, workers in self.sent.items()
            if workers and i not in self.registered
        }
        if rest:
            self.session.send(self._message(rest))
