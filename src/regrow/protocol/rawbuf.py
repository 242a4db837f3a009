"""Large ``bytes`` and ASCII ``str`` values to and from buffers at memory speed.

Python builds a ``bytes`` or ``str`` of 100 MB in memory it has never touched: a
quarter of a million page faults, taken by one thread, ~45 ms on this kind of machine,
more than the transfer of the same 100 MB. Here (CPython on Linux) the object is made
empty (``PyBytes_FromStringAndSize(NULL, n)``, ``PyUnicode_New(n, 127)``) and filled by
two threads at once (``ctypes.memmove`` releases the GIL), so the faults are taken on
two cores: ~26 ms for 100 MB. Nobody sees the object before it is whole, as with any
object C code fills. (Huge pages, ``madvise(MADV_HUGEPAGE)``, made it 9 ms, but only
where the kernel had free huge pages: elsewhere its compaction stalled 100-300 ms.)

A ``str`` whose characters are all ASCII (``str.isascii()``, which Python knows without
looking) is stored as its bytes: ``ascii_view`` lends them as a buffer, so it is sent
with no encoding and no copy; ``new_ascii`` checks that what arrived is ASCII before it
makes a ``str`` of it (a hostile peer's bytes must not break a ``str``'s invariants).

Elsewhere (another Python, another system, or a self-check that fails at import) the
plain constructors are used.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from regrow.protocol.lend import address_of

logger = logging.getLogger("regrow.protocol")

# Below this, the plain constructors are as fast (the faults are few).
FAST_FROM = 1 << 20
# From this size the copy is split between two threads.
_SPLIT = 8 << 20

# Where the characters of a bytes object and of a compact ASCII str start, from the
# object's address: after their headers (one byte of each size is the final NUL).
_BYTES_DATA = bytes.__basicsize__ - 1
_ASCII_DATA = sys.getsizeof("") - 1


def _setup() -> tuple[Any, Any, Any] | None:
    if sys.implementation.name != "cpython" or not sys.platform.startswith("linux"):
        return None
    try:
        new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
        new_bytes.restype = ctypes.py_object
        new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        new_str = ctypes.pythonapi.PyUnicode_New
        new_str.restype = ctypes.py_object
        new_str.argtypes = [ctypes.c_ssize_t, ctypes.c_uint32]
        new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
        new_bytearray.restype = ctypes.py_object
        new_bytearray.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    except AttributeError:
        return None
    return new_bytes, new_str, new_bytearray


_API = _setup()


def _fill(address: int, data: memoryview) -> None:
    """Copy ``data`` to ``address`` (fresh memory), large ones by two threads."""
    n = data.nbytes
    source = address_of(data)
    if source is None:  # not contiguous: cannot happen for a received frame
        memoryview((ctypes.c_char * n).from_address(address)).cast("B")[:] = data
        return
    if n < _SPLIT or (os.cpu_count() or 1) < 2:
        ctypes.memmove(address, source, n)
        return
    half = n // 2
    other = threading.Thread(
        target=ctypes.memmove, args=(address + half, source + half, n - half), name="regrow-fill"
    )
    other.start()
    try:
        ctypes.memmove(address, source, half)
    finally:
        other.join()


def _built(buffer: Any, kind: type, code: int) -> Any:
    """A ``kind`` (bytes or bytearray) of ``buffer``'s bytes: the object itself if
    ``buffer`` is its whole memory (see ``made_object``), else a new one, filled fast."""
    made = made_object(buffer, kind)
    if made is not None:
        return made
    view = memoryview(buffer).cast("B")
    fresh = empty(code, view.nbytes)
    if fresh is None:
        return kind(view)
    _fill(fresh[1], view)
    return made_object(fresh[0], kind)


def new_bytes(buffer: Any) -> bytes:
    """``bytes(buffer)``, fast for large buffers; the object itself if ``buffer`` is
    the whole memory of a ``bytes`` (one a lent frame was read into)."""
    out: bytes = _built(buffer, bytes, BYTES)
    return out


def new_bytearray(buffer: Any) -> bytearray:
    """``bytearray(buffer)``, fast for large buffers; the object itself if ``buffer`` is
    one ``empty`` made and a lent frame was read into."""
    out: bytearray = _built(buffer, bytearray, BYTEARRAY)
    return out


# What a lent frame is (LentFrames.made): the memory of a bytes object, of an ASCII
# str's characters, or of a bytearray.
BYTES = 1
ASCII = 2
BYTEARRAY = 3


def kind_of(frame: Any) -> int:
    """BYTES, ASCII or BYTEARRAY if ``frame`` is the whole memory of a ``bytes``, of an
    ASCII ``str`` (as ``ascii_view`` lends it) or of a ``bytearray``, else 0."""
    view = memoryview(frame)
    owner = view.obj
    if type(owner) is bytes and len(owner) == view.nbytes:
        return BYTES
    if type(owner) is bytearray and len(owner) == view.nbytes:
        return BYTEARRAY
    # An ASCII str's frame, as dumps hands it over, is a view (PickleBuffer.raw()) of
    # ascii_view's view of its characters. Only there is a view looked through: a
    # memoryview value's frame is a view of a view of, say, a bytes, and must stay a
    # plain (writable, pooled) buffer, as a memoryview is rebuilt on it.
    while type(owner) is memoryview:
        owner = owner.obj
    text = getattr(owner, "text", None)
    if type(text) is str and len(text) == view.nbytes and isinstance(owner, ctypes.Array):
        return ASCII
    return 0


def empty(kind: int, nbytes: int) -> tuple[memoryview, int] | None:
    """A new, unfilled object of ``kind`` and ``nbytes`` (a ``bytes``, or an ASCII ``str``
    to be checked by ``new_ascii``) as a writable view of its memory, and that memory's
    address, to read a lent frame into; None where that cannot be done."""
    if _API is None or nbytes < FAST_FROM or kind not in (BYTES, ASCII, BYTEARRAY):
        return None
    if kind == BYTES:
        owner: Any = _API[0](None, nbytes)
        address = id(owner) + _BYTES_DATA
    elif kind == BYTEARRAY:
        owner = _API[2](None, nbytes)  # not zeroed: its pages are first touched by the read
        found = address_of(owner)
        assert found is not None
        address = found
    else:
        owner = _API[1](nbytes, 127)
        address = id(owner) + _ASCII_DATA
    holder: Any = type("_Chars", (ctypes.c_char * nbytes,), {})
    chars = holder.from_address(address)
    chars.text = owner  # the view's owner holds the object
    return memoryview(chars).cast("B"), address


def made_object(buffer: Any, kind: type) -> Any:
    """The ``bytes``, ``str`` or ``bytearray`` whose whole memory ``buffer`` is (one
    ``empty`` made and a lent frame was read into, or a ``bytes`` itself: immutable),
    if it is one; else None. A ``bytearray`` is never another's: only one ``empty``
    made, which nothing else holds, is taken as the value."""
    view = memoryview(buffer)
    obj: Any = view.obj
    if kind is bytes and type(obj) is bytes and len(obj) == view.nbytes:
        return obj
    owner: Any = getattr(obj, "text", None)
    if not isinstance(obj, ctypes.Array) or not isinstance(owner, kind):
        return None
    return owner if type(owner) is kind and len(obj) == view.nbytes else None


def _is_ascii(view: memoryview) -> bool:
    try:
        import numpy as np
    except ImportError:
        return view.tobytes().isascii()
    return bool(view.nbytes == 0 or np.frombuffer(view, dtype=np.uint8).max() < 128)


def _is_ascii_at(address: int, nbytes: int) -> bool:
    """Whether the ``nbytes`` at ``address`` (ours, written) are all ASCII."""
    return _is_ascii(memoryview((ctypes.c_char * nbytes).from_address(address)).cast("B"))


def ascii_checker() -> Callable[[int, int], bool] | None:
    """A check of memory as it is read (lend.read), where numpy is; else None (the
    check would copy). Imports numpy only when first asked: ``import regrow`` must not."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        return None
    return _is_ascii_at


