"""Large bytes-like values and strs travel out of band, alone and in containers, and
come back as what they were; ``rawbuf`` builds them from buffers and refuses what is
not what it claims to be."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from regrow.protocol import lend, rawbuf
from regrow.protocol.serialize import OUT_OF_BAND, dumps, dumps_with_refs, loads, loads_with_refs

BIG = 2 * rawbuf.FAST_FROM  # large enough for every fast path


def _data(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(32, 127, n, dtype=np.uint8).tobytes()


def _sizes(frames: list[Any]) -> list[int]:
    return [memoryview(f).nbytes for f in frames]


@pytest.mark.parametrize(
    "value",
    [
        _data(BIG),
        bytearray(_data(BIG)),
        _data(BIG).decode(),
        "é€" * BIG,  # not ASCII: as UTF-8
        "x\udc80" * OUT_OF_BAND,  # a lone surrogate (os.fsdecode makes them) survives
        _data(OUT_OF_BAND),  # the smallest that goes out of band
    ],
    ids=["bytes", "bytearray", "ascii", "utf8", "surrogate", "threshold"],
)
def test_large_raw_values_go_out_of_band(value: Any) -> None:
    frames = dumps(value)
    assert len(frames) == 2 and _sizes(frames)[0] < 200  # the data is not in the stream
    out = loads(frames)
    assert type(out) is type(value) and out == value


def test_small_values_stay_in_the_stream() -> None:
    for value in (b"x" * (OUT_OF_BAND - 1), "y" * 100, [b"z" * 10, "w"]):
        frames = dumps(value)
        assert len(frames) == 1 and loads(frames) == value


def test_a_bytearray_comes_back_writable_and_its_own() -> None:
    value = bytearray(_data(BIG))
    out = loads(dumps(value))
    out[0] = 0
    assert value[0] != 0
    # Read into one made empty (as a borrower does), it is that very object.
    made = rawbuf.empty(rawbuf.BYTEARRAY, BIG)
    assert made is not None
    made[0][:] = value
    got = rawbuf.new_bytearray(made[0])
    assert got == value and type(got) is bytearray
    got.append(1)  # its own, growable


def test_memoryviews_of_any_size_and_shape_round_trip() -> None:
    for view in (
        memoryview(b"abc"),
        memoryview(np.arange(12, dtype=np.int32).reshape(3, 4)),
        memoryview(np.arange(40, dtype=np.int64))[::2],  # not contiguous: copied once
        memoryview(_data(BIG)),
    ):
        out = loads(dumps(view))
        assert isinstance(out, memoryview)
        assert (out.format, out.shape, out.tolist()) == (view.format, view.shape, view.tolist())


def test_a_memoryview_of_a_format_that_cannot_come_back_is_refused_clearly() -> None:
    record = np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")])
    with pytest.raises(TypeError, match="memoryview of format"):
        dumps(memoryview(record))


def test_containers_send_their_large_items_out_of_band_once() -> None:
    blob = _data(BIG, 1)
    text = _data(BIG, 2).decode()
    value = {"a": [blob, blob, 1, "s"], "b": (text, 2.5), "c": None}
    frames = dumps(value)
    assert sorted(_sizes(frames)[1:]) == [BIG, BIG]  # the blob met twice goes once
    out = loads(frames)
    assert out == value and out["a"][0] is out["a"][1]


def test_only_a_containers_first_items_are_looked_at() -> None:
    """A list of many records is judged by its first 16: cheap, and still right."""
    blob = _data(BIG)
    records = [(f"w{i}", i) for i in range(100_000)]
    assert len(dumps(records)) == 1 and loads(dumps(records)) == records
    late = [*records[:20], ("big", blob)]  # large, but after the first 16: in band
    frames = dumps(late)
    assert len(frames) == 1 and loads(frames) == late
    early = [("big", blob), *records[:20]]
    frames = dumps(early)
    assert _sizes(frames)[1:] == [BIG] and loads(frames) == early


def test_a_memoryview_past_the_first_items_is_still_written() -> None:
    value = [*range(20), memoryview(b"abc"), (1, memoryview(_data(BIG)))]
    out = loads(dumps(value))
    assert out[:20] == list(range(20))
    assert bytes(out[20]) == b"abc" and bytes(out[21][1]) == _data(BIG)
    with pytest.raises(TypeError, match="lock"):
        dumps([*range(20), __import__("threading").Lock()])


def test_task_arguments_send_large_items_out_of_band() -> None:
    blob = _data(BIG)
    frames, refs = dumps_with_refs(((blob, "k"), {"t": blob.decode()}), lambda _: None)
    assert refs == [] and len(frames) == 3
    assert loads_with_refs(frames, {}) == ((blob, "k"), {"t": blob.decode()})


def test_an_ascii_str_is_lent_as_its_own_characters() -> None:
    text = _data(BIG).decode()
    view = rawbuf.ascii_view(text)
    assert view is not None and view.readonly and view.tobytes() == text.encode()
    assert rawbuf.kind_of(view) == rawbuf.ASCII
    assert rawbuf.kind_of(memoryview(text.encode())) == rawbuf.BYTES
    assert rawbuf.kind_of(bytearray(10)) == rawbuf.BYTEARRAY
    assert rawbuf.kind_of(memoryview(bytearray(10))[2:]) == 0  # not the whole of it
    assert rawbuf.ascii_view("é" * BIG) is None


def test_the_frames_dumps_makes_say_what_they_are() -> None:
    """A frame that is a whole ``bytes``, ``bytearray`` or ASCII ``str`` is known as such
    (``rawbuf.kind_of``) as ``dumps`` hands it over, so that a borrower reads it straight
    into a new such object; an ASCII str's frame is a view of a view of its characters."""
    value = [
        _data(BIG, 1),
        bytearray(_data(BIG, 2)),
        _data(BIG, 3).decode(),
        "é" * BIG,  # UTF-8: its encoded bytes
        memoryview(_data(BIG, 4)),  # rebuilt as a view of a plain buffer: not an object's
        memoryview(bytearray(_data(BIG, 5))),
    ]
    kinds = [rawbuf.kind_of(f) for f in dumps(value)[1:]]
    assert kinds == [rawbuf.BYTES, rawbuf.BYTEARRAY, rawbuf.ASCII, rawbuf.BYTES, 0, 0]


