"""A node applies each serial once, in order (SEER checkSerial), by plain calls."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from corral.core.serials import Applied


def test_a_node_applies_each_serial_once_in_order() -> None:
    node = Applied(last=2)
    assert node.offer(2, "old") == []  # already applied before
    assert node.offer(4, "four", expected={3, 4}) == []  # 3 is for us and not here yet
    assert node.offer(3, "three", expected={3, 4}) == ["three", "four"]
    assert node.offer(4, "four") == []  # a duplicate
    assert node.last == 4
    node.skip(6)  # 5..6 expired for this node
    assert node.offer(7, "seven") == ["seven"]


@given(st.lists(st.integers(1, 30), min_size=1, max_size=80), st.randoms())
def test_any_arrival_order_applies_exactly_once_in_order(
    arrivals: list[int], rnd: random.Random
) -> None:
    serials = sorted(set(arrivals))
    stream = arrivals + serials  # every serial arrives at least once, some many times
    rnd.shuffle(stream)
    node = Applied()
    applied: list[object] = []
    for serial in stream:
        applied += node.offer(serial, serial, expected=set(serials))
    assert applied == serials
