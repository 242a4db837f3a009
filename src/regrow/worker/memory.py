"""How much memory a worker process uses, as its memory limit counts it.

Owns one measure: the process's resident anonymous pages and the shared memory it maps
(``RssAnon + RssShmem`` in ``/proc/PID/status``), without its resident file pages
(``RssFile``). Those are clean page cache (the interpreter's libraries, a spill file
being sent, a file a task maps): the kernel takes them back whenever memory is short,
so a worker is never spilled, paused or killed for them. Elsewhere (no /proc), the
resident set size.
Must not: decide anything from it (``core.worker_state`` and the nanny do).
"""

from __future__ import annotations

import psutil

_FIELDS = (b"RssAnon:", b"RssShmem:")


def used(pid: int) -> int:
    """Bytes of memory ``pid`` uses; psutil.Error if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except FileNotFoundError:
        raise psutil.NoSuchProcess(pid) from None
    except OSError:
        return int(psutil.Process(pid).memory_info().rss)
    total = 0
    found = 0
    for line in text.splitlines():
        if line.startswith(_FIELDS):
            total += int(line.split()[1]) * 1024  # in kB
            found += 1
    if found < len(_FIELDS):  # a kernel older than 4.5
        return int(psutil.Process(pid).memory_info().rss)
    return total