def mark_ascii(buffer: Any) -> None:
    """Say that the characters of the ``str`` ``empty`` made, ``buffer``, were all
    checked to be ASCII as they were read, so ``new_ascii`` need not look again."""
    holder = memoryview(buffer).obj
    if isinstance(holder, ctypes.Array) and isinstance(getattr(holder, "text", None), str):
        holder.checked = True  # type: ignore[attr-defined]


def new_ascii(buffer: Any) -> str:
    """The ``str`` of the ASCII bytes ``buffer``; UnicodeDecodeError if any is not."""
    made = made_object(buffer, str)
    view = memoryview(buffer).cast("B")
    if made is not None:
        # A peer's bytes: they must be ASCII to be this str (checked as read, or now).
        if not getattr(view.obj, "checked", False) and not _is_ascii(view):
            return str(view, "ascii")  # raises
        return made  # type: ignore[no-any-return]
    if _API is None or view.nbytes < FAST_FROM:
        return str(view, "ascii")
    if not _is_ascii(view):
        return str(view, "ascii")  # raises, naming the first byte that is not ASCII
    out: str = _API[1](view.nbytes, 127)
    _fill(id(out) + _ASCII_DATA, view)
    return out


def ascii_view(text: str) -> memoryview | None:
    """The bytes of an ASCII ``str`` as a read-only buffer that keeps ``text`` alive
    (None where that cannot be done: then encode it)."""
    if _API is None or not text.isascii() or type(text) is not str:
        return None
    n = len(text)
    # A subclass of the array type: its instances have a __dict__ to hold the str in.
    holder: Any = type("_Chars", (ctypes.c_char * n,), {})
    chars = holder.from_address(id(text) + _ASCII_DATA)
    chars.text = text  # the buffer's owner holds the str while anything reads it
    return memoryview(chars).cast("B").toreadonly()


def _check() -> bool:
    """The layout assumed above, tried once at import (importing nothing: the ASCII
    check of ``new_ascii`` would import numpy)."""
    try:
        sample = bytes(range(32, 127)) * (FAST_FROM // 95 + 1)
        made = new_bytes(memoryview(sample))
        fresh = empty(ASCII, len(sample))
        if fresh is None:
            return False
        fresh[0][:] = sample
        text = made_object(fresh[0], str)
        view = ascii_view(text) if type(text) is str else None
        return (
            made == sample
            and text == sample.decode()
            and view is not None
            and view.tobytes() == sample
        )
    except Exception:
        logger.debug("rawbuf: self-check failed", exc_info=True)
        return False


if _API is not None and not _check():
    _API = None
