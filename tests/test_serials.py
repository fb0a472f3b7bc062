"""Serials, catch-up and de-duplication (SEER checkSerial / retireSerials) by plain calls."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.serials import Applied, SerialLog


def test_serials_increase_and_survive_a_restart() -> None:
    log = SerialLog()
    assert [log.issue(frozenset({"a"}), now=0).serial for _ in range(3)] == [1, 2, 3]
    restarted = SerialLog(last=log.last)
    assert restarted.issue(frozenset({"a"}), now=1).serial == 4


def test_catch_up_delivers_what_a_node_missed_in_order_and_expires_the_old() -> None:
    log = SerialLog()
    log.issue(frozenset({"a", "b"}), now=0, retire_after=120)  # 1
    log.issue(frozenset({"b"}), now=10)  # 2: not for a
    log.issue(frozenset({"a"}), now=100, retire_after=30)  # 3
    log.issue(frozenset({"a"}), now=120)  # 4
    back = log.catch_up("a", applied=0, now=125)
    assert back.deliver == [3, 4] and back.expired == [1]
    assert log.catch_up("a", applied=3, now=125).deliver == [4]
    assert log.catch_up("a", applied=0, now=131).expired == [1, 3]  # 3's window was 30 s
    assert log.catch_up("b", applied=0, now=10).deliver == [1, 2]


def test_negative_retire_window_is_refused() -> None:
    with pytest.raises(ValueError, match="retire_after"):
        SerialLog().issue(frozenset(), now=0, retire_after=-1)


def test_records_are_forgotten_after_the_horizon() -> None:
    log = SerialLog()
    log.issue(frozenset({"a"}), now=0)
    log.issue(frozenset({"a"}), now=50)
    assert log.forget(now=100, horizon=60) == [1]
    assert sorted(log.commands) == [2]


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