def test_bytes_claimed_ascii_that_are_not_are_refused() -> None:
    bad = bytearray(_data(BIG))
    bad[BIG // 2] = 0xC3
    with pytest.raises(UnicodeDecodeError):
        rawbuf.new_ascii(bad)
    made = rawbuf.empty(rawbuf.ASCII, BIG)
    assert made is not None
    view, _ = made
    view[:] = bad
    with pytest.raises(UnicodeDecodeError):
        rawbuf.new_ascii(view)


HOLDER = """
import sys
data = bytes(range(32, 127)) * 30000
print(id(data) + bytes.__basicsize__ - 1, len(data), flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not lend.usable, reason="process_vm_readv is not available")
def test_a_lent_bytes_is_read_straight_into_the_value() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        address, n = map(int, proc.stdout.readline().split())
        frame = lend.read(proc.pid, address, n, rawbuf.BYTES)
        value = rawbuf.new_bytes(frame)
        assert value == bytes(range(32, 127)) * 30000
        # No copy: the value is the object the frame was read into.
        assert ctypes.addressof(ctypes.c_char.from_buffer(frame)) == id(value) + (
            bytes.__basicsize__ - 1
        )
        text = rawbuf.new_ascii(lend.read(proc.pid, address, n, rawbuf.ASCII))
        assert text == value.decode()
    finally:
        proc.kill()
        proc.communicate()  # closes its pipes
