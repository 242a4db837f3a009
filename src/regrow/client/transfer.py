"""Values between the user and the cluster: what ``gather`` and ``scatter`` decide.

Owns gathering (waiting on all the futures with one wake-up, taking small results
from the news that they finished instead of fetching them, noticing results lost
between that news and the fetch, giving the values back in the shape they came in)
and scattering (pickling the data in the caller's thread, naming it, making its
Futures, letting them go if the scatter fails; the session places the copies).

It must not keep state, nor fetch or send but through what it is given: the
``FutureOwner`` whose futures it gathers (``fetch_values``), the ``Session`` it
scatters through.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil

from regrow.client.futures import (
    CANCELLED,
    ERROR,
    FINISHED,
    Future,
    FutureOwner,
    _left,
    settle_all,
    settle_all_async,
)
from regrow.client.keys import KeyTable
from regrow.client.session import Session
from regrow.protocol.framing import Buffer
from regrow.protocol.serialize import digest, dumps, loads, sizeof

# A value to scatter, pickled: (key, frames, size in bytes, type name).
Item = tuple[str, list[Buffer], int, str]


# ---------------------------------------------------------------------- gather
# Waiting and fetching are written twice, the one place they are: a synchronous
# client waits on all its futures with one thread wake-up and fetches nothing for
# small results (7,000 tasks/s submit+gather); an asynchronous client awaits the same
# (see futures.settle_all_async). What they decide from what they got is shared.
def gather(owner: FutureOwner, futures: Any, errors: str, timeout: float | None) -> Any:
    """``Client.gather`` on a synchronous client: blocks."""
    flat: list[Future] = []
    _collect(futures, flat)
    deadline = None if timeout is None else time.monotonic() + timeout
    values: dict[str, Any] = {}
    todo = list({f.key: f for f in flat}.values())
    while todo:
        settled = settle_all(
            [f._state for f in todo], _left(deadline), stop_on_error=errors == "raise"
        )
        ready = _settled(todo, settled, errors, timeout)
        if ready:
            values.update(owner.fetch_values(ready, timeout=_left(deadline)))
        todo = _still_todo(todo, values)
    return _gathered(futures, flat, values)


async def gather_async(owner: FutureOwner, futures: Any, errors: str, timeout: float | None) -> Any:
    """``Client.gather`` on an asynchronous client: awaited."""
    flat: list[Future] = []
    _collect(futures, flat)
    deadline = None if timeout is None else time.monotonic() + timeout
    values: dict[str, Any] = {}
    todo = list({f.key: f for f in flat}.values())
    while todo:
        settled = await settle_all_async(
            [f._state for f in todo], _left(deadline), stop_on_error=errors == "raise"
        )
        ready = _settled(todo, settled, errors, timeout)
        if ready:
            values.update(await owner.fetch_values_async(ready, timeout=_left(deadline)))
        todo = _still_todo(todo, values)
    return _gathered(futures, flat, values)


def inline_values(futures: list[Future]) -> tuple[dict[str, Any], list[str]]:
    """The values of futures whose (small) result came with the news that they finished,
    and the keys of the others, to fetch from the workers."""
    keys = list(dict.fromkeys(f.key for f in futures))
    values: dict[str, Any] = {}
    for f in futures:
        blob = f._state.inline
        if blob is not None and f.key not in values:
            # Each call unpickles anew: like a fetch, it hands out a fresh object.
            values[f.key] = loads([blob])
    keys = [k for k in keys if k not in values]
    _check_fits(futures, keys)
    return values, keys


def _check_fits(futures: list[Future], keys: list[str]) -> None:
    """MemoryError, before anything is fetched, when the results to fetch are larger
    (by their workers' measure) than the memory this machine has available: the gather
    fails here, in the client, not by swamping it, and the results stay where they are."""
    wanted = set(keys)
    sizes = {f.key: f._state.nbytes for f in futures if f.key in wanted}
    total = sum(sizes.values())
    if total < 2**30:
        return  # not worth a look at the machine's memory
    available = psutil.virtual_memory().available
    if total > available:
        raise MemoryError(
            f"gather: the {len(sizes)} results to fetch take {total / 2**30:.1f} GiB, more "
            f"than the {available / 2**30:.1f} GiB this client's machine has available; "
            "gather fewer at a time, or reduce them on the cluster first"
        )


def lost_keys(keys: list[str], values: dict[str, Any], table: KeyTable) -> list[str]:
    """The fetched ``keys`` that did not come (held nowhere although reported finished:
    lost), their futures pending again: the keys to ask the scheduler about."""
    missing = [k for k in keys if k not in values]
    for key in missing:
        st = table.state(key)
        if st is not None and st.status == FINISHED:
            st.reset()
    return missing


def _settled(todo: list[Future], settled: bool, errors: str, timeout: float | None) -> list[Future]:
    """After gather waited on ``todo``: raise for a failed future (``errors="raise"``) or
    the timeout; else the finished futures, to fetch."""
    for f in todo:
        if f.status in (ERROR, CANCELLED) and errors == "raise":
            f._raise_if_failed()
    if not settled:
        late = next(f.key for f in todo if not f.done())
        raise TimeoutError(f"gather: {late!r} not done within {timeout} s")
    return [f for f in todo if f.status == FINISHED]


def _still_todo(todo: list[Future], values: dict[str, Any]) -> list[Future]:
    """What gather waits for again: finished but not fetched (lost meanwhile), or not
    settled (lost and being computed again)."""
    return [f for f in todo if f.status == FINISHED and f.key not in values] + [
        f for f in todo if f.status not in (FINISHED, ERROR, CANCELLED)
    ]


def _gathered(futures: Any, flat: list[Future], values: dict[str, Any]) -> Any:
    skip = {f.key for f in flat if f.status in (ERROR, CANCELLED)}
    return _substitute(futures, values, skip)


def _collect(obj: Any, out: list[Future]) -> None:
    if isinstance(obj, Future):
        out.append(obj)
    elif isinstance(obj, list | tuple | set | frozenset):
        for x in obj:
            _collect(x, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect(v, out)


_SKIP = object()


def _substitute(obj: Any, values: dict[str, Any], skip: set[str]) -> Any:
    if isinstance(obj, Future):
        return _SKIP if obj.key in skip else values[obj.key]
    if isinstance(obj, list | tuple | set | frozenset):
        items = [_substitute(x, values, skip) for x in obj]
        items = [x for x in items if x is not _SKIP]
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            value = _substitute(v, values, skip)
            if value is not _SKIP:
                out[k] = value
        return type(obj)(out) if type(obj) is not dict else out
    return obj


# --------------------------------------------------------------------- scatter
def scatter_items(data: Any, hash: bool) -> tuple[list[Any] | None, list[Item]]:
    """The values in ``data`` (a dict's keys name them), pickled here, in the caller's
    thread (not in the IO thread): the names, if any, and the items to send."""
    if isinstance(data, dict):
        names = list(data.keys())
        values = list(data.values())
    elif isinstance(data, list | tuple | set | frozenset):
        names = None
        values = list(data)
    else:
        names = None
        values = [data]
    items: list[Item] = []
    for i, value in enumerate(values):
        frames = dumps(value)
        tname = type(value).__name__
        if names is not None:
            key = str(names[i])
        elif hash:
            key = f"{tname}-{digest(frames)}"
        else:
            key = f"{tname}-{uuid.uuid4().hex}"
        items.append((key, frames, sizeof(value), tname))
    return names, items


async def scatter(
    session: Session,
    new_future: Callable[[str], Future],
    data: Any,
    names: list[Any] | None,
    items: list[Item],
    wanted: list[str] | None,
    broadcast: bool,
    replicas: int,
    timeout: float | None,
) -> Any:
    """Put the items on workers (``wanted``, by address or name, or the least loaded)
    and register them with the scheduler: Futures shaped like ``data``."""
    # Made first: the scheduler's news of the keys must find them.
    futures = [new_future(key) for key, _, _, _ in items]
    try:
        await session.scatter(items, wanted, broadcast, replicas, timeout)
    except BaseException:
        # Not handed out: let the keys go (the scheduler frees whatever was placed).
        for f in futures:
            f.release()
        raise
    # Shaped like the data: a dict of futures, a list, or one.
    if isinstance(data, dict):
        return dict(zip(names or [], futures, strict=True))
    if isinstance(data, list | tuple | set | frozenset):
        return futures
    return futures[0]
