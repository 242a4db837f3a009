"""serialize: pickle-5 out-of-band buffers, references to futures, digests."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import pytest

from regrow.protocol import serialize
from regrow.protocol.framing import FrameDecoder, encode_packet
from regrow.protocol.messages import PutDataMsg, pack_messages, unpack_messages
from regrow.protocol.serialize import digest, dumps, dumps_with_refs, loads, loads_with_refs, sizeof


@dataclass(frozen=True)
class Ref:
    """Stands for a Future: travels as its key."""

    key: str


def ref_of(obj: object) -> str | None:
    return obj.key if isinstance(obj, Ref) else None


def test_plain_objects_round_trip() -> None:
    for obj in [1, "s", b"b", None, [1, (2, {"a": {3}})], {"k": frozenset({1})}, ValueError("x")]:
        frames = dumps(obj)
        out = loads(frames)
        if isinstance(obj, Exception):
            assert type(out) is ValueError and out.args == obj.args
        else:
            assert out == obj


def test_numpy_arrays_travel_out_of_band() -> None:
    a = np.arange(1_000_000, dtype=np.float64)
    b = np.arange(12, dtype=np.int32).reshape(3, 4).T  # Fortran-contiguous
    frames = dumps({"a": a, "b": b, "n": 3})
    assert len(frames) == 3
    assert memoryview(frames[0]).nbytes < 1000  # the data is not in the pickle stream
    assert sorted(memoryview(f).nbytes for f in frames[1:]) == [b.nbytes, a.nbytes]
    out = loads(frames)
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    assert out["b"].dtype == np.int32 and out["n"] == 3


def test_non_contiguous_array_round_trips() -> None:
    a = np.arange(100).reshape(10, 10)[::2, ::3]
    np.testing.assert_array_equal(loads(dumps(a)), a)


def test_array_through_the_wire_path_is_writeable() -> None:
    """dumps -> messages -> packet -> decoder -> loads: equal, and writeable at the far end."""
    a = np.random.default_rng(0).random((512, 512))
    payload = dumps(a)
    d = FrameDecoder(max_frames=1 << 20, max_frame_bytes=1 << 40)
    for buf in encode_packet(pack_messages([(PutDataMsg(keys=["a"], nf=[len(payload)]), payload)])):
        view = memoryview(buf).cast("B")
        for i in range(0, view.nbytes, 65_536):
            d.feed(view[i : i + 65_536])
    ((_, frames),) = unpack_messages(d.packets.popleft())
    out = loads(frames)
    np.testing.assert_array_equal(out, a)
    out[0, 0] = -1.0  # writeable: received into a buffer of its own
    assert out[0, 0] == -1.0


def test_dumps_with_refs_collects_keys_in_order_without_repeats() -> None:
    x, y, z = Ref("x"), Ref("y"), Ref("z")
    arr = np.ones(50_000)
    obj = ((x, [y, {"k": (z, x)}]), {"arr": arr, "y": y})
    frames, refs = dumps_with_refs(obj, ref_of)
    assert refs == ["x", "y", "z"]
    assert len(frames) == 2  # the array is still out of band
    data: dict[str, Any] = {"x": 1, "y": "two", "z": np.arange(3)}
    (args, kwargs) = loads_with_refs(frames, data)
    assert args[0] == 1 and args[1][0] == "two"
    np.testing.assert_array_equal(args[1][1]["k"][0], np.arange(3))
    assert args[1][1]["k"][1] == 1
    np.testing.assert_array_equal(kwargs["arr"], arr)


def test_dumps_with_refs_without_refs() -> None:
    frames, refs = dumps_with_refs([1, 2], ref_of)
    assert refs == []
    assert loads_with_refs(frames, {}) == [1, 2]
    assert loads(frames) == [1, 2]


@pytest.mark.parametrize(
    "obj",
    [
        ((1,), {}),
        ((1.5, "a", b"b", None, True), {"k": -(10**30)}),
        (([1, 2], (3,)), {"d": {"x": 1}}),
        # Deeper than the atoms-only shortcut looks, or too long: the general path.
        ((((((1,),),),),), {}),
        (tuple(range(100)), {}),
    ],
)
def test_builtin_arguments_round_trip_as_cloudpickle_writes_them(obj: Any) -> None:
    frames, refs = dumps_with_refs(obj, ref_of)
    assert refs == [] and len(frames) == 1
    assert loads_with_refs(frames, {}) == obj
    # The same bytes cloudpickle writes (dumps() takes the same shortcut, so compare
    # with cloudpickle itself).
    assert bytes(frames[0]) == cloudpickle.dumps(obj, protocol=5)
    assert dumps(obj) == [bytes(frames[0])]


@pytest.mark.parametrize(
    "obj",
    [
        ((Ref("x"),), {}),
        ((1, [Ref("x")]), {}),
        ((1,), {"k": Ref("x")}),
        (((((Ref("x"),),),),), {}),
        ((1,), {1: Ref("x")}),  # a non-str dict key
    ],
)
def test_a_reference_is_found_wherever_it_is(obj: Any) -> None:
    frames, refs = dumps_with_refs(obj, ref_of)
    assert refs == ["x"]
    assert "'x'" not in repr(loads_with_refs(frames, {"x": "X"}))


def test_loads_with_missing_ref_fails() -> None:
    frames, _ = dumps_with_refs([Ref("gone")], ref_of)
    with pytest.raises(KeyError):
        loads_with_refs(frames, {})
    with pytest.raises(pickle.UnpicklingError):
        loads(frames)  # a plain unpickler knows nothing of references


def test_functions_and_lambdas_round_trip() -> None:
    k = 5
    fn = loads(dumps(lambda v: v + k))
    assert fn(1) == 6


def test_digest_is_stable_and_content_based() -> None:
    assert digest(dumps((1, "a"))) == digest(dumps((1, "a")))
    assert digest(dumps((1, "a"))) != digest(dumps((1, "b")))
    a = np.arange(10)
    assert digest(dumps(a)) == digest(dumps(a.copy()))
    assert digest(dumps(a)) != digest(dumps(a + 1))
    assert digest([b"ab", b"c"]) == digest([b"a", b"bc"])  # bytes, not framing, are hashed


class _Holder:
    def __init__(self, items: list[bytes]) -> None:
        self.items = items


class _Measured:
    def __init__(self) -> None:
        self.small = 1

    def __sizeof__(self) -> int:
        return 12_345


def test_sizeof_estimates() -> None:
    assert sizeof(np.zeros(1000)) >= 8000
    assert sizeof(b"x" * 1000) >= 1000
    assert sizeof([b"x" * 1000] * 100) >= 100_000
    assert sizeof({i: b"x" * 100 for i in range(100)}) >= 10_000
    assert sizeof(object()) > 0
    looped: list[object] = []
    looped.append(looped)
    assert sizeof(looped) > 0  # a value that holds itself: no RecursionError
    assert sizeof(_Holder([b"x" * 1000] * 100)) >= 100_000  # a plain object's fields
    assert 12_345 <= sizeof(_Measured()) < 13_000  # one that measures itself is believed


def test_standard_pickler_where_it_writes_what_cloudpickle_would() -> None:
    import sys

    from regrow.protocol.serialize import standard_dumps

    buffers: list[pickle.PickleBuffer] = []
    value = {"a": np.float64(2.5), "b": np.arange(3)}
    data = standard_dumps(value, buffers)
    assert data is not None and len(buffers) == 1  # the array's buffer, out of band
    assert pickle.loads(data, buffers=buffers)["a"] == 2.5
    buffers.clear()
    assert loads(dumps(value))["a"] == 2.5
    # Lambdas and local functions: the standard pickler refuses, cloudpickle does it.
    assert standard_dumps(lambda x: x + 1, buffers) is None and not buffers
    assert loads(dumps(lambda x: x + 1))(1) == 2
    # A function of __main__: the standard pickler would write a name only this
    # process knows; cloudpickle writes it by value.
    main = sys.modules["__main__"]

    def twice(x: int) -> int:
        return 2 * x

    twice.__module__ = "__main__"
    twice.__qualname__ = "regrow_test_twice"
    main.regrow_test_twice = twice  # type: ignore[attr-defined]
    try:
        assert standard_dumps(twice, buffers) is None
        frames = dumps(twice)
        del main.regrow_test_twice  # type: ignore[attr-defined]
        assert loads(frames)(4) == 8  # by value: needs no __main__.regrow_test_twice
    finally:
        if hasattr(main, "regrow_test_twice"):
            del main.regrow_test_twice


def test_sizeof_of_data_frames_counts_their_buffers() -> None:
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"id": rng.integers(0, 10**6, 20_000), "x": rng.random(20_000), "s": ["ab"] * 20_000}
    )
    buffers = df.memory_usage(index=True, deep=False).sum()
    assert buffers <= sizeof(df) <= buffers + 1000
    # A dict subclass that sizes its items deeply itself is still sampled.
    parts = {i: df.iloc[i * 100 : (i + 1) * 100] for i in range(32)}
    assert sizeof(parts) == pytest.approx(sum(sizeof(p) for p in parts.values()), rel=0.2)


# ------------------------------------------------ imports while unpickling
# (the race itself, with real threads and processes: tests/integration/test_import_race.py)
@pytest.mark.parametrize(
    ("obj", "names_none"),
    [
        ((1, "a", 2.5, None, b"b"), True),
        ({"k": [1, 2]}, True),
        ("Ó", False),  # 0x93 in its UTF-8: the careful path, for nothing
        (np.float64(1.5), False),
        (np.arange(3), False),
        (ValueError("x"), False),
    ],
)
def test_streams_naming_no_module_take_the_plain_path(obj: Any, names_none: bool) -> None:
    [stream, *_] = dumps(obj)
    assert serialize._names_no_module(stream) is names_none
    assert serialize._names_no_module(memoryview(bytearray(stream))) is names_none
    # A protocol without STACK_GLOBAL, or a stream too long to search: the careful path.
    assert not serialize._names_no_module(pickle.dumps(obj, protocol=2))
    assert not serialize._names_no_module(pickle.dumps([obj, b"x" * 100_000], protocol=5))


@pytest.mark.parametrize(
    "obj",
    [
        b"x" * 1_000_000,
        [str(i) for i in range(30_000)],
        {"a": np.arange(10), "b": [np.float64(i) for i in range(10_000)]},
    ],
    ids=["bytes", "list", "numpy"],
)
@pytest.mark.parametrize("protocol", [5, 0])
def test_a_large_stream_in_a_received_buffer_round_trips(obj: Any, protocol: int) -> None:
    """A large frame 0 arrives as a memoryview (of a mapping): read with no copy of it,
    through read, readinto (protocol 5) and readline (protocol 0)."""
    stream = pickle.dumps(obj, protocol=protocol)
    assert len(stream) > serialize._SEARCHED
    out = loads([memoryview(bytearray(stream))])
    if isinstance(obj, dict):
        np.testing.assert_array_equal(out["a"], obj["a"])
        assert out["b"] == obj["b"]
    else:
        assert out == obj
    out = loads_with_refs([memoryview(bytearray(stream))], {})
    assert type(out) is type(obj)


def test_a_module_held_by_a_function_comes_back() -> None:
    """cloudpickle writes a module a function holds as subimport(name): it is imported
    in order, and the function gets the module."""
    import os.path as osp

    fn = loads(dumps(lambda: osp.join("a", "b")))
    assert fn() == os.path.join("a", "b")


def test_a_missing_module_is_reported_as_pickle_reports_it() -> None:
    for module in (b"regrow_no_such_module", b"regrow.no_such_module"):
        stream = b"\x80\x05\x8c" + bytes([len(module)]) + module + b"\x8c\x01x\x93."
        with pytest.raises(ModuleNotFoundError):
            pickle.loads(stream)
        with pytest.raises(ModuleNotFoundError):
            loads([stream])
