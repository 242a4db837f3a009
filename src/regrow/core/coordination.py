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

Durability (a journaled scheduler): what a primitive holds is one plain row per
``(kind, name)`` (``row``); those that changed are listed in ``changed`` for the journal
to write, and ``restore`` reads them back. The answer to a request that changes a
primitive is ``durable`` (the shell sends it once the journal holds the change) and is
remembered by request id (the client's own id for the call, the last
``ANSWERS_KEPT``): a client that lost the scheduler asks again with the same id, and
gets the same answer rather than a second put or take. A request asked again while it
still waits just waits (its answer goes to the newer connection). The wants that
holding and reading values make are listed in ``wants`` for the journal.

Must not: read a clock, send anything (it emits ``cmd.Answer``), or know about
connections.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from regrow.core import client_requests
from regrow.core import commands as cmd
from regrow.core import events as ev
from regrow.errors import explain

if TYPE_CHECKING:
    from regrow.core.scheduler_state import SchedulerState

# The pseudo-client that wants the futures held in variables, queues and datasets.
HOLDER = "regrow-coordination"

# Requests that change what a primitive holds: their answers wait for the journal and
# are remembered, so asking again does not do it twice.
CHANGES = frozenset(
    {
        ("lock", "acquire"),
        ("lock", "release"),
        ("semaphore", "acquire"),
        ("semaphore", "release"),
        ("event", "set"),
        ("event", "clear"),
        ("variable", "set"),
        ("variable", "delete"),
        ("queue", "put"),
        ("queue", "get"),
        ("dataset", "publish"),
        ("dataset", "unpublish"),
        ("pubsub", "subscribe"),
        ("pubsub", "unsubscribe"),
        ("pubsub", "put"),
        ("pubsub", "get"),
    }
)
# How many answers to such requests are remembered (a client asks again within
# seconds of getting its scheduler back).
ANSWERS_KEPT = 4096


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
    changes: bool = True  # its answer changes a primitive (see CHANGES)


