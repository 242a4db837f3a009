"""Large buffers between processes of one host, through shared memory.

TCP on loopback copies every byte through the kernel twice and is capped near
the speed of one socket; a file in ``/dev/shm`` costs one memcpy on the sending
side and none on the receiving side, which maps the pages. The receiving side
unlinks the file as soon as it has mapped it (the mapping stays valid), so the
bytes live exactly as long as the objects built on them.

``export`` moves the large frames of a reply into one such file and leaves a
small description in their place; ``adopt`` does the reverse. Both are used only
between peers that said they share a host (same host name and boot id).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from regrow.errors import ProtocolError
from regrow.protocol import lend
from regrow.protocol.framing import LARGE, Buffer
from regrow.protocol.messages import (
    GetDataMsg,
    GetDataReply,
    LentDoneMsg,
    PartsDoneMsg,
    SealedFile,
    ShmFile,
    StripedFrames,
)

if TYPE_CHECKING:
    from regrow.protocol.comm import Connection

SHM_DIR = "/dev/shm"
# Frames smaller than this travel inline: mapping a file costs more than copying them.
MIN_BYTES = LARGE


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def host_identity() -> str:
    """Equal for two processes that can share /dev/shm files (same host, same boot)."""
    if not os.path.isdir(SHM_DIR) or not os.access(SHM_DIR, os.W_OK):
        return ""
    return f"{socket.gethostname()}/{_boot_id()}"


HOST = host_identity()


def export(groups: Sequence[Sequence[Buffer]]) -> tuple[list[list[Buffer]], ShmFile | None]:
    """Move the large frames of ``groups`` (one list of frames per value) into one file.

    Returns the groups with each moved frame replaced by an empty bytes, and the
    description the receiver needs (None when nothing was large enough).
    """
    layout: list[tuple[int, int, int, int]] = []
    total = 0
    for g, frames in enumerate(groups):
        for f, frame in enumerate(frames):
            n = memoryview(frame).nbytes
            if n >= MIN_BYTES:
                layout.append((g, f, total, n))
                total += n
    if not layout:
        return [list(fr) for fr in groups], None
    try:
        st = os.statvfs(SHM_DIR)
        if st.f_bavail * st.f_frsize < 2 * total:
            return [list(fr) for fr in groups], None  # /dev/shm too small: go by socket
        path = os.path.join(SHM_DIR, f"regrow-{uuid.uuid4().hex}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return [list(fr) for fr in groups], None
    try:
        # write(), not a mapping: a full tmpfs then fails with ENOSPC instead of SIGBUS.
        for g, f, _, n in layout:
            view = memoryview(groups[g][f]).cast("B")
            done = 0
            while done < n:
                done += os.write(fd, view[done:])
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return [list(fr) for fr in groups], None
    finally:
        os.close(fd)
    out = [list(fr) for fr in groups]
    for g, f, _, _ in layout:
        out[g][f] = b""
    return out, ShmFile(path=path, size=total, layout=layout)


def _check_layout(
    groups: Sequence[Sequence[Buffer]], places: Sequence[tuple[int, int]], what: str
) -> None:
    """ProtocolError unless each (value, frame) of ``places`` is one of ``groups``'."""
    for g, f in places:
        if g >= len(groups) or f >= len(groups[g]):
            raise ProtocolError(f"get-data reply: {what} names frame {f} of value {g}")


def _check_ranges(ranges: Sequence[tuple[int, int]], size: int, what: str) -> None:
    """ProtocolError unless each (offset, length) of ``ranges`` lies within ``size``."""
    for offset, n in ranges:
        if offset + n > size:
            raise ProtocolError(f"get-data reply: {what} reaches past its {size} bytes")


def adopt(groups: list[list[Buffer]], info: ShmFile) -> list[list[Buffer]]:
    """Put the frames described by ``info`` back into ``groups``, mapped, not copied."""
    path = info.path
    if not path.startswith(SHM_DIR + "/regrow-") or "/" in path[len(SHM_DIR) + 1 :]:
        raise ValueError(f"refusing shared-memory path {path!r}")
    _check_layout(groups, [(g, f) for g, f, _, _ in info.layout], "'shm'")
    _check_ranges([(o, n) for _, _, o, n in info.layout], info.size, "'shm'")
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, info.size)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # the mapping outlives the name
    view = memoryview(mm)
    for g, f, offset, n in info.layout:
        groups[g][f] = view[offset : offset + n]
    return groups


# ------------------------------------------------------------------ sealed values
# A large result is copied once, when its task finishes, into an anonymous shared-memory
# file (memfd): the worker keeps the file open and its own copy of the value becomes a
# private (copy-on-write) mapping of it, so this costs no memory. A peer on the same host
# then gets the value with no copy at all: it opens the file through /proc/PID/fd/N and
# maps it privately too. Writes on either side stay on that side. The file has no name,
# so nothing is left behind when processes die; it is freed with its last mapping.
MEMFD = HOST != "" and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


