"""Values of the wire protocol's types, made from the schema itself (protocol.messages,
read through ``msgspec.inspect``): one walk over a type, bounds included, and what to
make at each kind of type. Two makers: hypothesis strategies (``Strategies``, for
tests/protocol/test_messages.py) and seeded random draws (``wire.Draws``, for the wire
fuzzer). A message or a field added to the schema is covered by both, untouched.

(Here rather than under tests/protocol so that the fuzzer, also run as
``python -m tests.security.fuzz``, imports it relatively in both ways of running it.)
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec.inspect as mi
from hypothesis import strategies as st

INT64 = (-(2**63), 2**64 - 1)  # what msgpack can carry

T = TypeVar("T")


class Maker(Generic[T]):
    """What ``walk`` makes of each kind of type: a ``T`` (a strategy, a draw...).

    Lengths are ``lo`` to ``hi`` (None: unbounded); ``field`` is the wire name of the
    nearest enclosing field (``name{}`` for a map's keys), for makers that care."""

    def integer(self, lo: int, hi: int) -> T:
        raise NotImplementedError

    def floating(
        self, lo: float | None, hi: float | None, exclude_min: bool, exclude_max: bool
    ) -> T:
        raise NotImplementedError

    def boolean(self) -> T:
        raise NotImplementedError

    def text(self, lo: int, hi: int | None, field: str) -> T:
        raise NotImplementedError

    def binary(self, lo: int, hi: int | None, field: str) -> T:
        raise NotImplementedError

    def none(self) -> T:
        raise NotImplementedError

    def anything(self) -> T:
        raise NotImplementedError

    def sequence(self, item: T, lo: int, hi: int | None) -> T:
        raise NotImplementedError

    def fixed(self, items: list[T]) -> T:
        raise NotImplementedError

    def mapping(self, key: T, value: T, lo: int, hi: int | None) -> T:
        raise NotImplementedError

    def one_of(self, options: list[T]) -> T:
        raise NotImplementedError

    def struct(self, t: mi.StructType, fields: list[tuple[mi.Field, T]]) -> T:
        raise NotImplementedError


def walk(t: mi.Type, make: Maker[T], field: str = "") -> T:
    """``make``'s value for the type ``t`` (from ``msgspec.inspect.type_info``)."""
    match t:
        case mi.IntType():
            lo = t.ge if t.ge is not None else t.gt + 1 if t.gt is not None else INT64[0]
            hi = t.le if t.le is not None else t.lt - 1 if t.lt is not None else INT64[1]
            return make.integer(lo, hi)
        case mi.FloatType():
            return make.floating(
                t.ge if t.ge is not None else t.gt,
                t.le if t.le is not None else t.lt,
                exclude_min=t.ge is None and t.gt is not None,
                exclude_max=t.le is None and t.lt is not None,
            )
        case mi.BoolType():
            return make.boolean()
        case mi.StrType():
            return make.text(t.min_length or 0, t.max_length, field)
        case mi.BytesType():
            return make.binary(t.min_length or 0, t.max_length, field)
        case mi.NoneType():
            return make.none()
        case mi.AnyType():
            return make.anything()
        case mi.ListType():
            return make.sequence(walk(t.item_type, make, field), t.min_length or 0, t.max_length)
        case mi.TupleType():
            return make.fixed([walk(i, make, field) for i in t.item_types])
        case mi.DictType():
            key, value = walk(t.key_type, make, field + "{}"), walk(t.value_type, make, field)
            return make.mapping(key, value, t.min_length or 0, t.max_length)
        case mi.UnionType():
            return make.one_of([walk(u, make, field) for u in t.types])
        case mi.StructType():
            return make.struct(t, [(f, walk(f.type, make, f.encode_name)) for f in t.fields])
    raise AssertionError(f"no maker for {t!r}")


# ------------------------------------------------------------------ hypothesis
_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(*INT64) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)

Strategy = st.SearchStrategy[Any]


def _size(lo: int, hi: int | None, most: int) -> dict[str, int]:
    return {"min_size": lo, "max_size": max(lo, most if hi is None else min(hi, most))}


class Strategies(Maker[Strategy]):
    """Hypothesis strategies: structs as instances of their class, every field drawn."""

    def integer(self, lo: int, hi: int) -> Strategy:
        return st.integers(lo, hi)

    def floating(
        self, lo: float | None, hi: float | None, exclude_min: bool, exclude_max: bool
    ) -> Strategy:
        return st.floats(
            min_value=lo,
            max_value=hi,
            exclude_min=exclude_min,
            exclude_max=exclude_max,
            allow_nan=False,
            allow_infinity=False,
        )

    def boolean(self) -> Strategy:
        return st.booleans()

    def text(self, lo: int, hi: int | None, field: str) -> Strategy:
        return st.text(**_size(lo, hi, 12))

    def binary(self, lo: int, hi: int | None, field: str) -> Strategy:
        return st.binary(min_size=lo, max_size=hi if hi is not None else max(lo, 40))

    def none(self) -> Strategy:
        return st.none()

    def anything(self) -> Strategy:
        return _ANY

    def sequence(self, item: Strategy, lo: int, hi: int | None) -> Strategy:
        return st.lists(item, **_size(lo, hi, 4))

    def fixed(self, items: list[Strategy]) -> Strategy:
        return st.tuples(*items)

    def mapping(self, key: Strategy, value: Strategy, lo: int, hi: int | None) -> Strategy:
        return st.dictionaries(key, value, **_size(lo, hi, 3))

    def one_of(self, options: list[Strategy]) -> Strategy:
        return st.one_of(options)

    def struct(self, t: mi.StructType, fields: list[tuple[mi.Field, Strategy]]) -> Strategy:
        kwargs = st.fixed_dictionaries({f.name: s for f, s in fields})
        return kwargs.map(lambda kw: t.cls(**kw))


def strategy(t: mi.Type) -> Strategy:
    """A hypothesis strategy for the type ``t``, bounds included."""
    return walk(t, Strategies())


def message(cls: type[Any]) -> Strategy:
    """A hypothesis strategy for instances of the message (or record) type ``cls``."""
    return strategy(mi.type_info(cls))
