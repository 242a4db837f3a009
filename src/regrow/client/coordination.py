"""Coordination primitives held by the scheduler, as dask.distributed's: ``Lock``,
``Semaphore``, ``Event``, ``Variable``, ``Queue``, ``Pub``/``Sub``, and the datasets
behind ``Client.publish_dataset``.

Each is a name on the scheduler (``core.coordination``); any client of the cluster, a
task's included (``get_client()``), reaches it by that name, and an object of these
classes may be passed to tasks (it pickles as its name). Values are pickled here and
kept by the scheduler as bytes it never unpickles; futures in a value stay computed
while it is held. A lock's or semaphore's lease goes back when its holder's process
dies (a task's, with its worker), and the next waiter gets it.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import cloudpickle

from regrow.client.futures import Future
from regrow.errors import explain
from regrow.protocol.messages import CoordinateMsg, CoordinateReply

if TYPE_CHECKING:
    from regrow.client.client import Client

T = TypeVar("T")
_SLACK = 30.0  # seconds a request may take beyond the time it may wait on the scheduler


class _KeyPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """Pickles a value and notes the keys of the futures in it."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.keys: list[str] = []

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Future):
            self.keys.append(obj.key)
        return super().reducer_override(obj)


def pack(value: Any) -> tuple[bytes, list[str]]:
    """``value`` pickled, and the keys of the futures in it."""
    buffer = io.BytesIO()
    pickler = _KeyPickler(buffer)
    try:
        pickler.dump(value)
    except Exception as exc:
        raise TypeError(f"the value cannot be pickled: {explain(exc)}") from exc
    return buffer.getvalue(), list(dict.fromkeys(pickler.keys))


def _timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout != timeout:
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    return max(0.0, float(timeout))


def _name(name: str | None, kind: str) -> str:
    if name is None:
        return f"{kind}-{uuid.uuid4().hex}"
    if not isinstance(name, str) or not name:
        raise TypeError(f"a {kind}'s name must be a non-empty str, got {name!r}")
    return name


class _Primitive:
    kind = ""

    def __init__(self, name: str | None = None, client: Client | None = None) -> None:
        self.name = _name(name, self.kind)
        self._client = client

    @property
    def client(self) -> Client:
        if self._client is None:
            from regrow.client.client import get_client

            self._client = get_client()
        return self._client

    def _ask(
        self,
        op: str,
        *,
        payload: bytes | None = None,
        keys: list[str] | None = None,
        number: float = 0.0,
        ident: str = "",
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, CoordinateReply]:
        msg = CoordinateMsg(
            kind=self.kind,
            name=self.name,
            action=op,
            payload=payload,
            keys=keys or [],
            number=number,
            ident=ident,
            timeout=timeout,
        )
        return self.client._coordinate(msg, None if timeout is None else timeout + _SLACK)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.client._sync(coro)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


def _checked(reply: CoordinateReply) -> CoordinateReply:
    if reply.error:
        raise ValueError(reply.error)
    return reply


class Lock(_Primitive):
    """A lock held by the scheduler (dask.distributed's ``Lock``): one holder at a
    time cluster-wide. Its holder's death releases it to the next waiter."""

    kind = "lock"

    def __init__(self, name: str | None = None, client: Client | None = None) -> None:
        super().__init__(name, client)
        self._leases: list[str] = []

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> Any:
        """True once held; False if not within ``timeout`` (or at once, not ``blocking``)."""
        wait = _timeout(timeout) if blocking else 0.0
        return self._run(self._acquire(wait))

    async def _acquire(self, wait: float | None) -> bool:
        lease = uuid.uuid4().hex
        reply = _checked(await self._ask("acquire", ident=lease, timeout=wait))
        if reply.ok:
            self._leases.append(lease)
        return reply.ok

    def release(self) -> Any:
        if not self._leases:
            raise RuntimeError(f"{self!r} is released already (or was never acquired here)")
        return self._run(self._release())

    async def _release(self) -> None:
        lease = self._leases.pop()
        _checked(await self._ask("release", ident=lease))

    def locked(self) -> Any:
        return self._run(self._count("locked"))

    async def _count(self, op: str) -> Any:
        reply = _checked(await self._ask(op))
        return bool(reply.number) if op == "locked" else int(reply.number)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class Semaphore(Lock):
    """At most ``max_leases`` holders at a time cluster-wide (dask.distributed's
    ``Semaphore``). A holder's death gives its leases back."""

    kind = "semaphore"

    def __init__(
        self, max_leases: int = 1, name: str | None = None, client: Client | None = None
    ) -> None:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise ValueError(f"max_leases must be an int >= 1, got {max_leases!r}")
        self.max_leases = max_leases
        super().__init__(name, client)

    def _ask(self, op: str, **kwargs: Any) -> Coroutine[Any, Any, CoordinateReply]:
        kwargs.setdefault("number", self.max_leases)
        return super()._ask(op, **kwargs)

    def acquire(self, timeout: float | None = None) -> Any:  # type: ignore[override]
        return self._run(self._acquire(_timeout(timeout)))

    def get_value(self) -> Any:
        """How many leases are held now."""
        return self._run(self._count("leases"))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.max_leases, self.name))

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    async def __aenter__(self) -> Semaphore:
        await self.acquire()
        return self