_sealed_lock = threading.Lock()  # seal() runs in task threads, close() on the event loop
_sealed_open = 0
_sealed_max = -1  # found on first use (see _may_seal)


def _may_seal() -> bool:
    """Is a file descriptor to spare? Each sealed value keeps one open; sockets must not
    run short because of them, so at most half of the process's limit goes to them."""
    global _sealed_max
    if _sealed_max < 0:
        try:
            import resource

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard == resource.RLIM_INFINITY or hard > soft:
                want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
                if want > soft:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                    soft = want
            _sealed_max = max(0, soft // 2)
        except (ImportError, OSError, ValueError):
            _sealed_max = 256
    return _sealed_open < _sealed_max


class Gone(Exception):
    """A sealed value's file was closed by its holder before we could open it."""


class Sealed:
    """A value's pickle frames; the large ones live in a memfd this process keeps open."""

    __slots__ = ("fd", "frames", "ino", "layout", "size")

    def __init__(
        self,
        fd: int,
        ino: int,
        size: int,
        frames: list[Buffer],
        layout: list[tuple[int, int, int]],
    ) -> None:
        self.fd = fd
        self.ino = ino
        self.size = size
        self.frames = frames  # the large frames are b"" here; ``layout`` places them
        self.layout = layout  # [frame index, offset in the file, length]

    def describe(self) -> SealedFile:
        return SealedFile(
            pid=os.getpid(), fd=self.fd, ino=self.ino, size=self.size, layout=self.layout
        )

    def close(self) -> None:
        global _sealed_open
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with _sealed_lock:
                _sealed_open -= 1
            with contextlib.suppress(OSError):
                os.close(fd)


# madvise(MADV_POPULATE_READ), Linux 5.14: map every page now, for reading. Not
# MAP_POPULATE: on a private writable mapping that faults each page for writing, a
# private copy of the whole file (a 200 MiB value then held 400 MiB: 200 of shared
# memory and 200 of copies, RssAnon).
_POPULATE_READ = 22


def _private_map(fd: int, size: int, populate: bool = False) -> mmap.mmap:
    mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    if populate:
        with contextlib.suppress(OSError):  # an older kernel: pages come as they are read
            mm.madvise(_POPULATE_READ)
    return mm


def seal(frames: Sequence[Buffer]) -> tuple[Sealed, list[Buffer]] | None:
    """Copy the large out-of-band frames of a pickle into a new memfd.

    Returns the record and the frames with each large one replaced by a private mapping
    of the file (build the value from those), or None when nothing is large enough or
    the file cannot be made (out of memory or file descriptors: the value stays as is).
    """
    layout: list[tuple[int, int, int]] = []
    total = 0
    for i, frame in enumerate(frames):
        n = memoryview(frame).nbytes
        if i > 0 and n >= MIN_BYTES:  # frame 0 is the pickle stream itself
            layout.append((i, total, n))
            total += n
    if not layout or not MEMFD or not _may_seal():
        return None
    try:
        fd = os.memfd_create("regrow-result", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        for i, _, n in layout:
            view = memoryview(frames[i]).cast("B")
            done = 0
            while done < n:
                done += os.write(fd, view[done:])
        ino = os.fstat(fd).st_ino
        # Populated now, in the task's thread: sending the value by socket (to another
        # host) must not fault its pages in one by one on the event loop.
        mm = _private_map(fd, total, populate=True)
    except OSError:
        os.close(fd)
        return None
    global _sealed_open
    with _sealed_lock:
        _sealed_open += 1
    view = memoryview(mm)
    mine: list[Buffer] = list(frames)
    kept: list[Buffer] = list(frames)
    for i, offset, n in layout:
        mine[i] = view[offset : offset + n]
        kept[i] = b""
    return Sealed(fd, ino, total, kept, layout), mine


def attach(info: SealedFile, frames: list[Buffer]) -> list[Buffer]:
    """Put a sealed value's large frames, privately mapped, back into ``frames``."""
    _check_layout([frames], [(0, i) for i, _, _ in info.layout], "'sealed'")
    _check_ranges([(o, n) for _, o, n in info.layout], info.size, "'sealed'")
    try:
        fd = os.open(f"/proc/{info.pid}/fd/{info.fd}", os.O_RDONLY)
    except OSError as exc:
        raise Gone(str(exc)) from None
    try:
        if os.fstat(fd).st_ino != info.ino:
            raise Gone("the file descriptor now names another file")
        mm = _private_map(fd, info.size)
    finally:
        os.close(fd)
    view = memoryview(mm)
    out = list(frames)
    for i, offset, n in info.layout:
        out[i] = view[offset : offset + n]
    return out


def discard(info: ShmFile | None) -> None:
    """Remove a file the receiver never adopted (it died, or the request failed)."""
    if info is not None:
        with contextlib.suppress(OSError):
            os.unlink(info.path)


def values_of_reply(
    reply: GetDataReply, frames: Sequence[Buffer], gone: list[str]
) -> list[tuple[str, list[Buffer]]]:
    """A ``get-data`` reply as (key, frames of its value) pairs, shared memory adopted.

    Keys whose sealed file was closed before we opened it, or whose lent buffers we
    could not read, go to ``gone``: ask for them again without shared memory.
    """
    keys = reply.keys
    counts = reply.nf
    if len(keys) != len(counts):
        raise ProtocolError("get-data reply: 'keys' and 'nf' must be of equal length")
    if sum(counts) != len(frames):
        raise ProtocolError("get-data reply: frame counts do not add up")
    groups: list[list[Buffer]] = []
    pos = 0
    for n in counts:
        groups.append(list(frames[pos : pos + n]))
        pos += n
    if reply.shm is not None:
        groups = adopt(groups, reply.shm)
    refused: set[int] = set()
    lent = reply.lent
    if lent is not None:
        # Copied straight out of the holder's memory (protocol.lend); the caller tells
        # the holder it is done ("lent-done") whatever happens here.
        _check_layout(groups, [(g, f) for g, f, _, _ in lent.frames], "'lent'")
        made = dict(lent.made)
        for i, (g, f, address, n) in enumerate(lent.frames):
            if g in refused:
                continue
            try:
                groups[g][f] = lend.read(lent.pid, address, n, made.get(i, 0))
            except lend.Refused:
                refused.add(g)
    out: list[tuple[str, list[Buffer]]] = []
    sealed = reply.sealed or {}
    for g, (key, group) in enumerate(zip(keys, groups, strict=True)):
        if g in refused:
            gone.append(key)
            continue
        description = sealed.get(g)
        if description is not None:
            try:
                group = attach(description, group)
            except Gone:
                gone.append(key)
                continue
        out.append((key, group))
    return out


async def get_data(
    comm: Connection,
    keys: list[str],
    host: str,
    idle_timeout: float,
    striped: Callable[[StripedFrames, list[Buffer]], Awaitable[list[Buffer]]] | None = None,
    streams: int = 1,
    take: Callable[[list[tuple[str, list[Buffer]]]], None] | None = None,
) -> list[tuple[str, list[Buffer]]]:
    """Ask a holder for ``keys``: (key, frames of its value) for those it has.

    ``host`` is our host identity (or "" for sockets only). Lent buffers are given back
    ("lent-done") whatever happens; keys whose shared memory vanished before we could
    map or read it are asked for once more, by socket. With ``striped`` (and ``streams``
    > 1), a holder on another host may leave large frames out of its reply, for
    ``striped(description, frames)`` to fetch over several connections
    (protocol.stripe); the holder is told "parts-done" whatever happens. Errors of the
    request (the connection, the holder's error reply, a malformed reply) are the
    caller's. With ``take``, each reply's values go to it as they come (and none are
    returned): a holder sends a bounded amount per reply, so holding what came before
    until the last reply would undo that bound here.
    """
    out: list[tuple[str, list[Buffer]]] = []
    streams = streams if striped is not None and streams > 1 else 1
    vm = bool(host) and lend.usable
    plain: list[str] = []  # to ask for once more, by socket
    while keys:
        request = GetDataMsg(keys=keys, host=host, vm=vm, streams=streams)
        reply, frames = await comm.request(request, idle_timeout=idle_timeout)
        gone: list[str] = []
        try:
            description = reply.striped
            if description is not None:
                try:
                    if striped is None:
                        raise ProtocolError("the holder striped a value nobody asked it to")
                    frames = await striped(description, frames)
                finally:
                    if not comm.closed:
                        comm.send(PartsDoneMsg(id=description.id))
            values = values_of_reply(reply, frames, gone)
            del frames
            if take is not None:
                take(values)
            else:
                out += values
            del values
        finally:
            if reply.lent is not None and not comm.closed:
                comm.send(LentDoneMsg(id=reply.lent.id))
        if host:
            plain += gone
        # What the holder left for another request (it sends a bounded amount at a
        # time): only keys we asked for, and never all of them again.
        later = reply.later or []
        if later and (not reply.keys or not set(later) <= set(keys) - set(reply.keys)):
            raise ProtocolError("get-data reply: 'later' must name other keys we asked for")
        keys = later
        if not keys and plain:
            keys, plain = plain, []
            host, vm = "", False
    return out