@dataclass(slots=True)
class Semaphore:
    key: tuple[str, str]  # (kind, name)
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
        # Durability (read and emptied by the journal): the primitives that changed,
        # the answers to remember, and the wants made or dropped (client, key, wanted).
        self.changed: set[tuple[str, str]] = set()
        self.answers: list[cmd.Answer] = []
        self.wants: list[tuple[str, str, bool]] = []
        self.answered: OrderedDict[str, cmd.Answer] = OrderedDict()
        self.waiting: set[str] = set()  # requests waiting, by id

    # ---------------------------------------------------------------- entry
    def handle(self, state: SchedulerState, event: ev.Coordinate) -> None:
        kind, op = event.kind, event.op
        handler = _OPS.get((kind, op))
        if handler is None:
            self._answer(state, event, False, error=f"unknown coordination request {kind!r}/{op!r}")
            return
        done = self.answered.get(event.request)
        if done is not None and done.client == event.client:
            state._emit(done)  # asked again (the scheduler was lost): the same answer
            return
        if event.request in self.waiting:
            return  # asked again while it waits: the answer goes to the newer connection
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
                    self._reply(state, w, False)
        for q in self.queues.values():
            if any(late(w) for w, _ in q.putters):
                for pair in [p for p in q.putters if late(p[0])]:
                    q.putters.remove(pair)
                    self._let_go(state, pair[1])
                    self._reply(state, pair[0], False)
        for subscribers in self.topics.values():
            for sub in subscribers.values():
                if sub.waiter is not None and late(sub.waiter):
                    w, sub.waiter = sub.waiter, None
                    self._reply(state, w, False)
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
        for (kind, name), sem in self.semaphores.items():
            mine = [lease for lease, c in sem.leases.items() if c == client]
            for lease in mine:
                del sem.leases[lease]
            if mine:
                self.changed.add((kind, name))
            self._drop(sem.waiters, client)
            self._grant(state, sem)
        for flag in self.flags.values():
            self._drop(flag.waiters, client)
        for slot in self.variables.values():
            self._drop(slot.waiters, client)
        for q in self.queues.values():
            self._drop(q.getters, client)
            for pair in [p for p in q.putters if p[0].client == client]:
                q.putters.remove(pair)
                self.waiting.discard(pair[0].request)
                self._let_go(state, pair[1])
        for name, subscribers in list(self.topics.items()):
            for ident in [i for i, s in subscribers.items() if s.client == client]:
                sub = subscribers.pop(ident)
                if sub.waiter is not None:
                    self.waiting.discard(sub.waiter.request)
                self.changed.add(("pubsub", name))
            if not subscribers:
                del self.topics[name]

    def _drop(self, waiters: deque[Waiter], client: str) -> None:
        for w in [w for w in waiters if w.client == client]:
            waiters.remove(w)
            self.waiting.discard(w.request)

    # ------------------------------------------------------------ durability
    def row(self, kind: str, name: str) -> dict[str, Any] | None:
        """What the primitive ``kind``/``name`` holds, as plain data (None: nothing,
        its row goes). Requests waiting are not part of it: their clients ask again."""
        if kind in ("lock", "semaphore"):
            sem = self.semaphores.get((kind, name))
            if sem is None or not sem.leases:
                return None
            return {"max_leases": sem.max_leases, "leases": dict(sem.leases)}
        if kind == "event":
            flag = self.flags.get(name)
            return {"set": True} if flag is not None and flag.is_set else None
        if kind == "variable":
            slot = self.variables.get(name)
            return None if slot is None or slot.item is None else {"item": _plain(slot.item)}
        if kind == "queue":
            q = self.queues.get(name)
            if q is None or (not q.items and not q.maxsize):
                return None
            return {"maxsize": q.maxsize, "items": [_plain(i) for i in q.items]}
        if kind == "dataset":
            item = self.datasets.get(name)
            return None if item is None else {"item": _plain(item)}
        if kind == "pubsub":
            subscribers = self.topics.get(name)
            if not subscribers:
                return None
            return {"subscribers": {i: [s.client, list(s.items)] for i, s in subscribers.items()}}
        raise ValueError(f"no coordination primitive of kind {kind!r}")

    def restore(
        self,
        rows: tuple[tuple[str, str, Any], ...],
        answers: tuple[ev.Answered, ...],
    ) -> list[str]:
        """Primitives as the journal kept them (``row``), and remembered answers; the
        wants on held futures come back with the journal's wants. Returns what could not
        be read (one line each)."""
        bad: list[str] = []
        for kind, name, data in rows:
            try:
                self._restore_row(kind, name, data)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                bad.append(f"{kind} {name!r}: {explain(exc)}")
        for a in answers:
            self.answered[a.request] = cmd.Answer(
                client=a.client,
                request=a.request,
                ok=a.ok,
                payload=a.payload,
                number=a.number,
                error=a.error,
                durable=True,
            )
        while len(self.answered) > ANSWERS_KEPT:
            self.answered.popitem(last=False)
        for item in self._items():
            for key in item.keys:
                self.held[key] = self.held.get(key, 0) + 1
        return bad

    def _restore_row(self, kind: str, name: str, data: Any) -> None:
        if not isinstance(name, str) or not isinstance(data, dict):
            raise TypeError(f"a row is a name and a map, got {type(data).__name__}")
        if kind in ("lock", "semaphore"):
            leases = {str(k): str(v) for k, v in dict(data["leases"]).items()}
            self.semaphores[(kind, name)] = Semaphore((kind, name), int(data["max_leases"]), leases)
        elif kind == "event":
            self.flags[name] = Flag(is_set=bool(data["set"]))
        elif kind == "variable":
            self.variables[name] = Slot(_item(data["item"]))
        elif kind == "queue":
            items = deque(_item(i) for i in data["items"])
            self.queues[name] = Queue(maxsize=int(data["maxsize"]), items=items)
        elif kind == "dataset":
            self.datasets[name] = _item(data["item"])
        elif kind == "pubsub":
            self.topics[name] = {
                str(i): Subscriber(str(c), deque(bytes(m) for m in msgs))
                for i, (c, msgs) in dict(data["subscribers"]).items()
            }
        else:
            raise ValueError(f"no coordination primitive of kind {kind!r}")

    def _items(self) -> list[Item]:
        out = [s.item for s in self.variables.values() if s.item is not None]
        out += [i for q in self.queues.values() for i in q.items]
        out += [i for q in self.queues.values() for _, i in q.putters]
        out += list(self.datasets.values())
        return out

    def forget_changes(self) -> None:
        """No journal keeps them."""
        if self.changed or self.answers or self.wants:
            self.changed.clear()
            self.answers.clear()
            self.wants.clear()

    def clients(self) -> set[str]:
        """The clients that hold leases or subscriptions."""
        out = {c for sem in self.semaphores.values() for c in sem.leases.values()}
        out |= {s.client for t in self.topics.values() for s in t.values()}
        return out

    # ------------------------------------------------------------- helpers
    def _answer(
        self,
        state: SchedulerState,
        event: ev.Coordinate,
        ok: bool,
        *,
        payload: bytes | None = None,
        number: float = 0.0,
        error: str = "",
    ) -> None:
        answer = cmd.Answer(
            client=event.client,
            request=event.request,
            ok=ok,
            payload=payload,
            number=number,
            error=error,
            durable=(event.kind, event.op) in CHANGES,
        )
        if answer.durable:
            self._remember(answer)
        state._emit(answer)

    def _reply(
        self, state: SchedulerState, w: Waiter, ok: bool, *, payload: bytes | None = None
    ) -> None:
        """Answer the waiting request ``w``."""
        self.waiting.discard(w.request)
        answer = cmd.Answer(
            client=w.client, request=w.request, ok=ok, payload=payload, durable=w.changes
        )
        if answer.durable:
            self._remember(answer)
        state._emit(answer)

    def _remember(self, answer: cmd.Answer) -> None:
        self.answered[answer.request] = answer
        self.answers.append(answer)
        if len(self.answered) > ANSWERS_KEPT:
            self.answered.popitem(last=False)

    def _wait(self, event: ev.Coordinate, ident: str = "") -> Waiter:
        """A waiter for ``event``, the request that cannot be answered yet."""
        deadline = None
        if event.timeout is not None:
            self.timed += 1
            deadline = event.now + max(0.0, event.timeout)
        self.waiting.add(event.request)
        return Waiter(
            event.request, event.client, deadline, ident, (event.kind, event.op) in CHANGES
        )

    def _hold(self, state: SchedulerState, item: Item) -> None:
        """Want the futures in ``item`` for as long as it is held."""
        new = []
        for key in item.keys:
            self.held[key] = self.held.get(key, 0) + 1
            if self.held[key] == 1:
                new.append(key)
        if new:
            client_requests.keys_desired(state, ev.KeysDesired(client=HOLDER, keys=tuple(new)))
            self.wants += [(HOLDER, key, True) for key in new if key in state.tasks]

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
            self.wants += [(HOLDER, key, False) for key in gone]

    def _give(self, state: SchedulerState, client: str, item: Item) -> None:
        """``client`` reads ``item``: it wants the futures in it from now on (before the
        holder may let them go)."""
        if item.keys:
            client_requests.keys_desired(state, ev.KeysDesired(client=client, keys=item.keys))
            self.wants += [(client, key, True) for key in item.keys if key in state.tasks]

    def _grant(self, state: SchedulerState, sem: Semaphore) -> None:
        while sem.waiters and len(sem.leases) < sem.max_leases:
            w = sem.waiters.popleft()
            sem.leases[w.ident] = w.client
            self.changed.add(sem.key)
            self._reply(state, w, True)

    # -------------------------------------------------- lock and semaphore
    def _semaphore(self, event: ev.Coordinate) -> Semaphore | str:
        key = (event.kind, event.name)
        sem = self.semaphores.get(key)
        wanted = 1 if event.kind == "lock" else int(event.number)
        if sem is None:
            if wanted < 1:
                return f"max_leases must be at least 1, got {event.number!r}"
            sem = self.semaphores[key] = Semaphore(key, wanted)
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
            self.changed.add(sem.key)
            self._answer(state, event, True)
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            sem.waiters.append(self._wait(event, lease))

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
        self.changed.add(sem.key)
        self._answer(state, event, True)
        self._grant(state, sem)

    def _leases(self, state: SchedulerState, event: ev.Coordinate) -> None:
        sem = self.semaphores.get((event.kind, event.name))
        self._answer(state, event, True, number=len(sem.leases) if sem else 0)

    # ---------------------------------------------------------------- event
    def _event_set(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.setdefault(event.name, Flag())
        flag.is_set = True
        self.changed.add(("event", event.name))
        while flag.waiters:
            self._reply(state, flag.waiters.popleft(), True)
        self._answer(state, event, True)

    def _event_clear(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.get(event.name)
        if flag is not None:
            flag.is_set = False
            self.changed.add(("event", event.name))
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
            flag.waiters.append(self._wait(event))

    def _event_is_set(self, state: SchedulerState, event: ev.Coordinate) -> None:
        flag = self.flags.get(event.name)
        self._answer(state, event, flag is not None and flag.is_set)

    # ------------------------------------------------------------- variable
    def _variable_set(self, state: SchedulerState, event: ev.Coordinate) -> None:
        slot = self.variables.setdefault(event.name, Slot())
        item = Item(event.payload or b"", event.keys)
        self._hold(state, item)
        old, slot.item = slot.item, item
        self.changed.add(("variable", event.name))
        while slot.waiters:
            w = slot.waiters.popleft()
            self._give(state, w.client, item)
            self._reply(state, w, True, payload=item.payload)
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
            slot.waiters.append(self._wait(event))

    def _variable_delete(self, state: SchedulerState, event: ev.Coordinate) -> None:
        slot = self.variables.get(event.name)
        if slot is not None:
            if slot.item is not None:
                self._let_go(state, slot.item)
                slot.item = None
                self.changed.add(("variable", event.name))
            if not slot.waiters:
                del self.variables[event.name]
        self._answer(state, event, True)

    # ---------------------------------------------------------------- queue
    def _queue(self, event: ev.Coordinate) -> Queue:
        q = self.queues.get(event.name)
        if q is None:
            q = self.queues[event.name] = Queue(maxsize=max(0, int(event.number)))
            self.changed.add(("queue", event.name))
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
            self.changed.add(("queue", event.name))
            self._answer(state, event, True)
        elif event.timeout is not None and event.timeout <= 0:
            self._let_go(state, item)
            self._answer(state, event, False)
        else:
            q.putters.append((self._wait(event), item))

    def _hand(self, state: SchedulerState, w: Waiter, item: Item) -> None:
        """Give ``item`` to the waiting getter ``w``; the queue holds it no more."""
        self._give(state, w.client, item)
        self._reply(state, w, True, payload=item.payload)
        self._let_go(state, item)

    def _queue_get(self, state: SchedulerState, event: ev.Coordinate) -> None:
        q = self._queue(event)
        if q.items:
            item = q.items.popleft()
            self.changed.add(("queue", event.name))
            w = Waiter(event.request, event.client, None)
            self._hand(state, w, item)
            self._admit(state, q)
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            q.getters.append(self._wait(event))

    def _admit(self, state: SchedulerState, q: Queue) -> None:
        """Room again: waiting puts go in."""
        while q.putters and (not q.maxsize or len(q.items) < q.maxsize):
            w, item = q.putters.popleft()
            q.items.append(item)
            self._reply(state, w, True)

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
        self.changed.add(("dataset", event.name))
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
        self.changed.add(("dataset", event.name))
        self._let_go(state, item)
        self._answer(state, event, True)

    def _dataset_list(self, state: SchedulerState, event: ev.Coordinate) -> None:
        names = "\n".join(sorted(self.datasets)).encode()
        self._answer(state, event, True, payload=names)

    # --------------------------------------------------------------- pubsub
    def _subscribe(self, state: SchedulerState, event: ev.Coordinate) -> None:
        subscribers = self.topics.setdefault(event.name, {})
        subscribers.setdefault(event.ident, Subscriber(event.client))
        self.changed.add(("pubsub", event.name))
        self._answer(state, event, True)

    def _unsubscribe(self, state: SchedulerState, event: ev.Coordinate) -> None:
        subscribers = self.topics.get(event.name, {})
        sub = subscribers.pop(event.ident, None)
        if sub is not None and sub.waiter is not None:
            self._reply(state, sub.waiter, False)
        self.changed.add(("pubsub", event.name))
        if not subscribers:
            self.topics.pop(event.name, None)
        self._answer(state, event, True)

    def _publish_message(self, state: SchedulerState, event: ev.Coordinate) -> None:
        payload = event.payload or b""
        subscribers = self.topics.get(event.name, {})
        for sub in subscribers.values():
            if sub.waiter is not None:
                w, sub.waiter = sub.waiter, None
                self._reply(state, w, True, payload=payload)
            else:
                sub.items.append(payload)
        if subscribers:
            self.changed.add(("pubsub", event.name))
        self._answer(state, event, True, number=len(subscribers))

    def _next_message(self, state: SchedulerState, event: ev.Coordinate) -> None:
        sub = self.topics.get(event.name, {}).get(event.ident)
        if sub is None:
            self._answer(state, event, False, error=f"not subscribed to {event.name!r}")
        elif sub.items:
            self.changed.add(("pubsub", event.name))
            self._answer(state, event, True, payload=sub.items.popleft())
        elif event.timeout is not None and event.timeout <= 0:
            self._answer(state, event, False)
        else:
            if sub.waiter is not None:  # one get at a time per subscriber: the older ends
                self._reply(state, sub.waiter, False)
            sub.waiter = self._wait(event)


def _plain(item: Item) -> list[Any]:
    return [item.payload, list(item.keys)]


def _item(data: Any) -> Item:
    payload, keys = data
    if not isinstance(payload, bytes) or not all(isinstance(k, str) for k in keys):
        raise TypeError("a held value is bytes and a list of keys")
    return Item(payload, tuple(keys))


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
