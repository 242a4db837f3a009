"""The small collections a task keeps (tuples up to SMALL items, then sets) act as sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from regrow.core.scheduler_state import EMPTY, SMALL, Bag, added, discarded


class Item:
    """Compared by identity, like the core's task, worker and client states."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Item({self.n})"

    def __hash__(self) -> int:
        return hash(self.n)


ITEMS = [Item(i) for i in range(3 * SMALL)]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, len(ITEMS) - 1)), max_size=200))
def test_bag_behaves_like_a_set(ops: list[tuple[bool, int]]) -> None:
    bag: Bag[Item] = EMPTY
    ref: set[Item] = set()
    for add, i in ops:
        if add:
            bag = added(bag, ITEMS[i])
            ref.add(ITEMS[i])
        else:
            bag = discarded(bag, ITEMS[i])
            ref.discard(ITEMS[i])
        assert len(bag) == len(ref) and set(bag) == ref
        assert all(x in bag for x in ref)
        if not ref:
            assert bag is EMPTY or isinstance(bag, tuple)
        if isinstance(bag, tuple):
            assert len(bag) <= SMALL


def test_small_bags_are_tuples_and_large_ones_sets() -> None:
    bag: Bag[Item] = EMPTY
    for item in ITEMS[:SMALL]:
        bag = added(bag, item)
    assert isinstance(bag, tuple) and list(bag) == ITEMS[:SMALL]  # insertion order
    bag = added(bag, ITEMS[SMALL])
    assert isinstance(bag, set) and len(bag) == SMALL + 1
    for item in ITEMS[: SMALL + 1]:
        bag = discarded(bag, item)
    assert bag is EMPTY
