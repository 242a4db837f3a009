"""Length-prefixed frames, sans-IO.

A packet on the wire is::

    u32 n_frames | u64 length * n_frames | frame bytes ...

Frame 0 is a msgpack header; the others are opaque payload buffers (pickle-5
out-of-band buffers, task payloads, results). Large frames are received straight
into a buffer of their own (``get_buffer``/``buffer_updated`` follow
``asyncio.BufferedProtocol``), so a 100 MB array is not copied again after the
kernel hands it over, and arrives writeable.

This module owns byte layout and size limits. It does no IO and knows nothing of
messages' meaning.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

from regrow.errors import ProtocolError

Buffer = bytes | bytearray | memoryview

_COUNT = struct.Struct("!I")
_STAGING = 256 * 1024
# Before authentication a peer gets only this much: 2,000 strangers cost 8 MB, not 512.
_SMALL_STAGING = 4096
# A blob this large skips the staging buffer and is read into its own bytearray.
_DIRECT = _STAGING // 2


def encode_packet(frames: Sequence[Buffer]) -> list[Buffer]:
    """Return the buffers to write, in order: the prefix, then the frames themselves."""
    n = len(frames)
    if n == 0:
        raise ValueError("a packet needs at least one frame")
    lengths = [memoryview(f).nbytes for f in frames]
    prefix = struct.pack(f"!I{n}Q", n, *lengths)
    return [prefix, *frames]


# A "large" frame, for every path that treats large frames apart: received into its own
# mapping (here), sent from its own memory (comm), lent or put in shared memory (lend,
# shm). Below it, copying is cheaper than any of those.
LARGE = 1 << 20


# From this size a frame's memory comes from its own private anonymous mapping, in huge
# pages where the kernel has them: pages it fills as recv_into writes them. bytearray(n)
# would first write n zero bytes, a whole extra pass over memory (50-75 ms for 100 MB
# on a 2-core VM); mmap's default (shared) mapping is tmpfs-backed, in 4 KiB pages:
# receiving 100 MB into it ran at 1.2-1.5 GB/s, into private huge pages at 3.2 GB/s.
def _mapping(n: int) -> mmap.mmap:
    mm = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            mm.madvise(mmap.MADV_HUGEPAGE)
    return mm


_ALIGN = 2 << 20  # pooled mappings come in whole huge pages


class ReceivePool:
    """Large receive buffers kept once their values are gone, to receive into again.

    A fresh mapping is paid for while it is written: the kernel faults in and zeroes
    every page as recv_into reaches it. Over a veth pair, 100 MB into fresh memory ran
    at ~1.5 GB/s, into memory written before at ~2.8 GB/s. So a process that receives
    large values (a worker) keeps up to ``limit`` bytes of such mappings. A mapping is
    free again when nothing refers to it but the pool: every view of it (the received
    frame, the arrays built on it) holds a reference to it through its buffer, so its
    reference count says so exactly. Off (limit 0) unless a process turns it on: a
    worker keeps its mappings until its memory runs high; a client gives them back
    once it has taken none for ``idle_release`` seconds (``release_if_idle``). Safe
    from any thread: a client's loop and an in-process cluster's may share it.
    """

    def __init__(self, limit: int = 0) -> None:
        self._lock = threading.Lock()
        self._maps: list[mmap.mmap] = []
        self.bytes = 0
        self.reused = 0
        # When a buffer was last taken (time.monotonic()), and how long (s) the pool
        # may then stand unused before its free mappings are given back (None: kept).
        self.last_take = 0.0
        self.idle_release: float | None = None
        # What an unviewed mapping counts when looked at as _free() looks (the exact
        # number depends on the interpreter), checked to grow with a view; else no pool.
        # The probe is held by a list alone, as the pool's mappings are.
        probe = [mmap.mmap(-1, mmap.PAGESIZE)]
        self._unviewed = _refcounts(probe)[0]
        view = memoryview(probe[0])[:1]
        self._works = _refcounts(probe)[0] == self._unviewed + 1
        view.release()
        probe[0].close()
        self.limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        self._limit = value if self._works else 0

    def _free(self) -> list[mmap.mmap]:
        counts = _refcounts(self._maps)
        return [mm for mm, c in zip(self._maps, counts, strict=True) if c <= self._unviewed]

    def take(self, n: int) -> memoryview:
        """A buffer of ``n`` bytes (contents not set): a free pooled mapping that fits,
        else a fresh one, kept in the pool while there is room."""
        with self._lock:
            self.last_take = time.monotonic()
            fits = [mm for mm in self._free() if n <= len(mm) <= 2 * n]
            if fits:
                self.reused += 1
                return memoryview(min(fits, key=len))[:n]
            size = -(-n // _ALIGN) * _ALIGN
            if self.limit and size <= self.limit:
                if self.bytes + size > self.limit:
                    self._trim(self.bytes + size - self.limit)
                if self.bytes + size <= self.limit:
                    mm = _mapping(size)
                    self._maps.append(mm)
                    self.bytes += size
                    return memoryview(mm)[:n]
        return memoryview(_mapping(n))

    def trim(self, nbytes: int | None = None) -> int:
        """Give back free mappings (all, or at least ``nbytes``): the bytes given back."""
        with self._lock:
            return self._trim(nbytes)

    def release_if_idle(self) -> int:
        """Give back every free mapping if none was taken for ``idle_release`` seconds:
        the bytes given back."""
        if self.idle_release is None or not self._maps:
            return 0
        if time.monotonic() - self.last_take < self.idle_release:
            return 0
        return self.trim()

    def _trim(self, nbytes: int | None) -> int:
        freed = 0
        for mm in self._free():
            if nbytes is not None and freed >= nbytes:
                break
            self._maps.remove(mm)
            self.bytes -= len(mm)
            freed += len(mm)
        return freed


def _refcounts(maps: list[mmap.mmap]) -> list[int]:
    return [sys.getrefcount(mm) for mm in maps]


# The process's pool; a worker sets its limit (Settings.receive_pool_bytes).
POOL = ReceivePool()


def uninitialized(n: int) -> memoryview:
    """A writable buffer of ``n`` bytes whose contents are not set (see LARGE)."""
    if n < LARGE:
        return memoryview(bytearray(n))
    return POOL.take(n)


class FrameDecoder:
    """Turns a byte stream into packets (lists of frames), enforcing limits.

    Feed it either through ``get_buffer``/``buffer_updated`` (zero-copy for large
    frames) or ``feed(data)``. Complete packets accumulate in ``packets``.
    A violation raises ProtocolError; the caller must then drop the connection.
    """

    def __init__(
        self, *, max_frames: int, max_frame_bytes: int, max_header_bytes: int | None = None
    ) -> None:
        self.packets: deque[list[Buffer]] = deque()
        # Small until the limits grow (authentication); then an anonymous mapping, which
        # goes back to the system the moment the connection is gone: malloc keeps freed
        # 256 KiB blocks in its heap once it has seen a few (its dynamic mmap threshold).
        self._buf: bytearray | mmap.mmap = bytearray(_SMALL_STAGING)
        self._start = 0
        self._end = 0
        self.set_limits(
            max_frames=max_frames,
            max_frame_bytes=max_frame_bytes,
            max_header_bytes=max_header_bytes,
        )
        self._direct: memoryview | None = None
        self._direct_fill = 0
        self._stage = 0  # 0: frame count, 1: lengths, 2: frames
        self._need = _COUNT.size
        self._lengths: tuple[int, ...] = ()
        self._frames: list[Buffer] = []
        self._target: memoryview | None = None

    def set_limits(
        self, *, max_frames: int, max_frame_bytes: int, max_header_bytes: int | None = None
    ) -> None:
        self.max_frames = max_frames
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_frame_bytes if max_header_bytes is None else max_header_bytes
        if max_frame_bytes > _SMALL_STAGING or self.max_header_bytes > _SMALL_STAGING:
            self._grow()

    def _grow(self) -> None:
        """The full staging buffer: frames below _DIRECT are parsed out of it."""
        if len(self._buf) >= _STAGING:
            return
        staging = mmap.mmap(-1, _STAGING)
        avail = self._end - self._start
        staging[:avail] = self._buf[self._start : self._end]
        self._buf, self._start, self._end = staging, 0, avail

    @property
    def idle(self) -> bool:
        """True between packets: no partial packet is buffered."""
        return self._stage == 0 and self._start == self._end and self._direct is None

    @property
    def direct_remaining(self) -> int:
        """Bytes still to come of the large frame being received straight into its buffer."""
        return 0 if self._direct is None else len(self._direct) - self._direct_fill

    def expect(self, target: memoryview | None) -> None:
        """Receive the next large frame of exactly ``target.nbytes`` bytes into ``target``
        (the frame delivered is ``target`` itself); a frame of another size is received
        as usual. For a connection that one caller uses for one request at a time."""
        self._target = target

    def _frame_buffer(self, n: int) -> memoryview:
        target = self._target
        if target is not None and target.nbytes == n:
            self._target = None
            return target
        return uninitialized(n)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self._direct is not None:
            return memoryview(self._direct)[self._direct_fill :]
        if self._end == len(self._buf):
            self._compact()
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None:
            self._direct_fill += nbytes
            if self._direct_fill < len(self._direct):
                return
            blob = self._direct
            self._direct = None
            self._blob_done(blob)
        else:
            self._end += nbytes
        self._parse()

    def feed(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            target = self.get_buffer()
            n = min(target.nbytes, view.nbytes)
            target[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def _compact(self) -> None:
        avail = self._end - self._start
        if self._start:
            self._buf[:avail] = self._buf[self._start : self._end]
        self._start, self._end = 0, avail

    def _parse(self) -> None:
        while self._direct is None:
            need = self._need
            avail = self._end - self._start
            if need >= _DIRECT:
                take = min(avail, need)
                blob = self._frame_buffer(need)
                blob[:take] = self._buf[self._start : self._start + take]
                self._start += take
                if self._start == self._end:
                    self._start = self._end = 0
                if take == need:
                    self._blob_done(blob)
                    continue
                self._direct = blob
                self._direct_fill = take
                return
            if avail < need:
                if self._start + need > len(self._buf):
                    self._compact()
                return
            blob_b = bytes(self._buf[self._start : self._start + need])
            self._start += need
            if self._start == self._end:
                self._start = self._end = 0
            self._blob_done(blob_b)

    def _blob_done(self, blob: Buffer) -> None:
        if self._stage == 0:
            (n,) = _COUNT.unpack(blob)
            if n == 0 or n > self.max_frames:
                raise ProtocolError(f"packet announces {n} frames (limit {self.max_frames})")
            self._stage = 1
            self._need = 8 * n
        elif self._stage == 1:
            n = len(blob) // 8
            lengths = struct.unpack(f"!{n}Q", blob)
            if lengths[0] > self.max_header_bytes:
                raise ProtocolError(
                    f"message header of {lengths[0]} bytes exceeds the limit of "
                    f"{self.max_header_bytes}"
                )
            # Frames are received one at a time, each into memory of its own size: a
            # limit per frame bounds what an announcement can make us reserve.
            for length in lengths:
                if length > self.max_frame_bytes:
                    raise ProtocolError(
                        f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}"
                    )
            self._lengths = lengths
            self._frames = []
            self._stage = 2
            self._need = lengths[0]
        else:
            self._frames.append(blob)
            if len(self._frames) == len(self._lengths):
                self.packets.append(self._frames)
                self._frames = []
                self._stage = 0
                self._need = _COUNT.size
            else:
                self._need = self._lengths[len(self._frames)]
