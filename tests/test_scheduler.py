"""The scheduler core and the task state machine, without I/O (plain calls, a fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.scheduler import Scheduler, Stop
from corral.core.taskstate import TERMINAL, TRANSITIONS, TaskInstance, TaskStatus, move
from corral.errors import IllegalTransition, NotFound, UnknownTask

S = TaskStatus


def inst(
    ident: int, key: str = "k", priority: int = 5, labels: tuple[str, ...] = ()
) -> TaskInstance:
    return TaskInstance(id=ident, key=key, priority=priority, labels=list(labels))


def sched(prefetch: int = 1, **nodes: int) -> Scheduler:
    s = Scheduler(prefetch=prefetch, grace=2.0, orphan_grace=5.0)
    for name, slots in nodes.items():
        s.node_hello(name, f"{name}-1", ["k", "j"], [], slots, [], 0.0)
    return s


def runs(s: Scheduler) -> dict[str, list[int]]:
    _, out, _, _ = s.take()
    return {node: [i.id for i in insts] for node, insts in out.items()}


# --- state machine --------------------------------------------------------------------------


def test_every_pair_outside_the_table_raises() -> None:
    for old in S:
        for new in S:
            i = TaskInstance(id=1, key="k", status=old.value)
            if new in TRANSITIONS[old]:
                move(i, new)
                assert i.status == new.value and type(i.status) is str
            else:
                with pytest.raises(IllegalTransition, match=f"from {old} to {new}"):
                    move(i, new)
    assert all(not TRANSITIONS[t] for t in TERMINAL)


@given(st.lists(st.sampled_from(list(S)), max_size=12))
def test_any_walk_either_follows_the_table_or_raises_and_changes_nothing(walk: list[S]) -> None:
    i = TaskInstance(id=1, key="k")
    for new in walk:
        before = i.status
        try:
            move(i, new)
        except IllegalTransition:
            assert i.status == before
        else:
            assert new in TRANSITIONS[S(before)]


# --- queueing and matching ------------------------------------------------------------------


def test_fifo_within_priority_and_lower_priority_first() -> None:
    s = sched()
    s.known_keys.add("k")  # offered before, by a node that has gone
    s.queue([inst(1), inst(2, priority=1), inst(3), inst(4, priority=1)], 0.0)
    s.node_hello("n", "n-1", ["k"], [], 4, [], 0.0)
    assert runs(s) == {"n": [2, 4, 1, 3]}


def test_an_unknown_key_is_refused_and_nothing_is_queued() -> None:
    s = sched(n=1)
    with pytest.raises(UnknownTask, match="no node offers task 'x'"):
        s.queue([inst(1), inst(2, key="x")], 0.0)
    assert s.active == {}


def test_keys_and_labels_decide_which_node_runs_what() -> None:
    s = Scheduler(prefetch=1)
    s.node_hello("cpu", "c", ["k"], [], 1, [], 0.0)
    s.node_hello("gpu", "g", ["k"], ["gpu"], 1, [], 0.0)
    s.take()
    s.queue([inst(1, labels=("gpu",)), inst(2, labels=("gpu",))], 0.0)
    assert runs(s) == {"gpu": [1]}  # the cpu node lacks the label; 2 waits
    s.finish(s.active[1].lease, "complete", 1.0, result=b"\x01")
    assert runs(s) == {"gpu": [2]}


def test_capacity_is_slots_times_prefetch_and_a_batch_spreads_over_nodes() -> None:
    s = sched(prefetch=3, a=2, b=2)
    s.measured("k", 0.0)  # short: the whole prefetch (tests/test_scheduler_prefetch.py)
    s.queue([inst(i) for i in range(1, 15)], 0.0)
    out = runs(s)
    assert len(out["a"]) == len(out["b"]) == 6
    assert sum(1 for i in s.active.values() if i.status == S.QUEUED) == 2


def test_six_tasks_on_three_idle_two_slot_nodes_run_on_all_three() -> None:
    s = sched(prefetch=4, a=2, b=2, c=2)
    s.queue([inst(i) for i in range(1, 7)], 0.0)
    assert {node: len(ids) for node, ids in runs(s).items()} == {"a": 2, "b": 2, "c": 2}


@settings(max_examples=200)
@given(
    st.lists(st.integers(1, 4), min_size=1, max_size=5),
    st.lists(st.integers(1, 12), min_size=1, max_size=4),
    st.integers(1, 4),
)
def test_a_batch_fills_idle_slots_everywhere_before_any_prefetch(
    slots: list[int], batches: list[int], prefetch: int
) -> None:
    """No node holds more than its slots while another node has an idle slot."""
    s = Scheduler(prefetch=prefetch)
    s.measured("k", 1e-6)  # a short task: its prefetch is the whole ceiling
    for n, count in enumerate(slots):
        s.node_hello(f"n{n}", f"n{n}-1", ["k"], [], count, [], 0.0)
    next_id = 1
    for size in batches:
        s.queue([inst(next_id + i) for i in range(size)], 0.0)
        next_id += size
        nodes = list(s.nodes.values())
        if any(len(n.leases) > n.slots for n in nodes):
            assert all(len(n.leases) >= n.slots for n in nodes)
        assert all(len(n.leases) <= n.capacity for n in nodes)
        queued = sum(1 for i in s.active.values() if i.status == S.QUEUED)
        assert queued == 0 or all(n.free == 0 for n in nodes)


def test_an_instance_is_assigned_until_a_worker_starts_it() -> None:
    s = sched(prefetch=2, a=1)
    s.measured("k", 1e-6)  # short: prefetched two to the slot
    s.queue([inst(1), inst(2)], 0.0)
    one, two = s.active[1], s.active[2]
    assert (one.status, one.started_at, two.status, two.started_at) == (
        S.ASSIGNED,
        None,
        S.ASSIGNED,
        None,
    )
    assert one.history[-1]["assigned"] == 0.0 and "started" not in one.history[-1]
    s.started(one.lease, 0, 2.0, reporter="a")
    assert (one.status, one.started_at, one.worker) == (S.RUNNING, 2.0, 0)
    assert one.history[-1]["started"] == 2.0
    s.started(one.lease, 0, 3.0, reporter="a")  # said again: the first start stands
    assert one.started_at == 2.0
    s.finish(one.lease, "complete", 4.0, result=b"\xc0")
    # A node that never says "started" (an older one): the result starts and ends it.
    assert s.finish(two.lease, "complete", 5.0, result=b"\xc0") is two
    assert (two.status, two.started_at) == (S.COMPLETE, 5.0)


def test_a_start_is_never_before_the_assignment() -> None:
    s = sched(a=1)
    s.queue([inst(1)], 10.0)
    one = s.active[1]
    s.started(one.lease, 0, 9.0, reporter="a")  # the node's "ago" overshot
    assert one.started_at == 10.0 == one.history[-1]["started"]


def test_an_assigned_instance_can_be_cancelled_or_lost() -> None:
    s = sched(prefetch=2, a=1)
    s.measured("k", 1e-6)  # short: prefetched two to the slot
    s.queue([inst(1), inst(2)], 0.0)
    one, two = s.active[1], s.active[2]
    s.take()
    s.cancel(2, 1.0)
    assert two.status == S.CANCEL_REQUESTED and s.take()[2] == [Stop("a", two.lease, False)]
    s.node_gone("a", 2.0, "DOWN")
    assert (one.status, one.lease, two.status) == (S.QUEUED, "", S.CANCELLED)


# --- leases and attempts --------------------------------------------------------------------


def test_a_dead_node_loses_its_leases_and_the_instance_runs_elsewhere() -> None:
    s = sched(a=1)
    s.queue([inst(1)], 0.0)
    first = s.active[1].lease
    s.node_hello("b", "b-1", ["k"], [], 1, [], 1.0)
    s.take()
    s.node_gone("a", 2.0, "DOWN")
    i = s.active[1]
    assert (i.status, i.node, i.attempts) == (S.ASSIGNED, "b", 2)
    assert i.history[0]["outcome"] == "lost" and i.history[1]["node"] == "b"
    assert s.finish(first, "complete", 3.0) is None  # the old lease is stale
    assert s.finish(i.lease, "complete", 3.0, result=b"\xc0") is i
    assert i.status == S.COMPLETE


def test_max_attempts_lost_leases_fail_the_instance() -> None:
    s = sched(a=1)
    t = inst(1)
    t.max_attempts = 2
    s.queue([t], 0.0)
    for n in range(2):
        s.node_gone("a", float(n), "DOWN")
        s.node_hello("a", f"a-{n + 2}", ["k"], [], 1, [], float(n))
    assert t.status == S.FAILED and "lost its worker 2 times" in t.error
    assert [h["outcome"] for h in t.history] == ["lost", "lost"]


def test_a_repeated_hello_does_not_drop_leases_given_since() -> None:
    s = sched(a=2)
    s.queue([inst(1), inst(2)], 0.0)
    s.node_hello("a", "a-1", ["k"], [], 2, [], 1.0)  # a retry, written before the runs
    assert [s.active[i].attempts for i in (1, 2)] == [1, 1]


def test_a_node_back_after_being_dropped_keeps_only_the_leases_it_lists() -> None:
    persisted = [
        TaskInstance(id=1, key="k", status="running", node="a", lease="x.1", attempts=1),
        TaskInstance(id=2, key="k", status="running", node="a", lease="x.2", attempts=1),
    ]
    s = Scheduler(prefetch=1, orphan_grace=5.0)
    s.load(persisted, 0.0)
    s.node_hello("a", "a-1", ["k"], [], 2, ["x.1"], 1.0)
    assert s.active[1].attempts == 1 and s.active[1].lease == "x.1"
    assert s.active[2].attempts == 2  # lost, then given out again


def test_after_a_controller_restart_orphans_wait_for_their_node() -> None:
    before = sched(a=2)
    before.queue([inst(1), inst(2), inst(3)], 0.0)
    persisted = [
        TaskInstance(**{f: getattr(i, f) for f in TaskInstance.__struct_fields__})
        for i in before.active.values()
    ]
    s = Scheduler(prefetch=1, orphan_grace=5.0)
    s.load(persisted, 10.0)
    held = [i.lease for i in persisted if i.lease]
    s.node_hello("a", "a-1", ["k"], [], 2, held[:1], 11.0)
    assert s.active[1].attempts == 1  # claimed
    s.tick(16.0)
    assert all(i.status in (S.RUNNING, S.ASSIGNED, S.QUEUED) for i in s.active.values())
    assert sorted(i.id for i in s.active.values()) == [1, 2, 3]


def test_orphans_nobody_claims_are_requeued_after_the_grace() -> None:
    s = Scheduler(prefetch=1, orphan_grace=5.0)
    t = TaskInstance(id=7, key="k", status="running", node="gone", lease="x.1", attempts=1)
    s.load([t], 0.0)
    s.tick(4.9)
    assert t.status == S.RUNNING
    s.tick(5.0)
    assert t.status == S.QUEUED and t.history == [] and t.lease == ""


# --- cancellation ---------------------------------------------------------------------------


def test_cancel_queued_goes_through_cancel_requested_to_cancelled() -> None:
    s = sched()
    s.known_keys.add("k")
    s.queue([inst(1)], 0.0)
    t = s.cancel(1, 1.0)
    assert t.status == S.CANCELLED and t.finished_at == 1.0
    changed, _, stops, finished = s.take()
    assert finished == [t] and stops == [] and t in changed
    with pytest.raises(NotFound):
        s.cancel(1, 2.0)


def test_cancel_running_asks_to_stop_and_force_kills_after_the_grace() -> None:
    s = sched(a=1)
    s.queue([inst(1)], 0.0)
    lease = s.active[1].lease
    s.take()
    t = s.cancel(1, 1.0, force=True)
    assert t.status == S.CANCEL_REQUESTED
    assert s.take()[2] == [Stop("a", lease, False)]
    s.tick(2.9)
    assert s.take()[2] == []
    s.tick(3.0)
    assert s.take()[2] == [Stop("a", lease, True)]
    s.finish(lease, "stopped", 3.1, error="killed")
    assert t.status == S.CANCELLED


def test_a_task_that_completes_despite_a_cancel_is_complete() -> None:
    s = sched(a=1)
    s.queue([inst(1)], 0.0)
    s.cancel(1, 1.0)
    t = s.finish(s.active[1].lease, "complete", 2.0, result=b"\x01")
    assert t is not None and t.status == S.COMPLETE


def test_a_cancel_requested_instance_whose_node_dies_is_cancelled() -> None:
    s = sched(a=1)
    s.queue([inst(1)], 0.0)
    t = s.cancel(1, 1.0)
    s.node_gone("a", 2.0, "DOWN")
    assert t.status == S.CANCELLED


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["queue", "finish", "gone", "hello", "cancel", "tick", "unsent"]),
            st.integers(0, 30),
        ),
        max_size=60,
    )
)
def test_no_instance_is_ever_dropped(events: list[tuple[str, int]]) -> None:
    """Whatever happens, every queued instance is active or has reached a terminal status."""
    s = Scheduler(prefetch=2, grace=1.0, orphan_grace=1.0)
    s.node_hello("a", "a0", ["k"], [], 2, [], 0.0)
    seen: dict[int, TaskInstance] = {}
    now, next_id = 0.0, 1
    for kind, n in events:
        now += 0.5
        if kind == "queue":
            batch = [inst(next_id + i) for i in range(n % 4 + 1)]
            next_id += len(batch)
            s.queue(batch, now)
            seen.update({i.id: i for i in batch})
        elif kind == "finish" and s.active:
            i = list(s.active.values())[n % len(s.active)]
            if i.lease:
                s.finish(i.lease, ["complete", "failed", "stopped"][n % 3], now)
        elif kind == "gone":
            s.node_gone("a", now, "DOWN")
        elif kind == "hello":
            s.node_hello("a", f"a{n % 2}", ["k"], [], 2, [], now)
        elif kind == "cancel" and s.active:
            s.cancel(list(s.active)[n % len(s.active)], now, force=bool(n % 2))
        elif kind == "unsent":
            # The publish of this pump's runs failed (some of them, or also stale leases).
            _, out, _, _ = s.take()
            leases = [i.lease for insts in out.values() for i in insts][: n % 4]
            s.unsent([*leases, "stale.1"], now, "ConnectionClosedError", permanent=n % 5 == 0)
        else:
            s.tick(now)
        s.take()
        for node in s.nodes.values():  # a slot is held only by the instance holding its lease
            assert len(node.leases) <= node.capacity
            assert all(s.active[i].lease == lease for lease, i in node.leases.items())
    for ident, i in seen.items():
        assert (ident in s.active) != (i.status in TERMINAL)
        assert i.attempts <= i.max_attempts
        assert (i.status == S.QUEUED) == (ident in s.active and not i.lease)


def test_a_persisted_cancel_survives_a_controller_restart() -> None:
    queued = TaskInstance(id=1, key="k", status="cancel-requested")  # asked while queued
    running = TaskInstance(
        id=2, key="k", status="cancel-requested", node="a", lease="old.1", attempts=1
    )
    s = Scheduler(prefetch=1, orphan_grace=5.0)
    s.load([queued, running], 0.0)
    assert queued.status == S.CANCELLED
    s.node_hello("a", "a-1", ["k"], [], 1, ["old.1"], 1.0)
    assert s.take()[2] == [Stop("a", "old.1", False)]  # the stop is sent again
    s.finish("old.1", "stopped", 2.0)
    assert running.status == S.CANCELLED


def test_orphans_of_a_node_that_is_gone_are_requeued_at_once() -> None:
    s = Scheduler(prefetch=1, orphan_grace=30.0)
    t = TaskInstance(id=7, key="k", status="running", node="gone", lease="x.1", attempts=1)
    s.load([t], 0.0)
    assert s.orphan_nodes() == {"gone"}
    s.lose_orphans("gone", 1.0, "is DOWN")
    assert t.status == S.QUEUED and s.orphan_nodes() == set()


# --- ownership: unguessable leases, held by one node ----------------------------------------


def test_leases_are_unique_random_and_at_least_96_bits() -> None:
    import base64
    import math

    from corral.core.scheduler import LEASE_BYTES, new_lease

    assert LEASE_BYTES * 8 >= 96
    leases = [new_lease() for _ in range(20_000)]
    assert len(set(leases)) == len(leases)
    for lease in leases[:100]:
        assert len(base64.urlsafe_b64decode(lease + "==")) == LEASE_BYTES
    # Nothing sequential to guess from: characters spread over the whole alphabet (the
    # last one carries only the 128th bit's remainder).
    chars = "".join(lease[:-1] for lease in leases)
    counts = [chars.count(c) for c in set(chars)]
    assert len(counts) == 64 and max(counts) < 1.5 * len(chars) / 64
    assert math.log2(64) * (len(leases[0]) - 1) >= 96


@given(st.lists(st.integers(0, 3), min_size=1, max_size=40))
@settings(max_examples=50)
def test_a_lease_drawn_again_is_never_given_twice(draws: list[int]) -> None:
    """Even a factory that repeats itself never puts two instances under one lease."""
    pool = iter(draws + list(range(100, 200)))
    s = Scheduler(prefetch=50, lease_factory=lambda: f"l{next(pool)}")
    s.node_hello("a", "a-1", ["k"], [], 1, [], 0.0)
    s.measured("k", 0.0)  # short: the node takes all 20
    s.queue([inst(i) for i in range(1, 21)], 0.0)
    leases = [i.lease for i in s.active.values()]
    assert len(set(leases)) == len(leases) == 20


def test_only_the_holder_of_a_lease_finishes_it_or_reports_progress() -> None:
    s = sched(a=1, b=1)
    s.queue([inst(1)], 0.0)
    i = s.active[1]
    holder, other = i.node, "b" if i.node == "a" else "a"
    assert s.foreign(i.lease, other) == holder
    assert s.foreign(i.lease, holder) is None and s.foreign("nobody-holds-it", other) is None
    s.progress(i.lease, 90.0, "forged", 3, reporter=other)
    assert (i.progress, i.message) == (0.0, "")
    assert s.finish(i.lease, "complete", 1.0, result=b"\x01", reporter=other) is None
    assert i.status == S.ASSIGNED and i.lease in s.nodes[holder].leases
    s.started(i.lease, 0, 1.5, reporter=other)  # forged too: still not started
    assert (i.status, i.started_at) == (S.ASSIGNED, None)
    s.progress(i.lease, 40.0, "real", 0, reporter=holder, now=1.5)
    assert (i.status, i.started_at) == (S.RUNNING, 1.5)  # progress says it started
    assert s.finish(i.lease, "complete", 2.0, result=b"\x02", reporter=holder) is i
    assert (i.status, i.result, i.progress) == (S.COMPLETE, b"\x02", 100.0)


# --- sending and forced cancels that nobody confirms ----------------------------------------


def test_an_unsent_run_is_queued_again_and_its_slot_freed() -> None:
    s = sched(a=1)
    s.queue([inst(1), inst(2)], 0.0)
    _, out, _, _ = s.take()
    (first,) = out["a"]
    lease = first.lease
    s.unsent([lease], 1.0, "MaxPayloadError")
    assert (first.status, first.lease, first.node, first.attempts) == (S.QUEUED, "", "", 0)
    assert first.history == [] and s.nodes["a"].leases == {}
    assert s.finish(lease, "complete", 1.5) is None  # the undone lease is stale
    s.tick(2.0)  # given out again, still before 2 (its old place)
    assert runs(s) == {"a": [1]} and first.attempts == 1


def test_an_unsent_run_that_can_never_be_sent_fails_and_one_being_cancelled_ends() -> None:
    s = sched(a=2)
    s.queue([inst(1), inst(2)], 0.0)
    s.take()
    one, two = s.active[1], s.active[2]
    s.cancel(2, 0.5)
    s.unsent([one.lease, two.lease], 1.0, "too large", permanent=True)
    assert one.status == S.FAILED and "could not be sent to a node: too large" in one.error
    assert two.status == S.CANCELLED and s.active == {} and s.nodes["a"].leases == {}


def test_a_forced_cancel_the_node_never_confirms_ends_cancelled_after_two_graces() -> None:
    s = sched(a=1)
    s.queue([inst(1), inst(2)], 0.0)
    t = s.active[1]
    lease = t.lease
    s.take()
    s.cancel(1, 1.0, force=True)
    assert s.take()[2] == [Stop("a", lease, False)]
    s.tick(3.0)  # grace 2.0: the kill goes out
    assert s.take()[2] == [Stop("a", lease, True)] and t.status == S.CANCEL_REQUESTED
    s.tick(4.9)
    assert t.status == S.CANCEL_REQUESTED
    s.tick(5.0)  # no word from the node within another grace
    assert t.status == S.CANCELLED and "did not confirm the kill" in t.error
    assert runs(s) == {"a": [2]}  # the slot is free again
    assert s.finish(lease, "stopped", 6.0) is None


def test_a_forced_stop_that_cannot_be_sent_ends_the_cancel_at_once() -> None:
    s = sched(a=1)
    s.queue([inst(1), inst(2)], 0.0)
    t, other = s.active[1], s.active[2]
    s.take()
    assert other.status == S.QUEUED  # one slot: it waits
    s.cancel(1, 1.0, force=False)
    s.unreachable(t.lease, 1.5, "ConnectionClosedError")  # not forced: it waits
    assert t.status == S.CANCEL_REQUESTED
    s.cancel(1, 2.0, force=True)
    s.unreachable(t.lease, 2.5, "ConnectionClosedError")
    assert t.status == S.CANCELLED and "node a is unreachable (ConnectionClosedError)" in t.error
    assert (other.status, other.node) == (S.ASSIGNED, "a")  # the slot is free again
