"""Large frames between hosts over several TCP connections at once.

One TCP connection moves a large frame only as fast as one pass through the kernel's
network stack goes, and most of that time each end waits for the other (a send
buffer to drain, a receive queue to fill). Several connections keep both ends busy
and spread the stack's work over the CPUs. Over a veth pair on a 2-core VM, 100 MB
took ~1.2 GB/s on one plain socket, ~1.7 on two and ~2.1 on four (one thread per
end, as in a worker); Ray's object manager splits large objects into chunks sent
concurrently for the same reason.

How a value travels striped (peers on different hosts, the requester asking for
``streams`` > 1):

1. the requester's ``get-data`` says how many streams it will use; the holder answers
   as usual, except that each frame of at least ``stripe_bytes`` is left out (an empty
   frame), described in ``striped`` (an id, and the frame's index and size) and kept
   by the holder (``Holdings``) until the requester is done;
2. the requester allocates each such frame's buffer whole, lays the frames end to end
   and cuts them into one range per stream, split where a frame ends (``plan``), and
   asks for the parts (``get-part``) on connections leased for its sole use
   (``ConnectionPool.lease``), each part received straight into its place in its
   frame's buffer (``Connection.expect``): nothing is copied after the kernel;
3. it says ``parts-done`` on the first connection, whatever happened.

A failed part raises PartsFailed: the worker then fetches the value whole over the
first connection if the holder is still there and answering, else treats it like any
lost connection (it asks another holder, or the scheduler). The holder forgets what it
kept when told so, when that first connection closes, or after ``KEEP_SECONDS``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

from regrow.errors import CommClosedError, ProtocolError, reason
from regrow.protocol.comm import Connection, ConnectionPool, RemoteCallError
from regrow.protocol.framing import LARGE, Buffer, uninitialized
from regrow.protocol.messages import GetPartMsg, StripedFrames

# A part smaller than this costs more in its request than a stream gains.
MIN_PART = 2 * LARGE
# A holder keeps a striped value's frames at most this long for its requester.
KEEP_SECONDS = 60.0


class PartsFailed(CommClosedError):
    """Some part of a striped value did not come (its connection failed, timed out, or
    the holder no longer keeps the value): the fetch failed, its first connection may
    still be fine."""


def split(frames: Sequence[Buffer], min_bytes: int) -> tuple[list[Buffer], dict[int, memoryview]]:
    """``frames`` with each frame of at least ``min_bytes`` left empty, and those
    frames by index."""
    out = list(frames)
    kept: dict[int, memoryview] = {}
    for i, frame in enumerate(frames):
        view = memoryview(frame)
        if view.nbytes >= max(min_bytes, MIN_PART) and view.contiguous:
            kept[i] = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            out[i] = b""
    return out, kept


class Holdings:
    """The holder's side: frames kept for requesters, by transfer id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._kept: dict[int, tuple[Connection, dict[int, memoryview]]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, comm: Connection, frames: dict[int, memoryview]) -> int:
        tid = next(self._ids)
        self._kept[tid] = (comm, frames)
        asyncio.get_running_loop().call_later(KEEP_SECONDS, self._kept.pop, tid, None)
        return tid

    def part(self, msg: GetPartMsg) -> memoryview:
        """The range a ``get-part`` asks for; KeyError if that transfer is over."""
        tid, index, lo, hi = msg.id, msg.frame, msg.lo, msg.hi
        held = self._kept.get(tid)
        if held is None:
            raise KeyError(f"striped transfer {tid} is over (done, expired or its requester gone)")
        frame = held[1].get(index)
        if frame is None:
            raise ProtocolError(f"get-part: transfer {tid} has no frame {index}")
        if not 0 <= lo < hi <= frame.nbytes:
            raise ProtocolError(f"get-part: range [{lo}, {hi}) outside a frame of {frame.nbytes}")
        return frame[lo:hi]

    def done(self, tid: int) -> None:
        self._kept.pop(tid, None)

    def forget(self, comm: Connection) -> None:
        """Its requester's connection closed: it is reading nothing more."""
        for tid in [t for t, (c, _) in self._kept.items() if c is comm]:
            del self._kept[tid]


