"""The worker's data store: results in memory, least recently used ones spilled to disk.

Owns the bytes of results on one worker. A ``SpillBuffer`` is a mapping: the
worker (and task threads resolving their inputs) read and write it like a dict;
when the results held in memory pass ``target`` bytes, the least recently used
ones are pickled to files in ``directory`` and read back on access.
It does not decide when to pause or kill a worker; it only reports its sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import shutil
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any

from regrow.protocol import shm
from regrow.protocol.framing import Buffer, encode_packet
from regrow.protocol.serialize import dumps, loads, sizeof


class SpillBuffer(MutableMapping[str, Any]):
    def __init__(self, target: int = 0, directory: str | None = None) -> None:
        # target 0 means never spill.
        self.target = target
        self._dir_owned = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="regrow-spill-")
        os.makedirs(self.directory, exist_ok=True)
        self.fast: OrderedDict[str, Any] = OrderedDict()
        self.fast_sizes: dict[str, int] = {}
        self.slow_sizes: dict[str, int] = {}
        self.fast_bytes = 0
        self.spilled_total = 0
        self.unspilled_total = 0
        self._lock = threading.RLock()
        self._files = 0
        # Results in memory whose large buffers also sit in a sealed memfd (shm.seal):
        # peers on this host map them from there. Closed when the result leaves memory.
        self.sealed: dict[str, shm.Sealed] = {}

    # -- mapping ---------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        with self._lock:
            if key in self.fast:
                self.fast.move_to_end(key)
                return self.fast[key]
            if key not in self.slow_sizes:
                raise KeyError(key)
            value = self._read(key)
            size = self.slow_sizes.pop(key)
            self._remove_file(key)
            self.unspilled_total += 1
            self._put_fast(key, value, size)
            self._evict(keep=key)
            return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value, sizeof(value))

    def set(self, key: str, value: Any, size: int, sealed: shm.Sealed | None = None) -> None:
        with self._lock:
            self._discard(key)
            self._put_fast(key, value, size)
            if sealed is not None:
                self.sealed[key] = sealed
            self._evict(keep=key)

    def sealed_of(self, key: str) -> shm.Sealed | None:
        return self.sealed.get(key)

    def frames_to_send(self, key: str) -> tuple[list[Buffer], int]:
        """The frames of ``key``'s value, to send it, without reading a spilled value
        back into memory; and how many bytes of them are new memory.

        A value in memory is pickled: its large buffers are its own, and only the pickle
        stream is new (all of it for a value pickled in-band, such as a str). A spilled
        value's frames are views of its file, mapped (``_mapped``): pages of the page
        cache, read as the frames are sent, counted as new memory here since the mapping
        holds them while it lives. KeyError if it is not held.
        """
        with self._lock:
            if key in self.fast:
                value = self.fast[key]
            elif key in self.slow_sizes:
                return self._mapped(key)
            else:
                raise KeyError(key)
        frames = dumps(value)  # not under the lock: task threads read the store meanwhile
        return frames, memoryview(frames[0]).nbytes

    def __delitem__(self, key: str) -> None:
        with self._lock:
            if key not in self.fast and key not in self.slow_sizes:
                raise KeyError(key)
            self._discard(key)

    def __contains__(self, key: object) -> bool:
        return key in self.fast or key in self.slow_sizes

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter([*self.fast, *self.slow_sizes])

    def __len__(self) -> int:
        return len(self.fast) + len(self.slow_sizes)

    # -- sizes -------------------------------------------------------------------
    def size_of(self, key: str) -> int:
        return self.fast_sizes.get(key, self.slow_sizes.get(key, 0))

    @property
    def slow_bytes(self) -> int:
        return sum(self.slow_sizes.values())

    def spill(self, nbytes: int) -> int:
        """Spill least recently used results until ``nbytes`` are freed (or none is left)."""
        freed = 0
        with self._lock:
            while self.fast and freed < nbytes:
                freed += self._spill_one()
        return freed

    def close(self) -> None:
        with self._lock:
            for key in list(self.sealed):
                self._unseal(key)
            self.fast.clear()
            self.fast_sizes.clear()
            self.slow_sizes.clear()
            self.fast_bytes = 0
        if self._dir_owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- internals ---------------------------------------------------------------
    def _put_fast(self, key: str, value: Any, size: int) -> None:
        self.fast[key] = value
        self.fast_sizes[key] = size
        self.fast_bytes += size

    def _unseal(self, key: str) -> None:
        record = self.sealed.pop(key, None)
        if record is not None:
            record.close()

    def _discard(self, key: str) -> None:
        self._unseal(key)
        if key in self.fast:
            del self.fast[key]
            self.fast_bytes -= self.fast_sizes.pop(key)
        elif key in self.slow_sizes:
            del self.slow_sizes[key]
            self._remove_file(key)

    def _evict(self, keep: str) -> None:
        if not self.target:
            return
        while self.fast_bytes > self.target and len(self.fast) > 1:
            oldest = next(iter(self.fast))
            if oldest == keep:
                self.fast.move_to_end(keep)
                oldest = next(iter(self.fast))
            self._spill_one(oldest)

    def _spill_one(self, key: str | None = None) -> int:
        if key is None:
            key = next(iter(self.fast))
        value = self.fast.pop(key)
        size = self.fast_sizes.pop(key)
        self.fast_bytes -= size
        try:
            self._write(key, value)
        except Exception:
            # Unpicklable values stay in memory; spilling is an optimisation.
            self.fast[key] = value
            self.fast.move_to_end(key, last=False)
            self.fast_sizes[key] = size
            self.fast_bytes += size
            return 0
        self.slow_sizes[key] = size
        self.spilled_total += 1
        self._unseal(key)  # its memory is what spilling is meant to free
        return size

    def _path(self, key: str) -> str:
        # Keys are arbitrary strings: name files by a hash, never by the key itself.
        return os.path.join(self.directory, hashlib.sha1(key.encode()).hexdigest())

    def _write(self, key: str, value: Any) -> None:
        # The same layout as a packet on the wire: a length prefix, then the frames as they are.
        # Always a new file: an old one of the key may still be mapped to be sent
        # (frames_to_send), and truncating it would pull the pages from under the sender.
        self._remove_file(key)
        with open(self._path(key), "xb") as f:
            for buf in encode_packet(dumps(value)):
                f.write(buf)

    def _read(self, key: str) -> Any:
        # Unpickled straight from the file's pages: a value pickled in-band (bytes, str)
        # costs its own size only, not a copy of its file besides.
        frames, _ = self._mapped(key)
        return loads(frames)

    def _mapped(self, key: str) -> tuple[list[Buffer], int]:
        """The frames of ``key``'s spill file as views of a private mapping of it (never
        written; private and writable so a lender can lend them, see protocol.lend), and
        the file's size. The mapping lives as long as the views: removing or rewriting
        the file meanwhile (``_write`` makes a new one) does not touch it."""
        with open(self._path(key), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 4:
                raise OSError(f"spill file for {key!r} is truncated")
            mm = mmap.mmap(
                f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            with contextlib.suppress(OSError):
                mm.madvise(mmap.MADV_SEQUENTIAL)
        view = memoryview(mm)
        try:
            (n,) = struct.unpack_from("!I", view, 0)
            lengths = struct.unpack_from(f"!{n}Q", view, 4)
        except struct.error:
            raise OSError(f"spill file for {key!r} is truncated") from None
        pos = 4 + 8 * n
        if pos + sum(lengths) > size:
            raise OSError(f"spill file for {key!r} is truncated")
        out: list[Buffer] = []
        for length in lengths:
            out.append(view[pos : pos + length])
            pos += length
        return out, size

    def _remove_file(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))
