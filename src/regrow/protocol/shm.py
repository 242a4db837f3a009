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
import uuid
from collections.abc import Sequence
from typing import Any

from regrow.protocol.framing import Buffer

SHM_DIR = "/dev/shm"
# Frames smaller than this travel inline: mapping a file costs more than copying them.
MIN_BYTES = 1 << 20


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


def export(groups: Sequence[Sequence[Buffer]]) -> tuple[list[list[Buffer]], dict[str, Any] | None]:
    """Move the large frames of ``groups`` (one list of frames per value) into one file.

    Returns the groups with each moved frame replaced by an empty bytes, and the
    description the receiver needs (None when nothing was large enough).
    """
    layout: list[list[int]] = []
    total = 0
    for g, frames in enumerate(groups):
        for f, frame in enumerate(frames):
            n = memoryview(frame).nbytes
            if n >= MIN_BYTES:
                layout.append([g, f, total, n])
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
    return out, {"path": path, "size": total, "layout": layout}


def adopt(groups: list[list[Buffer]], info: dict[str, Any]) -> list[list[Buffer]]:
    """Put the frames described by ``info`` back into ``groups``, mapped, not copied."""
    path = str(info["path"])
    if not path.startswith(SHM_DIR + "/regrow-") or "/" in path[len(SHM_DIR) + 1 :]:
        raise ValueError(f"refusing shared-memory path {path!r}")
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, int(info["size"]))
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)  # the mapping outlives the name
    view = memoryview(mm)
    for g, f, offset, n in info["layout"]:
        groups[g][f] = view[offset : offset + n]
    return groups


def discard(info: dict[str, Any] | None) -> None:
    """Remove a file the receiver never adopted (it died, or the request failed)."""
    if info:
        with contextlib.suppress(OSError):
            os.unlink(str(info["path"]))


def values_of_reply(
    reply: dict[str, Any], frames: Sequence[Buffer]
) -> list[tuple[str, list[Buffer]]]:
    """A ``get-data`` reply as (key, frames of its value) pairs, shared memory adopted."""
    keys = reply.get("keys")
    counts = reply.get("nf")
    if not (isinstance(keys, list) and isinstance(counts, list) and len(keys) == len(counts)):
        raise ValueError("get-data reply: 'keys' and 'nf' must be lists of equal length")
    if sum(counts) != len(frames):
        raise ValueError("get-data reply: frame counts do not add up")
    groups: list[list[Buffer]] = []
    pos = 0
    for n in counts:
        groups.append(list(frames[pos : pos + n]))
        pos += n
    info = reply.get("shm")
    if info:
        groups = adopt(groups, info)
    return list(zip(keys, groups, strict=True))
