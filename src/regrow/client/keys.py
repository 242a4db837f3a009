"""The keys a client holds: how many Futures hold each, and the state they share.

Owns the reference counts, the ``FutureState`` of every held key, and the keys wanted
without a Future for a while (a dask graph's keys that a later message of the same
graph reads), all under one lock, as any thread may take or drop a hold.

It must not do IO nor know the scheduler: the client decides what to tell it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from regrow.client.futures import CANCELLED, FutureState


class KeyTable:
    """Reference counts and states of a client's keys; safe from any thread."""

    def __init__(self) -> None:
        # Re-entrant: a Future garbage-collected while this thread holds the lock releases
        # its key from inside the critical section (Future.__del__ -> release).
        self._lock = threading.RLock()
        self._refcount: dict[str, int] = {}
        self._states: dict[str, FutureState] = {}
        self._unheld: set[str] = set()

    def acquire(self, key: str) -> FutureState:
        """One more hold on ``key``: the state its Futures share (new if none held it)."""
        with self._lock:
            self._refcount[key] = self._refcount.get(key, 0) + 1
            st = self._states.get(key)
            if st is None:
                st = self._states[key] = FutureState()
            return st

    def release(self, key: str) -> bool:
        """One hold fewer on ``key``: whether it was the last (its state is gone then)."""
        with self._lock:
            n = self._refcount.get(key, 0) - 1
            if n > 0:
                self._refcount[key] = n
                return False
            self._refcount.pop(key, None)
            self._states.pop(key, None)
            return True

    def state(self, key: str) -> FutureState | None:
        """The state of a held key (None if no Future holds it). Lock-free: for the IO
        thread's hot path, where a racing release only means a report goes unread."""
        return self._states.get(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._states

    def keys(self) -> list[str]:
        """The keys Futures hold now."""
        with self._lock:
            return list(self._states)

    def states(self) -> list[FutureState]:
        """The states of all held keys, now."""
        with self._lock:
            return list(self._states.values())

    def held_keys(self) -> list[str]:
        """Keys of our futures, but for cancelled ones (the scheduler let those go), and
        keys we want without Futures for a while (``want_unheld``)."""
        with self._lock:
            held = [k for k, st in self._states.items() if st.status != CANCELLED]
            return held + [k for k in self._unheld if k not in self._states]

    def released(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """Split keys whose last hold went, once each: those still unheld, and those
        held again since (a Future made for them meanwhile)."""
        unique = list(dict.fromkeys(keys))
        with self._lock:
            again = [k for k in unique if k in self._refcount]
            gone = [k for k in unique if k not in self._refcount]
        return gone, again

    def want_unheld(self, keys: Iterable[str]) -> None:
        """Note ``keys`` as wanted without Futures for them (see ``held_keys``)."""
        with self._lock:
            self._unheld.update(keys)

    def drop_unheld(self, keys: Iterable[str]) -> None:
        with self._lock:
            self._unheld.difference_update(keys)