def describe(tid: int, frames: dict[int, memoryview]) -> StripedFrames:
    return StripedFrames(id=tid, frames=[(i, f.nbytes) for i, f in sorted(frames.items())])


def ranges(n: int, streams: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into at most ``streams`` ranges of at least MIN_PART bytes."""
    count = max(1, min(streams, n // MIN_PART))
    cuts = [n * i // count for i in range(count + 1)]
    return list(itertools.pairwise(cuts))


def plan(sizes: dict[int, int], streams: int) -> list[list[tuple[int, int, int]]]:
    """The parts each stream asks for, as (frame, lo, hi): the frames' bytes taken end to
    end, in frame order, cut into ``ranges`` (one per stream), each cut into the frames it
    covers. Ten frames of 10 MB over 4 streams are 13 parts of about 25 MB a stream, not
    40 of 2.5 MB (each part is a request and a reply on its connection)."""
    order = sorted(sizes.items())
    total = sum(n for _, n in order)
    work: list[list[tuple[int, int, int]]] = []
    frame, start = 0, 0  # the frame the next range begins in, and where it begins
    for lo, hi in ranges(total, streams):
        parts: list[tuple[int, int, int]] = []
        while lo < hi:
            index, n = order[frame]
            take = min(n - (lo - start), hi - lo)
            parts.append((index, lo - start, lo - start + take))
            lo += take
            if lo - start == n:
                frame, start = frame + 1, start + n
        work.append(parts)
    return [w for w in work if w]


async def receive(
    pool: ConnectionPool,
    address: str,
    striped: StripedFrames,
    frames: list[Buffer],
    streams: int,
    idle_timeout: float,
) -> list[Buffer]:
    """Fetch the frames a ``get-data`` reply left out (its ``striped``) from ``address``:
    ``frames`` with them filled in. Raises PartsFailed if any part did not come,
    ProtocolError if ``striped`` names frames the reply does not have."""
    tid = striped.id
    sizes = dict(striped.frames)
    if any(not 0 <= i < len(frames) or memoryview(frames[i]).nbytes for i in sizes):
        raise ProtocolError("get-data reply: 'striped' names frames it does not have")
    limit = pool.settings.max_frame_bytes
    if any(n > limit for n in sizes.values()):
        raise ProtocolError(f"get-data reply: a striped frame exceeds the limit of {limit}")
    buffers = {i: uninitialized(n) for i, n in sizes.items()}
    work = plan(sizes, streams)
    try:
        comms = await pool.lease(address, len(work))
    except (OSError, CommClosedError, TimeoutError, ProtocolError) as exc:
        raise PartsFailed(f"no connections to {address} for parts: {reason(exc)}") from exc
    ok = False
    fetches = [
        asyncio.ensure_future(_fetch(c, tid, w, buffers, idle_timeout))
        for c, w in zip(comms, work, strict=True)
    ]
    try:
        await asyncio.gather(*fetches)
        ok = True
    # KeyError and ValueError: the holder's, raised here again (Connection.request).
    except (OSError, CommClosedError, TimeoutError, ProtocolError, RemoteCallError,
            KeyError, ValueError) as exc:  # fmt: skip
        raise PartsFailed(f"{address} did not send all parts: {exc!r}") from exc
    finally:
        for fetch in fetches:  # one failed: the others' parts are of no use now
            fetch.cancel()
        pool.release(address, comms, reusable=ok)
    out = list(frames)
    for i, buf in buffers.items():
        out[i] = buf
    return out


async def _fetch(
    comm: Connection,
    tid: int,
    parts: list[tuple[int, int, int]],
    buffers: dict[int, memoryview],
    idle_timeout: float,
) -> None:
    for index, lo, hi in parts:
        target = buffers[index][lo:hi]
        comm.expect(target)
        _, got = await comm.request(
            GetPartMsg(id=tid, frame=index, lo=lo, hi=hi), idle_timeout=idle_timeout
        )
        if len(got) != 1 or memoryview(got[0]).nbytes != hi - lo:
            raise ProtocolError(f"get-part: expected one frame of {hi - lo} bytes")
        if got[0] is not target:
            target[:] = memoryview(got[0]).cast("B")  # it came another way: place it
