"""Coordination primitives held by the scheduler (dask.distributed's ``Lock``,
``Semaphore``, ``Event``, ``Variable``, ``Queue``, ``Pub``/``Sub`` and published
datasets): pure, no IO.

Owns: each primitive's state by name, the requests waiting on one (answered when they
can be, or with ``ok=False`` at their deadline, on the core's clock through ``Ticked``),
and the futures a held value contains: the scheduler wants them on behalf of
``HOLDER`` (a pseudo-client) while a variable, queue or dataset holds them, and hands
the want to the client that reads the value before it lets its own go, so a result is
never forgotten between the two. Values are the client's pickled bytes: the scheduler
never unpickles them. Leases of a lock or semaphore and the requests of a client that
goes away (its process died: a worker's tasks' client with its worker) are released,
and the next waiter is served.

Must not: read a clock, send anything (it emits ``cmd.Answer``), or know about
connections.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from regrow.core import client_requests
from regrow.core import commands as cmd
from regrow.core import events as ev

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState

# The pseudo-client that wants the futures held in variables, queues and datasets.
HOLDER = "regrow-coordination"


@dataclass(frozen=True, slots=True)
class Item:
    """A value held: the client's pickled bytes, and the keys of the futures in it."""

    payload: bytes
    keys: tuple[str, ...] = ()


@dataclass(slots=True)
class Waiter:
    request: str
    client: str
    deadline: float | None
    ident: str = ""  # a lease's id, a subscriber's id


@dataclass(slots=True)
class Semaphore:
    max_leases: int
    leases: dict[str, str] = field(default_factory=dict)  # lease id -> client
    waiters: deque[Waiter] = field(default_factory=deque)


@dataclass(slots=True)
class Flag:
    is_set: bool = False
    waiters: deque[Waiter] = field(default_factory=deque)


@dataclass(slots=True)
class Slot:
    item: Item | None = None
    waiters: deque[Waiter] = field(default_factory=deque)


@dataclass(slots=True)
class Queue:
    maxsize: int = 0
    items: deque[Item] = field(default_factory=deque)
    getters: deque[Waiter] = field(default_factory=deque)
    # Puts waiting for room (maxsize), with their items.
    putters: deque[tuple[Waiter, Item]] = field(default_factory=deque)


@dataclass(slots=True)
class Subscriber:
    client: str
    items: deque[bytes] = field(default_factory=deque)
    waiter: Waiter | None = None


