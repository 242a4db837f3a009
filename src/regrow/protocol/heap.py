"""Freed memory kept warm, to make the next large value in.

A process that receives a 100 MB ``bytes`` makes a new object of 100 MB. glibc's malloc
serves an allocation that large with a fresh mapping (``mmap``) and gives it back when
the object is freed (``munmap``), so every such value is written into memory the kernel
must fault in and zero first: ~5 GB/s on this kind of machine, whatever does the
writing, against ~13 GB/s for memory written before. A worker receives such values
again and again, so it asks malloc (``keep_warm``) to serve allocations up to a budget
from its heap and to keep that much freed memory rather than give it back at once:
the second 100 MB value lands in the first one's pages.

Only the main arena grows past 64 MB (glibc's other arenas are heaps of at most that),
so large values are made on a process's main thread (the worker's event loop) for this
to apply; see ``lend.target``.

The budget is kept to by ``tidy``: when malloc holds more freed memory than the budget
(a burst of large values, freed out of order), all of it is given back
(``malloc_trim``). A worker short of memory gives it back before it spills (``give_back``).

Elsewhere (not glibc, or a glibc without ``mallinfo2``) nothing is kept warm;
``give_back`` works with any glibc (``comm.trim_soon`` uses it).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

# mallopt's parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> tuple[Any, bool]:
    """glibc (None elsewhere), and whether it has ``mallinfo2`` (2.33 and later): without
    it the budget could not be kept, so nothing is kept warm, but ``give_back`` works."""
    if not sys.platform.startswith("linux"):
        return None, False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc
        return None, False
    try:
        libc.mallinfo2.restype = _MallInfo2
    except AttributeError:
        return libc, False
    return libc, True


_LIBC, _MALLINFO2 = _libc()
# The budget ``keep_warm`` set (0: malloc as it was).
budget = 0


def keep_warm(nbytes: int) -> bool:
    """Let malloc serve allocations below ``nbytes`` from its heap and keep up to about
    that much freed memory; whether it could (glibc only). 0 leaves malloc alone."""
    global budget
    if _LIBC is None or not _MALLINFO2 or nbytes <= 0:
        return False
    nbytes = min(nbytes, 2**31 - 1)  # mallopt takes an int
    if not (_LIBC.mallopt(_M_MMAP_THRESHOLD, nbytes) and _LIBC.mallopt(_M_TRIM_THRESHOLD, nbytes)):
        return False
    budget = nbytes
    return True


def free_bytes() -> int:
    """Freed memory malloc holds (in all its arenas), not given back; 0 where unknown."""
    if _LIBC is None or not _MALLINFO2:
        return 0
    return int(_LIBC.mallinfo2().fordblks)


def give_back() -> bool:
    """Give malloc's freed memory back to the system (glibc's ``malloc_trim``); whether
    any was."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))


def tidy() -> bool:
    """Give freed memory back if malloc holds more of it than the budget; whether it did."""
    if budget and free_bytes() > budget:
        return give_back()
    return False
