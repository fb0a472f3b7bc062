"""Group formation, liveness and collective rounds through plain calls (no bus, no clock)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.group import Formed, Group, GroupFailed, Phase, Refuse, RoundDone, RoundFailed


def group(size: int = 3, *, allow: bool = False, now: float = 0.0) -> Group:
    return Group("g", size, startup_timeout=10, allow_startup_failures=allow, silence=3, now=now)


def formed(size: int = 3) -> Group:
    g = group(size)
    for i in range(size):
        g.join(f"m{i}", None, size, now=0)
    return g


def test_forms_when_all_joined_with_asked_ranks_first() -> None:
    g = group(3)
    assert g.join("a", None, 3, now=0) == []
    assert g.join("b", 0, 3, now=1) == []
    (done,) = g.join("c", None, 3, now=2)
    assert isinstance(done, Formed)
    assert done.ranks == {"b": 0, "a": 1, "c": 2} and done.size == 3 and g.phase is Phase.ACTIVE


def test_a_member_joining_again_is_the_same_member() -> None:
    g = group(3)
    assert g.join("a", 1, 3, now=0) == []
    assert g.join("a", 1, 3, now=1) == []  # its join crossed a coordinator restart: no clash
    assert len(g.members) == 1
    g.join("b", None, 3, now=2)
    (done,) = g.join("c", None, 3, now=3)
    assert isinstance(done, Formed) and done.ranks["a"] == 1
    (again,) = g.join("a", 1, 3, now=4)  # its answer was lost: told its rank again
    assert isinstance(again, Formed) and again.ranks == {"a": 1} and again.size == 3
    assert "already running" in _reason(g.join("d", None, 3, now=5))


def test_bad_joins_are_refused_with_the_reason() -> None:
    g = group(3)
    g.join("a", 1, 3, now=0)
    assert "already taken" in _reason(g.join("b", 1, 3, now=0))
    assert "outside 0..2" in _reason(g.join("c", 3, 3, now=0))
    assert "has size 3, not 4" in _reason(g.join("d", None, 4, now=0))
    f = formed(2)
    assert "already running" in _reason(f.join("late", None, 2, now=1))


def _reason(decisions: list[object]) -> str:
    (refusal,) = decisions
    assert isinstance(refusal, Refuse)
    return refusal.reason


def test_startup_failures_renumber_the_survivors() -> None:
    g = group(8, allow=True)
    for i, wanted in enumerate([5, None, 2, None, 7, None]):
        g.join(f"m{i}", wanted, 8, now=i * 0.1)
        g.beat(f"m{i}", now=9)
    assert g.tick(now=9.9) == []
    (done,) = g.tick(now=10)
    assert isinstance(done, Formed) and done.size == 6 and done.asked == 8
    assert done.ranks == {"m2": 0, "m0": 1, "m4": 2, "m1": 3, "m3": 4, "m5": 5}


def test_startup_timeout_without_failures_allowed_fails_naming_the_gap() -> None:
    g = group(4)
    g.join("a", 0, 4, now=0)
    g.join("b", 2, 4, now=0)
    g.beat("a", 9)
    g.beat("b", 9)
    (failed,) = g.tick(now=10)
    assert isinstance(failed, GroupFailed) and set(failed.members) == {"a", "b"}
    assert "only 2 of 4" in failed.reason and "[1, 3]" in failed.reason and g.ended


def test_barrier_completes_when_all_arrive() -> None:
    g = formed(3)
    assert g.arrive("m0", "barrier", 1, timeout=5, now=1) == []
    assert g.arrive("m2", "barrier", 1, timeout=5, now=1) == []
    (done,) = g.arrive("m1", "barrier", 1, timeout=5, now=1)
    assert isinstance(done, RoundDone)
    assert (
        done.reached == (0, 1, 2)
        and done.missing == ()
        and set(done.waiters)
        == {
            "m0",
            "m1",
            "m2",
        }
    )


def test_a_dead_member_is_left_out_and_reported_missing() -> None:
    g = formed(3)
    g.arrive("m0", "barrier", 1, timeout=30, now=1)
    g.arrive("m1", "barrier", 1, timeout=30, now=2.5)
    g.beat("m0", 2.5)
    assert g.tick(now=3.0) == []  # m2 last heard at 0: silent exactly 3 s, still alive
    (done,) = g.tick(now=3.1)
    assert isinstance(done, RoundDone) and done.reached == (0, 1) and done.missing == (2,)
    assert "declared dead" in _reason(g.arrive("m2", "barrier", 1, timeout=5, now=4))


def test_a_timeout_names_the_ranks_that_did_not_arrive() -> None:
    g = formed(3)
    g.arrive("m1", "barrier", 1, timeout=2, now=1)
    for t in (1.5, 2.0, 2.5):
        for m in ("m0", "m1", "m2"):
            g.beat(m, t)
        assert g.tick(now=t) == []
    (failed,) = g.tick(now=3)
    assert isinstance(failed, RoundFailed) and failed.missing == (0, 2)
    assert failed.waiters == ("m1",) and "ranks [0, 2] did not arrive" in failed.reason
    # Late arrivals for that round are told it is over; the next round starts cleanly.
    assert "already over" in _reason(g.arrive("m0", "barrier", 1, timeout=2, now=3.1))
    assert g.arrive("m0", "collect", 2, timeout=2, now=3.2) == []


def test_members_out_of_step_are_refused() -> None:
    g = formed(2)
    g.arrive("m0", "barrier", 1, timeout=5, now=1)
    assert "called collect #1 while the group is at barrier #1" in _reason(
        g.arrive("m1", "collect", 1, timeout=5, now=1)
    )
    assert "called barrier #2" in _reason(g.arrive("m1", "barrier", 2, timeout=5, now=1))


def test_leaving_members_end_the_group() -> None:
    g = formed(2)
    g.arrive("m0", "barrier", 1, timeout=5, now=1)
    (done,) = g.leave("m1", now=1)
    assert isinstance(done, RoundDone) and done.missing == (1,)
    g.leave("m0", now=2)
    assert g.ended


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["arrive", "beat", "tick", "leave"]),
            st.integers(0, 3),
            st.floats(0, 2),
        ),
        max_size=60,
    )
)
def test_no_round_outlives_its_deadline(events: list[tuple[str, int, float]]) -> None:
    g = formed(4)
    now = 0.0
    seqs = dict.fromkeys(range(4), 1)
    for kind, who, dt in events:
        now += dt
        member = f"m{who}"
        if kind == "arrive":
            decisions = g.arrive(member, "barrier", seqs[who], timeout=1.5, now=now)
        elif kind == "beat":
            g.beat(member, now)
            decisions = []
        elif kind == "leave":
            decisions = g.leave(member, now)
        else:
            decisions = g.tick(now)
        for d in decisions:
            if isinstance(d, RoundDone | RoundFailed):
                for m in range(4):
                    seqs[m] = max(seqs[m], d.seq + 1)
        if g.round is not None:
            # Once time passes the deadline, the next tick closes the round.
            if now >= g.round.deadline:
                g.tick(now)
                assert g.round is None or g.round.deadline > now


# --- issue #12: an out-of-step call costs that call only; the others are told why -----------


def _refusal(decisions: list[object]) -> Refuse:
    (refusal,) = decisions
    assert isinstance(refusal, Refuse)
    return refusal


def test_an_out_of_step_call_is_refused_for_that_call_only() -> None:
    g = formed(4)
    for m in ("m0", "m1", "m2"):
        assert g.arrive(m, "barrier", 1, timeout=30, now=1) == []
    refused = _refusal(g.arrive("m3", "collect", 1, timeout=30, now=1))
    assert refused.step == 1 and "this call was not counted" in refused.reason
    # The same member, again at the group's current step, is counted: the round completes.
    (done,) = g.arrive("m3", "barrier", 1, timeout=30, now=2)
    assert isinstance(done, RoundDone) and done.reached == (0, 1, 2, 3)
    assert done.missing == () and done.left_out == {}
    assert g.arrive("m3", "collect", 2, timeout=30, now=3) == []  # and goes on in step


def test_a_member_ahead_is_told_the_current_step() -> None:
    g = formed(2)
    g.arrive("m0", "barrier", 1, timeout=30, now=1)
    assert _refusal(g.arrive("m1", "barrier", 2, timeout=30, now=1)).step == 1
    (done,) = g.arrive("m1", "barrier", 1, timeout=30, now=1)
    assert isinstance(done, RoundDone) and done.reached == (0, 1)


def test_a_timeout_says_who_was_out_of_step_dead_or_late() -> None:
    g = formed(4)
    g.arrive("m0", "barrier", 1, timeout=2, now=1)
    g.arrive("m1", "collect", 1, timeout=2, now=1)  # refused, never comes back
    for t in (1.5, 2.0, 2.5):
        for m in ("m0", "m1", "m2"):
            g.beat(m, t)  # m3 stays silent: dead at 3.1
    (failed,) = g.tick(now=3.1)
    assert isinstance(failed, RoundFailed) and failed.missing == (1, 2, 3)
    assert failed.left_out == {
        1: "out of step: called collect #1",
        2: "did not arrive",
        3: "dead",
    }
    assert "rank 1: out of step: called collect #1" in failed.reason
    late = _refusal(g.arrive("m2", "barrier", 1, timeout=2, now=3.2))
    assert "already over" in late.reason and late.step == 2
    assert g.arrive("m2", "barrier", 2, timeout=2, now=3.3) == []  # counted at the new step


def test_a_member_that_reached_then_died_is_not_reported_reached() -> None:
    g = formed(3)
    g.arrive("m0", "barrier", 1, timeout=30, now=1)
    g.arrive("m1", "barrier", 1, timeout=30, now=1)
    for t in (2.0, 3.0, 4.0):
        g.beat("m1", t)
        g.beat("m2", t)
    assert g.tick(now=4.1) == []  # m0 (silent since 1) is dead; m2 has not arrived
    (done,) = g.arrive("m2", "barrier", 1, timeout=30, now=4.2)
    assert isinstance(done, RoundDone) and done.reached == (1, 2) and done.missing == (0,)
    assert done.left_out == {0: "reached, then died"}


def test_dead_and_departed_members_are_named_as_such() -> None:
    g = formed(3)
    g.arrive("m0", "barrier", 1, timeout=30, now=1)
    assert g.leave("m1", now=1) == []
    g.beat("m0", 3.5)
    (done,) = g.tick(now=3.5)  # m2 silent since 0: dead
    assert isinstance(done, RoundDone) and done.reached == (0,)
    assert done.left_out == {1: "departed", 2: "dead"}
