"""The scheduler's adaptive prefetch, without I/O: short tasks fill the prefetch, long ones
take a whole worker slot each (plain calls and a property test, a fake clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.scheduler import Scheduler
from corral.core.taskstate import TaskInstance, TaskStatus

S = TaskStatus


def inst(ident: int, key: str = "k") -> TaskInstance:
    return TaskInstance(id=ident, key=key)


def sched(prefetch: int = 16, **nodes: int) -> Scheduler:
    s = Scheduler(prefetch=prefetch, grace=2.0, orphan_grace=5.0, prefetch_target=0.005)
    for name, slots in nodes.items():
        s.node_hello(name, f"{name}-1", ["short", "long"], [], slots, [], 0.0)
    return s


def held(s: Scheduler, node: str) -> list[TaskInstance]:
    return [s.active[i] for i in s.nodes[node].leases.values()]


def test_a_key_never_measured_gets_one_per_slot_and_a_short_one_the_whole_prefetch() -> None:
    s = sched(a=2)
    s.queue([inst(i, "short") for i in range(1, 101)], 0.0)
    assert len(held(s, "a")) == 2  # nothing known about it yet: one per slot
    s.finish(held(s, "a")[0].lease, "complete", 0.1, seconds=0.0002)
    assert s.key_prefetch("short") == 16
    assert len(held(s, "a")) == 2 * 16  # 0.2 ms runs: the whole ceiling per slot


def test_the_prefetch_follows_the_mean_run_time_between_one_and_the_ceiling() -> None:
    s = sched(prefetch=8)
    for seconds, expected in [(0.0001, 8), (0.001, 5), (0.0025, 2), (0.005, 1), (25.0, 1)]:
        s.run_time.clear()
        s.measured("k", seconds)
        assert s.key_prefetch("k") == expected, seconds
    s.measured("k", -1.0)  # not measured (an old node): the mean is unchanged
    s.measured("k", float("nan"))
    assert s.run_time["k"] == 25.0
    for _ in range(30):  # the key became short: the mean follows within a few dozen runs
        s.measured("k", 0.0001)
    assert s.key_prefetch("k") == 8


def test_long_tasks_take_one_per_slot_and_spread_over_nodes() -> None:
    s = sched(a=2, b=2)
    s.measured("long", 25.0)
    s.queue([inst(i, "long") for i in range(1, 7)], 0.0)
    assert len(held(s, "a")) == len(held(s, "b")) == 2  # none waits behind another
    assert sum(1 for i in s.active.values() if i.status == S.QUEUED) == 2
    s.finish(held(s, "a")[0].lease, "complete", 25.0, seconds=25.0)
    assert len(held(s, "a")) == 2 and len(held(s, "b")) == 2  # the freed slot took the next


def test_a_short_task_never_waits_in_a_pipe_behind_long_ones() -> None:
    s = sched(a=1, b=1)
    s.measured("long", 25.0)
    s.measured("short", 0.0001)
    s.queue([inst(1, "long")], 0.0)
    s.queue([inst(i, "short") for i in range(2, 40)], 0.0)
    keys = {n: {i.key for i in held(s, n)} for n in ("a", "b")}
    assert sorted(map(sorted, keys.values())) == [["long"], ["short"]]
    assert len(held(s, "a" if keys["a"] == {"short"} else "b")) == 16


EVENT = st.one_of(
    st.tuples(st.just("queue"), st.sampled_from(["short", "long"]), st.integers(1, 30)),
    st.tuples(st.just("finish"), st.integers(0, 200), st.floats(0.0, 30.0)),
    st.tuples(st.just("hello"), st.sampled_from(["a", "b", "c"]), st.integers(1, 4)),
    st.tuples(st.just("gone"), st.sampled_from(["a", "b", "c"]), st.just(0)),
)


@given(st.integers(1, 16), st.lists(EVENT, max_size=40))
@settings(max_examples=200, deadline=None)
def test_a_node_takes_work_while_it_fits_and_never_more(
    ceiling: int, events: list[tuple[str, object, object]]
) -> None:
    """After every event: a node that got runs holds no more than its slots' worth of shares,
    no node that a queued instance would fit is left with it queued, every key's prefetch is
    between 1 and the ceiling, and no instance is dropped."""
    s = Scheduler(prefetch=ceiling, grace=2.0, orphan_grace=5.0)
    s.node_hello("z", "z-1", ["short", "long"], [], 1, [], 0.0)
    next_id, now, queued = 1, 0.0, set[int]()
    for kind, a, b in events:
        now += 1.0
        if kind == "queue":
            assert isinstance(a, str) and isinstance(b, int)
            s.queue([inst(i, a) for i in range(next_id, next_id + b)], now)
            queued.update(range(next_id, next_id + b))
            next_id += b
        elif kind == "finish":
            assert isinstance(a, int) and isinstance(b, float)
            leases = sorted(s._leases)
            if leases:
                lease = leases[a % len(leases)]
                key = s.active[s._leases[lease]].key
                seconds = b if key == "long" else b / 10_000
                done = s.finish(lease, "complete", now, seconds=seconds)
                assert done is not None
                queued.discard(done.id)
        elif kind == "hello":
            assert isinstance(a, str) and isinstance(b, int)
            s.node_hello(a, f"{a}-1", ["short", "long"], [], b, [], now)
        else:
            assert isinstance(a, str)
            s.node_gone(a, now, "DOWN")
        _, runs, _, finished = s.take()
        queued.difference_update(i.id for i in finished)  # (failed after max_attempts lost)
        for key in ("short", "long"):
            assert 1 <= s.key_prefetch(key) <= ceiling
        waiting = {i.key for i in s.active.values() if i.status == S.QUEUED}
        for node in s.nodes.values():
            load = sum(s.weight(i.key) for i in held(s, node.name))
            if node.name in runs:  # (a repeated hello with fewer slots may leave more)
                assert load <= node.slots + 1e-6, (node, load)
                assert len(node.leases) <= node.capacity
            for key in waiting:
                assert node.free <= 0 or load + s.weight(key) > node.slots + 1e-6, (node, key)
        assert queued == set(s.active), "an instance was dropped or invented"