class Event(_Primitive):
    """A flag held by the scheduler (dask.distributed's ``Event``)."""

    kind = "event"

    def set(self) -> Any:
        return self._run(self._op("set"))

    def clear(self) -> Any:
        return self._run(self._op("clear"))

    def is_set(self) -> Any:
        return self._run(self._ok("is_set", None))

    def wait(self, timeout: float | None = None) -> Any:
        """True once set; False if not within ``timeout``."""
        return self._run(self._ok("wait", _timeout(timeout)))

    async def _op(self, op: str) -> None:
        _checked(await self._ask(op))

    async def _ok(self, op: str, timeout: float | None) -> bool:
        return _checked(await self._ask(op, timeout=timeout)).ok


class Variable(_Primitive):
    """One value held by the scheduler under a name (dask.distributed's ``Variable``):
    any picklable value, or futures (kept computed while held)."""

    kind = "variable"

    def set(self, value: Any) -> Any:
        payload, keys = pack(value)
        return self._run(self._set(payload, keys))

    async def _set(self, payload: bytes, keys: list[str]) -> None:
        _checked(await self._ask("set", payload=payload, keys=keys))

    def get(self, timeout: float | None = None) -> Any:
        """The value; waits until one is set (``TimeoutError`` past ``timeout``)."""
        return self._run(self._get(_timeout(timeout)))

    async def _get(self, timeout: float | None) -> Any:
        reply = _checked(await self._ask("get", timeout=timeout))
        if not reply.ok:
            raise TimeoutError(f"variable {self.name!r} was not set within {timeout} s")
        return cloudpickle.loads(reply.payload or b"")

    def delete(self) -> Any:
        return self._run(self._delete())

    async def _delete(self) -> None:
        _checked(await self._ask("delete"))


class Queue(_Primitive):
    """A first-in first-out queue held by the scheduler (dask.distributed's ``Queue``),
    shared by clients and tasks; ``maxsize`` > 0 makes ``put`` wait for room."""

    kind = "queue"

    def __init__(
        self, name: str | None = None, client: Client | None = None, maxsize: int = 0
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an int >= 0, got {maxsize!r}")
        self.maxsize = maxsize
        super().__init__(name, client)

    def _ask(self, op: str, **kwargs: Any) -> Coroutine[Any, Any, CoordinateReply]:
        kwargs.setdefault("number", self.maxsize)
        return super()._ask(op, **kwargs)

    def put(self, value: Any, timeout: float | None = None) -> Any:
        payload, keys = pack(value)
        return self._run(self._put(payload, keys, _timeout(timeout)))

    async def _put(self, payload: bytes, keys: list[str], timeout: float | None) -> None:
        if not _checked(await self._ask("put", payload=payload, keys=keys, timeout=timeout)).ok:
            raise TimeoutError(f"queue {self.name!r} had no room within {timeout} s")

    def get(self, timeout: float | None = None, batch: bool | int = False) -> Any:
        """The next value (``TimeoutError`` past ``timeout``). ``batch=True``: every value
        there now, as a list (maybe empty); ``batch=n``: n values, waiting for each."""
        wait = _timeout(timeout)
        if batch is True:
            return self._run(self._get_all())
        if batch is not False:
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
                raise ValueError(f"batch must be True, False or an int >= 0, got {batch!r}")
            return self._run(self._get_many(batch, wait))
        return self._run(self._get(wait))

    async def _get(self, timeout: float | None) -> Any:
        reply = _checked(await self._ask("get", timeout=timeout))
        if not reply.ok:
            raise TimeoutError(f"queue {self.name!r} was empty for {timeout} s")
        return cloudpickle.loads(reply.payload or b"")

    async def _get_all(self) -> list[Any]:
        out: list[Any] = []
        while True:
            reply = _checked(await self._ask("get", timeout=0.0))
            if not reply.ok:
                return out
            out.append(cloudpickle.loads(reply.payload or b""))

    async def _get_many(self, n: int, timeout: float | None) -> list[Any]:
        return [await self._get(timeout) for _ in range(n)]

    def qsize(self) -> Any:
        return self._run(self._size())

    async def _size(self) -> int:
        return int(_checked(await self._ask("qsize")).number)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_queue, (self.name, self.maxsize))


def _queue(name: str, maxsize: int) -> Queue:
    return Queue(name, maxsize=maxsize)


class Pub(_Primitive):
    """Publishes messages to every ``Sub`` of its name subscribed now (dask.distributed's
    ``Pub``), through the scheduler."""

    kind = "pubsub"

    def put(self, msg: Any) -> Any:
        payload, _ = pack(msg)
        return self._run(self._put(payload))

    async def _put(self, payload: bytes) -> None:
        _checked(await self._ask("put", payload=payload))


class Sub(_Primitive):
    """Receives what ``Pub`` objects of its name publish from the moment it is made
    (dask.distributed's ``Sub``); iterate over it, or ``get(timeout)``."""

    kind = "pubsub"

    def __init__(self, name: str, client: Client | None = None) -> None:
        super().__init__(_name(name, "topic"), client)
        self.ident = uuid.uuid4().hex
        self._run(self._op("subscribe"))

    async def _op(self, op: str) -> None:
        _checked(await self._ask(op, ident=self.ident))

    def get(self, timeout: float | None = None) -> Any:
        return self._run(self._get(_timeout(timeout)))

    async def _get(self, timeout: float | None) -> Any:
        reply = _checked(await self._ask("get", ident=self.ident, timeout=timeout))
        if not reply.ok:
            raise TimeoutError(f"no message on {self.name!r} within {timeout} s")
        return cloudpickle.loads(reply.payload or b"")

    def close(self) -> None:
        self._run(self._op("unsubscribe"))

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.get()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Sub, (self.name,))