class Coordination:
    def __init__(self) -> None:
        self.semaphores: dict[tuple[str, str], Semaphore] = {}  # (kind, name)
        self.flags: dict[str, Flag] = {}
        self.variables: dict[str, Slot] = {}
        self.queues: dict[str, Queue] = {}
        self.datasets: dict[str, Item] = {}
        self.topics: dict[str, dict[str, Subscriber]] = {}  # name -> subscriber id -> it
        # Keys wanted by HOLDER: how many held values contain each.
        self.held: dict[str, int] = {}
        # Requests that may be waiting with a deadline (``expire`` has work).
        self.timed = 0

    # ---------------------------------------------------------------- entry
    def handle(self, state: SchedulerState, event: ev.Coordinate) -> None:
        kind, op = event.kind, event.op
        handler = _OPS.get((kind, op))
        if handler is None:
            self._answer(state, event, False, error=f"unknown coordination request {kind!r}/{op!r}")
            return
        handler(self, state, event)

    def expire(self, state: SchedulerState, now: float) -> None:
        """Answer the requests whose deadline passed: not granted."""
        if not self.timed:
            return

        def late(w: Waiter) -> bool:
            return w.deadline is not None and w.deadline <= now

        for queue_ in (
            *(s.waiters for s in self.semaphores.values()),
            *(f.waiters for f in self.flags.values()),
            *(v.waiters for v in self.variables.values()),
            *(q.getters for q in self.queues.values()),
        ):
            if any(late(w) for w in queue_):
                for w in [w for w in queue_ if late(w)]:
                    queue_.remove(w)
                    state._emit(cmd.Answer(client=w.client, request=w.request, ok=False))
        for q in self.queues.values():
            if any(late(w) for w, _ in q.putters):
                for pair in [p for p in q.putters if late(p[0])]:
                    q.putters.remove(pair)
                    w = pair[0]
                    state._emit(cmd.Answer(client=w.client, request=w.request, ok=False))
        for subscribers in self.topics.values():
            for sub in subscribers.values():
                if sub.waiter is not None and late(sub.waiter):
                    w, sub.waiter = sub.waiter, None
                    state._emit(cmd.Answer(client=w.client, request=w.request, ok=False))
        self.timed = sum(1 for w in self._waiters() if w.deadline is not None)

    def _waiters(self) -> list[Waiter]:
        out = [w for s in self.semaphores.values() for w in s.waiters]
        out += [w for f in self.flags.values() for w in f.waiters]
        out += [w for v in self.variables.values() for w in v.waiters]
        out += [w for q in self.queues.values() for w in q.getters]
        out += [w for q in self.queues.values() for w, _ in q.putters]
        out += [s.waiter for t in self.topics.values() for s in t.values() if s.waiter]
        return out

    def client_gone(self, state: SchedulerState, client: str) -> None:
        """``client`` left for good: its leases are released (the next waiters get them),
        its waiting requests and subscriptions dropped."""
        for sem in self.semaphores.values():
            for lease in [lease for lease, c in sem.leases.items() if c == client]:
                del sem.leases[lease]
            _drop(sem.waiters, client)
            self._grant(state, sem)
        for flag in self.flags.values():
            _drop(flag.waiters, client)
        for slot in self.variables.values():
            _drop(slot.waiters, client)
        for q in self.queues.values():
            _drop(q.getters, client)
            for pair in [p for p in q.putters if p[0].client == client]:
                q.putters.remove(pair)
                self._let_go(state, pair[1])
        for name, subscribers in list(self.topics.items()):
            for ident in [i for i, s in subscribers.items() if s.client == client]:
                del subscribers[ident]
            if not subscribers:
                del self.topics[name]

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _answer(
        state: SchedulerState,
        event: ev.Coordinate,
        ok: bool,
        *,
        payload: bytes | None = None,
        number: float = 0.0,
        error: str = "",
    ) -> None:
        state._emit(
            cmd.Answer(
                client=event.client,
                request=event.request,
                ok=ok,
                payload=payload,
                number=number,
                error=error,
            )
        )

    def _deadline(self, event: ev.Coordinate) -> float | None:
        if event.timeout is None:
            return None
        self.timed += 1
        return event.now + max(0.0, event.timeout)

    def _hold(self, state: SchedulerState, item: Item) -> None:
        """Want the futures in ``item`` for as long as it is held."""
        new = []
        for key in item.keys:
            self.held[key] = self.held.get(key, 0) + 1
            if self.held[key] == 1:
                new.append(key)
        if new:
            client_requests.keys_desired(state, ev.KeysDesired(client=HOLDER, keys=tuple(new)))

    def _let_go(self, state: SchedulerState, item: Item) -> None:
        gone = []
        for key in item.keys:
            n = self.held.get(key, 0) - 1
            if n <= 0:
                self.held.pop(key, None)
                gone.append(key)
            else:
                self.held[key] = n
        if gone:
            client_requests.keys_released(state, HOLDER, gone)

    def _give(self, state: SchedulerState, client: str, item: Item) -> None:
        """``client`` reads ``item``: it wants the futures in it from now on (before the
        holder may let them go)."""
        if item.keys:
            client_requests.keys_desired(state, ev.KeysDesired(client=client, keys=item.keys))

    def _grant(self, state: SchedulerState, sem: Semaphore) -> None:
        while sem.waiters and len(sem.leases) < sem.max_leases:
            w = sem.waiters.popleft()
            sem.leases[w.ident] = w.client
            state._emit(cmd.Answer(client=w.client, request=w.request, ok=True))

    # -------------------------------------------------- lock and semaphore
    def _semaphore(self, event: ev.Coordinate) -> Semaphore | str:
        key = (event.kind, event.name)
        sem = self.semaphores.get(key)
        wanted = 1 if event.kind == "lock" else int(event.number)
        if sem is None:
            if wanted < 1:
                return f"max_leases must be at least 1, got {event.number!r}"
            sem = self.semaphores[key] = Semaphore(wanted)
        elif event.kind == "semaphore" and wanted != sem.max_leases:
            return f"semaphore {event.name!r} exists with max_leases={sem.max_leases}, not {wanted}"
        return sem

    def _acquire(self, state: SchedulerState, event: ev.Coordinate) -> None:
        sem = self._semaphore(event)
        if isinstance(sem, str):
            self._answer(state, event, False, error=sem)
            return
        lease = event.ident
        if not lease:
            self._answer(state, event, False, error="an acquire needs a lease id")
            return
        if lease in sem.leases:
            self._answer(state, event, True)  # a retried request: held already
        elif len(sem.leases) < sem.max_leases and not sem.waiters:
            sem.leases[lease] = event.client
            self._answer(state, event, True)
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            sem.waiters.append(Waiter(event.request, event.client, self._deadline(event), lease))

    def _release(self, state: SchedulerState, event: ev.Coordinate) -> None:
        sem = self.semaphores.get((event.kind, event.name))
        if sem is None or sem.leases.pop(event.ident, None) is None:
            self._answer(
                state,
                event,
                False,
                error=f"{event.kind} {event.name!r} is not held by this {event.kind} object "
                "(released already, or its lease was lost with its holder)",
            )
            return
        self._answer(state, event, True)
        self._grant(state, sem)

    def _leases(self, state: SchedulerState, event: ev.Coordinate) -> None:
        sem = self.semaphores.get((event.kind, event.name))
        self._answer(state, event, True, number=len(sem.leases) if sem else 0)

    # ---------------------------------------------------------------- event
    def _event_set(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.setdefault(event.name, Flag())
        flag.is_set = True
        while flag.waiters:
            w = flag.waiters.popleft()
            state._emit(cmd.Answer(client=w.client, request=w.request, ok=True))
        self._answer(state, event, True)

    def _event_clear(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.get(event.name)
        if flag is not None:
            flag.is_set = False
            if not flag.waiters:
                del self.flags[event.name]
        self._answer(state, event, True)

    def _event_wait(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.setdefault(event.name, Flag())
        if flag.is_set:
            self._answer(state, event, True)
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            flag.waiters.append(Waiter(event.request, event.client, self._deadline(event)))

    def _event_is_set(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.get(event.name)
        self._answer(state, event, flag is not None and flag.is_set)

    # ------------------------------------------------------------- variable
    def _variable_set(self, state: SchedulerState, event: ev.Coordinate) -> None:
        slot = self.variables.setdefault(event.name, Slot())
        item = Item(event.payload or b"", event.keys)
        self._hold(state, item)
        old, slot.item = slot.item, item
        while slot.waiters:
            w = slot.waiters.popleft()
            self._give(state, w.client, item)
            state._emit(
                cmd.Answer(client=w.client, request=w.request, ok=True, payload=item.payload)
            )
        if old is not None:
            self._let_go(state, old)
        self._answer(state, event, True)

    def _variable_get(self, state: SchedulerState, event: ev.Coordinate) -> None:
        slot = self.variables.setdefault(event.name, Slot())
        if slot.item is not None:
            self._give(state, event.client, slot.item)
            self._answer(state, event, True, payload=slot.item.payload)
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            slot.waiters.append(Waiter(event.request, event.client, self._deadline(event)))

    def _variable_delete(self, state: SchedulerState, event: ev.Coordinate) -> None:
        slot = self.variables.get(event.name)
        if slot is not None:
            if slot.item is not None:
                self._let_go(state, slot.item)
                slot.item = None
            if not slot.waiters:
                del self.variables[event.name]
        self._answer(state, event, True)

    # ---------------------------------------------------------------- queue
    def _queue(self, event: ev.Coordinate) -> Queue:
        q = self.queues.get(event.name)
        if q is None:
            q = self.queues[event.name] = Queue(maxsize=max(0, int(event.number)))
        return q

    def _queue_put(self, state: SchedulerState, event: ev.Coordinate) -> None:
        q = self._queue(event)
        item = Item(event.payload or b"", event.keys)
        self._hold(state, item)
        if q.getters:
            w = q.getters.popleft()
            self._hand(state, w, item)
            self._answer(state, event, True)
        elif not q.maxsize or len(q.items) < q.maxsize:
            q.items.append(item)
            self._answer(state, event, True)
        elif event.timeout is not None and event.timeout <= 0:
            self._let_go(state, item)
            self._answer(state, event, False)
        else:
            q.putters.append((Waiter(event.request, event.client, self._deadline(event)), item))

    def _hand(self, state: SchedulerState, w: Waiter, item: Item) -> None:
        """Give ``item`` to the waiting getter ``w``; the queue holds it no more."""
        self._give(state, w.client, item)
        state._emit(cmd.Answer(client=w.client, request=w.request, ok=True, payload=item.payload))
        self._let_go(state, item)

    def _queue_get(self, state: SchedulerState, event: ev.Coordinate) -> None:
        q = self._queue(event)
        if q.items:
            item = q.items.popleft()
            w = Waiter(event.request, event.client, None)
            self._hand(state, w, item)
            self._admit(state, q)
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            q.getters.append(Waiter(event.request, event.client, self._deadline(event)))

    def _admit(self, state: SchedulerState, q: Queue) -> None:
        """Room again: waiting puts go in."""
        while q.putters and (not q.maxsize or len(q.items) < q.maxsize):
            w, item = q.putters.popleft()
            q.items.append(item)
            state._emit(cmd.Answer(client=w.client, request=w.request, ok=True))

    def _queue_size(self, state: SchedulerState, event: ev.Coordinate) -> None:
        q = self.queues.get(event.name)
        self._answer(state, event, True, number=len(q.items) if q else 0)

    # -------------------------------------------------------------- dataset
    def _publish(self, state: SchedulerState, event: ev.Coordinate) -> None:
        old = self.datasets.get(event.name)
        if old is not None and not event.number:  # number: override
            self._answer(
                state,
                event,
                False,
                error=f"a dataset named {event.name!r} exists already",
            )
            return
        item = Item(event.payload or b"", event.keys)
        self._hold(state, item)
        self.datasets[event.name] = item
        if old is not None:
            self._let_go(state, old)
        self._answer(state, event, True)

    def _dataset_get(self, state: SchedulerState, event: ev.Coordinate) -> None:
        item = self.datasets.get(event.name)
        if item is None:
            self._answer(state, event, False, error=f"no dataset named {event.name!r}")
            return
        self._give(state, event.client, item)
        self._answer(state, event, True, payload=item.payload)

    def _unpublish(self, state: SchedulerState, event: ev.Coordinate) -> None:
        item = self.datasets.pop(event.name, None)
        if item is None:
            self._answer(state, event, False, error=f"no dataset named {event.name!r}")
            return
        self._let_go(state, item)
        self._answer(state, event, True)

    def _dataset_list(self, state: SchedulerState, event: ev.Coordinate) -> None:
        names = "\n".join(sorted(self.datasets)).encode()
        self._answer(state, event, True, payload=names)

    # --------------------------------------------------------------- pubsub
    def _subscribe(self, state: SchedulerState, event: ev.Coordinate) -> None:
        subscribers = self.topics.setdefault(event.name, {})
        subscribers.setdefault(event.ident, Subscriber(event.client))
        self._answer(state, event, True)

    def _unsubscribe(self, state: SchedulerState, event: ev.Coordinate) -> None:
        subscribers = self.topics.get(event.name, {})
        sub = subscribers.pop(event.ident, None)
        if sub is not None and sub.waiter is not None:
            w = sub.waiter
            state._emit(cmd.Answer(client=w.client, request=w.request, ok=False))
        if not subscribers:
            self.topics.pop(event.name, None)
        self._answer(state, event, True)

    def _publish_message(self, state: SchedulerState, event: ev.Coordinate) -> None:
        payload = event.payload or b""
        subscribers = self.topics.get(event.name, {})
        for sub in subscribers.values():
            if sub.waiter is not None:
                w, sub.waiter = sub.waiter, None
                state._emit(
                    cmd.Answer(client=w.client, request=w.request, ok=True, payload=payload)
                )
            else:
                sub.items.append(payload)
        self._answer(state, event, True, number=len(subscribers))

    def _next_message(self, state: SchedulerState, event: ev.Coordinate) -> None:
        sub = self.topics.get(event.name, {}).get(event.ident)
        if sub is None:
            self._answer(state, event, False, error=f"not subscribed to {event.name!r}")
        elif sub.items:
            self._answer(state, event, True, payload=sub.items.popleft())
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            if sub.waiter is not None:  # one get at a time per subscriber: the older ends
                old = sub.waiter
                state._emit(cmd.Answer(client=old.client, request=old.request, ok=False))
            sub.waiter = Waiter(event.request, event.client, self._deadline(event))


def _drop(waiters: deque[Waiter], client: str) -> None:
    for w in [w for w in waiters if w.client == client]:
        waiters.remove(w)


_OPS = {
    ("lock", "acquire"): Coordination._acquire,
    ("lock", "release"): Coordination._release,
    ("lock", "locked"): Coordination._leases,
    ("semaphore", "acquire"): Coordination._acquire,
    ("semaphore", "release"): Coordination._release,
    ("semaphore", "leases"): Coordination._leases,
    ("event", "set"): Coordination._event_set,
    ("event", "clear"): Coordination._event_clear,
    ("event", "wait"): Coordination._event_wait,
    ("event", "is_set"): Coordination._event_is_set,
    ("variable", "set"): Coordination._variable_set,
    ("variable", "get"): Coordination._variable_get,
    ("variable", "delete"): Coordination._variable_delete,
    ("queue", "put"): Coordination._queue_put,
    ("queue", "get"): Coordination._queue_get,
    ("queue", "qsize"): Coordination._queue_size,
    ("dataset", "publish"): Coordination._publish,
    ("dataset", "get"): Coordination._dataset_get,
    ("dataset", "unpublish"): Coordination._unpublish,
    ("dataset", "list"): Coordination._dataset_list,
    ("pubsub", "subscribe"): Coordination._subscribe,
    ("pubsub", "unsubscribe"): Coordination._unsubscribe,
    ("pubsub", "put"): Coordination._publish_message,
    ("pubsub", "get"): Coordination._next_message,
}
