"""The registry core through plain calls: no bus, no clock but the numbers we pass."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.registry import TRANSITIONS, IllegalTransition, NodeStatus, Refusal, Registry
from corral.records import NodeRecord
from corral.wire import Join


def info(instance: str = "i1", **kw: object) -> Join:
    return Join(instance=instance, host="h", pid=7, **kw)  # type: ignore[arg-type]


def test_join_then_heartbeats_keep_a_node_up() -> None:
    reg = Registry(down_after=3)
    changes = reg.join("a", info(labels=("gpu",)), now=100)
    assert [(c.old, c.new) for c in changes] == [("", "UP")]
    for t in (101, 102, 103, 104):
        assert reg.heartbeat("a", "i1", last_serial=t, now=t) == []
        assert reg.expire(t + 2.9) == []
    assert reg.nodes["a"].last_serial == 104 and reg.nodes["a"].labels == ("gpu",)


def test_silence_longer_than_down_after_marks_down_and_a_heartbeat_brings_it_back() -> None:
    reg = Registry(down_after=3)
    reg.join("a", info(), now=0)
    assert reg.expire(3.0) == []  # exactly at the limit: still UP
    (down,) = reg.expire(3.01)
    assert (down.old, down.new, down.at) == ("UP", "DOWN", 3.01) and "silent" in down.reason
    assert reg.expire(10) == []  # DOWN once, not again
    (up,) = reg.heartbeat("a", "i1", 0, now=11) or []
    assert (up.old, up.new) == ("DOWN", "UP")


def test_unknown_instance_heartbeat_asks_for_a_join() -> None:
    reg = Registry()
    assert reg.heartbeat("ghost", "x", 0, now=1) is None
    reg.join("a", info("i1"), now=0)
    assert reg.heartbeat("a", "other", 0, now=1) is None


def test_a_holder_that_speaks_keeps_its_name_and_the_newcomer_is_told_who() -> None:
    reg = Registry(down_after=3)
    reg.join("a", info("i1"), now=0)
    first = reg.join("a", info("i2"), now=1)
    assert isinstance(first, Refusal) and first.code == "retry"
    assert first.retry_after == pytest.approx(2.1)
    assert reg.heartbeat("a", "i1", 0, now=1.5) == []  # the holder is alive
    refusal = reg.join("a", info("i2"), now=3.1)
    assert isinstance(refusal, Refusal) and refusal.code == "duplicate-name"
    assert "pid 7" in refusal.reason and "host h" in refusal.reason
    assert reg.nodes["a"].instance == "i1"


def test_a_crashed_holder_gives_its_name_to_a_quick_restart() -> None:
    reg = Registry(down_after=3)
    reg.join("a", info("i1"), now=0)
    reg.heartbeat("a", "i1", 0, now=1)  # then it crashes
    retry = reg.join("a", info("i2"), now=1.5)
    assert isinstance(retry, Refusal) and retry.code == "retry"
    assert retry.retry_after == pytest.approx(2.6)
    assert reg.join("a", info("i2"), now=4.1) == []  # silent past down_after: name moves
    assert reg.nodes["a"].instance == "i2"


def test_restored_holder_gets_down_after_to_reattach_before_the_name_moves() -> None:
    reg = Registry(down_after=3)
    restored = NodeRecord(name="a", status="UP", since=0, last_seen=0, joined_at=0, instance="old")
    reg.load([restored], now=100)
    refusal = reg.join("a", info("new"), now=101)
    assert isinstance(refusal, Refusal) and refusal.code == "retry"
    assert refusal.retry_after == pytest.approx(2.1)
    # The old instance speaks: the name is proven held, the newcomer is a duplicate.
    assert reg.heartbeat("a", "old", 0, now=101.5) == []
    refusal = reg.join("a", info("new"), now=102)
    assert isinstance(refusal, Refusal) and refusal.code == "duplicate-name"


def test_restored_up_nodes_are_not_marked_down_for_the_controllers_absence() -> None:
    reg = Registry(down_after=3)
    reg.load([NodeRecord(name="a", status="UP", since=0, last_seen=0, joined_at=0)], now=1000)
    assert reg.expire(1002) == []
    assert [c.new for c in reg.expire(1003.5)] == ["DOWN"]


def test_leave_and_revoke() -> None:
    reg = Registry()
    reg.join("a", info(), now=0)
    assert reg.leave("a", "not-me", now=1, reason="x") == []
    assert [c.new for c in reg.leave("a", "i1", now=1, reason="stopped")] == ["LEFT"]
    assert reg.heartbeat("a", "i1", 0, now=2) is None  # a LEFT node must join again
    assert [c.new for c in reg.revoke("a", now=3)] == ["REVOKED"]
    assert reg.revoke("a", now=4) == []
    assert [c.new for c in reg.join("a", info("i9"), now=5)] == ["UP"]


def test_dirty_records_are_taken_once() -> None:
    reg = Registry()
    reg.join("a", info(), now=0)
    assert [r.name for r in reg.take_dirty()] == ["a"]
    assert reg.take_dirty() == []
    reg.heartbeat("a", "i1", 5, now=1)  # heartbeats alone are persisted periodically
    assert reg.take_dirty() == []


def test_illegal_transition_raises() -> None:
    reg = Registry()
    reg.nodes["a"] = NodeRecord(name="a", status="DOWN", since=0, last_seen=0, joined_at=0)
    with pytest.raises(IllegalTransition):
        reg._move(reg.nodes["a"], NodeStatus.LEFT, 1, "x")


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["join", "hb", "leave", "revoke", "expire"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["i1", "i2"]),
        st.floats(min_value=0, max_value=2),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(EVENTS)
def test_any_event_sequence_only_makes_legal_moves(events: list[tuple]) -> None:  # type: ignore[type-arg]
    reg = Registry(down_after=1)
    now = 0.0
    for kind, name, instance, dt in events:
        now += dt
        if kind == "join":
            out = reg.join(name, info(instance), now)
            changes = [] if isinstance(out, Refusal) else out
        elif kind == "hb":
            changes = reg.heartbeat(name, instance, 0, now) or []
        elif kind == "leave":
            changes = reg.leave(name, instance, now, "bye")
        elif kind == "revoke":
            changes = reg.revoke(name, now)
        else:
            changes = reg.expire(now)
        for c in changes:
            assert (NodeStatus(c.old) if c.old else None, NodeStatus(c.new)) in TRANSITIONS
        for node in reg.nodes.values():
            assert node.status in NodeStatus.__members__
            if kind == "expire" and node.status == "UP":
                # Right after expire(), every UP node was heard from within down_after.
                assert now - node.last_seen <= reg.down_after


def test_left_before_names_the_nodes_gone_longer_than_the_cutoff() -> None:
    reg = Registry(down_after=3.0)
    for name in ("a", "b", "c"):
        reg.join(name, Join(instance=name), now=0.0)
    reg.leave("a", "a", now=10.0, reason="stopped")
    reg.leave("b", "b", now=20.0, reason="stopped")
    assert reg.left_before(15.0) == ["a"]
    assert reg.left_before(25.0) == ["a", "b"]  # c is UP: never due
    reg.join("a", Join(instance="a2"), now=30.0)  # back: no longer due
    assert reg.left_before(100.0) == ["b"]
