"""process_vm_readv transfers: copied out of another process's memory, refused cleanly."""

from __future__ import annotations

import contextlib
import ctypes
import subprocess
import sys
from collections.abc import Iterator

import pytest

from regrow.protocol import lend, rawbuf

needs_lend = pytest.mark.skipif(not lend.usable, reason="process_vm_readv is not available")

HOLDER = """
import ctypes, sys
buf = bytearray(bytes(range(256)) * 8192)  # 2 MiB
addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
print(addr, len(buf), flush=True)
sys.stdin.read()  # hold it until told to go
"""


@contextlib.contextmanager
def holding(code: str, *args: str) -> Iterator[tuple[int, int, int]]:
    """A process running ``code``, which prints the address and size of a buffer it
    holds until its stdin closes: (its pid, the address, the size)."""
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            address, n = map(int, proc.stdout.readline().split())
            yield proc.pid, address, n
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)


@needs_lend
def test_read_copies_another_processes_buffer() -> None:
    with holding(HOLDER) as (pid, address, n):
        got = lend.read(pid, address, n)
        assert bytes(got) == bytes(range(256)) * 8192
        assert not got.readonly


@needs_lend
def test_read_into_an_object_made_beforehand() -> None:
    """The worker makes the new objects on its event loop's thread (where malloc keeps
    freed memory warm, see protocol.heap) and reads into them on another."""
    with holding(HOLDER) as (pid, address, n):
        into = lend.target(n, rawbuf.BYTES)
        got = lend.read(pid, address, n, into=into)
        value = rawbuf.new_bytes(got)
        assert type(value) is bytes and value == bytes(range(256)) * 8192
        assert rawbuf.made_object(into[0], bytes) is value  # read in place, not copied


@needs_lend
def test_a_gone_lender_is_refused_not_misread() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    with pytest.raises(lend.Refused):
        lend.read(proc.pid, 4096, 1 << 20)  # the process is gone (reaped)
    assert lend.usable  # a dead lender is no reason to give up on lending


def test_only_contiguous_buffers_are_lent() -> None:
    data = b"x" * 10
    # Read-only ones too (a bytes value): where its bytes are.
    assert lend.address_of(data) == id(data) + bytes.__basicsize__ - 1
    assert ctypes.string_at(lend.address_of(memoryview(data)[2:]) or 0, 3) == b"xxx"
    assert lend.address_of(memoryview(bytearray(10))[::2]) is None
    assert lend.address_of(bytearray(10)) is not None
    assert not lend.lendable(bytearray(100)) and lend.lendable(bytearray(lend.MIN_BYTES))


ASCII_HOLDER = """
import ctypes, sys
buf = bytearray(b"abcdefgh" * (2 << 20))  # 16 MiB: read in two halves
if sys.argv[1] != "-1":
    buf[int(sys.argv[1])] = 0xE9  # not ASCII
addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
print(addr, len(buf), flush=True)
sys.stdin.read()
"""


@needs_lend
@pytest.mark.parametrize("bad", [-1, 5, (16 << 20) - 3])
def test_a_str_said_ascii_is_checked_as_it_is_read(bad: int) -> None:
    """The characters of an ASCII str are checked piece by piece as they are read, in
    both halves; a lender that says bytes are ASCII when one is not gets a clean
    UnicodeDecodeError, never a broken str."""
    with holding(ASCII_HOLDER, str(bad)) as (pid, address, n):
        got = lend.read(pid, address, n, rawbuf.ASCII)
        if bad == -1:
            assert getattr(got.obj, "checked", False) is (rawbuf.ascii_checker() is not None)
            text = rawbuf.new_ascii(got)
            assert type(text) is str and text == "abcdefgh" * (2 << 20)
        else:
            assert not getattr(got.obj, "checked", False)
            with pytest.raises(UnicodeDecodeError):
                rawbuf.new_ascii(got)
