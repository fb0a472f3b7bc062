"""A group rebuilt from its members' resumes (a new coordinator) through plain calls."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.core.group import RESUME, Group, Phase, Refuse, RoundDone
from corral.core.group_resume import rebuilt as rebuilt_group
from corral.core.group_resume import resume


def rebuilt(size: int = 3, now: float = 0.0) -> Group:
    return rebuilt_group("g", size, size, silence=3, now=now)


def _reason(decisions: list[object]) -> str:
    (refusal,) = decisions
    assert isinstance(refusal, Refuse)
    return refusal.reason


def test_members_resume_with_their_ranks_and_step() -> None:
    g = rebuilt(3)
    assert g.phase is Phase.ACTIVE and g.rebuilt
    for rank in range(3):
        assert resume(g, f"m{rank}", rank, 3, 3, 4, now=1) == []
    assert g.next_seq == 4
    assert g.arrive("m0", "barrier", 4, 10, now=1) == []
    assert g.arrive("m1", "barrier", 4, 10, now=1) == []
    (done,) = g.arrive("m2", "barrier", 4, 10, now=1)
    assert isinstance(done, RoundDone) and done.reached == (0, 1, 2) and done.seq == 4


def test_an_arrival_before_resuming_is_told_to_resume() -> None:
    g = rebuilt(2)
    (refusal,) = g.arrive("m0", "barrier", 1, 10, now=0)
    assert isinstance(refusal, Refuse) and refusal.step == RESUME


def test_a_rank_that_never_resumes_is_dead_after_the_silence() -> None:
    g = rebuilt(3)
    resume(g, "m0", 0, 3, 3, 2, now=0)
    resume(g, "m1", 1, 3, 3, 2, now=0)
    assert g.arrive("m0", "collect", 2, 30, now=1) == []
    assert g.arrive("m1", "collect", 2, 30, now=2) == []
    g.beat("m0", 3.5)
    g.beat("m1", 3.5)
    (done,) = g.tick(3.5)
    assert isinstance(done, RoundDone)
    assert done.reached == (0, 1) and done.missing == (2,) and done.left_out == {2: "dead"}
    assert "declared dead" in _reason(resume(g, "late", 2, 3, 3, 2, now=4))


def test_bad_resumes_are_refused() -> None:
    g = rebuilt(3)
    resume(g, "m0", 0, 3, 3, 1, now=0)
    assert "already taken" in _reason(resume(g, "x", 0, 3, 3, 1, now=0))
    assert "is rank 0, not 1" in _reason(resume(g, "m0", 1, 3, 3, 1, now=0))
    assert "not 4 of 4" in _reason(resume(g, "y", 1, 4, 4, 1, now=0))
    assert "outside 0..2" in _reason(resume(g, "z", 3, 3, 3, 1, now=0))
    assert resume(g, "m0", 0, 3, 3, 1, now=1) == []  # again: harmless


def test_a_group_this_coordinator_formed_takes_no_newcomer_by_resume() -> None:
    g = Group("g", 2, startup_timeout=10, allow_startup_failures=False, silence=3, now=0)
    g.join("a", None, 2, now=0)
    g.join("b", None, 2, now=0)
    assert resume(g, "a", g.members["a"].rank, 2, 2, 1, now=1) == []
    assert "already taken" in _reason(resume(g, "c", 0, 2, 2, 1, now=1))


def test_resuming_into_an_ended_group_is_refused() -> None:
    g = rebuilt(1)
    resume(g, "m0", 0, 1, 1, 1, now=0)
    g.leave("m0", now=1)
    assert g.ended
    assert "ended" in _reason(resume(g, "m0", 0, 1, 1, 1, now=2))


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(1, 6),
    claims=st.lists(st.tuples(st.integers(0, 7), st.integers(-1, 7), st.integers(1, 5))),
)
def test_resumes_never_give_one_rank_twice(size: int, claims: list[tuple[int, int, int]]) -> None:
    g = rebuilt(size)
    for who, rank, seq in claims:
        resume(g, f"m{who}", rank, size, size, seq, now=0)
        ranks = [m.rank for m in g.members.values()]
        assert sorted(ranks) == list(range(size))  # each rank held once, by one id
        assert g.next_seq >= 1
