"""Dashboard sign-in lockout through plain calls and a fake clock (issue #12, item 8)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.dashboard.lockout import Lockout, Policy, SignInThrottle

POLICY = Policy(free=3, delay=1.0, max_delay=8.0, lock_after=6, lockout=100.0, window=50.0)


def fail_until_refused(t: SignInThrottle, name: str, address: str, now: float) -> int:
    """Wrong passwords, each as soon as allowed, until the next is refused; how many."""
    n = 0
    while t.check(name, address, now).allowed:
        t.failed(name, address, now)
        n += 1
    return n


def test_the_first_wrong_passwords_are_free_then_each_waits_longer() -> None:
    t = SignInThrottle(POLICY)
    assert fail_until_refused(t, "alice", "10.0.0.1", now=0) == 3
    verdict = t.check("alice", "10.0.0.1", now=0.5)
    assert not verdict.allowed and verdict.retry_after == 0.5 and "wait 1 s" in verdict.reason
    waits = []
    now = 0.0
    for _ in range(2):  # failures 4 and 5: the wait doubles
        now += t.check("alice", "10.0.0.1", now).retry_after
        assert t.check("alice", "10.0.0.1", now).allowed
        assert t.failed("alice", "10.0.0.1", now) == []
        waits.append(t.check("alice", "10.0.0.1", now).retry_after)
    assert waits == [2.0, 4.0]


def test_lock_after_n_failures_refuses_even_the_right_password_then_forgets() -> None:
    t = SignInThrottle(POLICY)
    now = 0.0
    locks: list[Lockout] = []
    for _ in range(6):
        now += t.check("alice", "10.0.0.1", now).retry_after
        locks += t.failed("alice", "10.0.0.1", now)
    assert locks == [Lockout("name", "alice", 6, now + 100.0)]
    locked = t.check("alice", "10.0.0.9", now + 99)  # from any address
    assert not locked.allowed and "locked" in locked.reason and locked.retry_after == 1
    # A lockout ends; with no failure in it, the count is forgotten: free attempts again.
    assert fail_until_refused(t, "alice", "10.0.0.1", now + 101) == 3


def test_an_address_spraying_names_is_locked_too() -> None:
    t = SignInThrottle(POLICY)  # address: 5 x the name's limits
    now = 0.0
    locks: list[Lockout] = []
    for i in range(30):
        now += t.check(f"user{i}", "10.6.6.6", now).retry_after
        locks += t.failed(f"user{i}", "10.6.6.6", now)
    assert [(lock.kind, lock.key) for lock in locks] == [("address", "10.6.6.6")]
    assert not t.check("someone-else", "10.6.6.6", now).allowed
    assert t.check("someone-else", "10.0.0.2", now).allowed  # other addresses are not


def test_success_resets_the_name_but_not_the_address() -> None:
    t = SignInThrottle(POLICY)
    assert fail_until_refused(t, "alice", "10.0.0.1", now=0) == 3
    t.succeeded("alice", now=5)
    assert t.check("alice", "10.0.0.2", now=5).allowed  # the name's count is gone
    for _ in range(12):  # the address had 3; at 15 its own delay begins
        t.failed("mallory", "10.0.0.1", now=5)
    assert not t.check("alice", "10.0.0.1", now=5).allowed


def test_a_quiet_window_forgets_the_count() -> None:
    t = SignInThrottle(POLICY)
    for _ in range(5):
        t.failed("bob", "10.0.0.1", now=0)
    assert t.check("bob", "10.0.0.1", now=51).allowed
    assert fail_until_refused(t, "bob", "10.0.0.3", now=51) == 3


def test_memory_is_bounded() -> None:
    t = SignInThrottle(Policy(max_keys=50))
    for i in range(500):
        t.failed(f"n{i}", f"a{i}", now=i)
    assert len(t._counts) <= 50


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.floats(0, 5)), max_size=80))
def test_never_more_than_lock_after_failures_are_checked_per_name_per_lockout(
    attempts: list[tuple[int, int, float]],
) -> None:
    """Whatever the attacker does, a name sees at most lock_after checked guesses before a
    lockout begins, and no guess is checked while it is locked."""
    t = SignInThrottle(POLICY)
    now = 0.0
    checked = dict.fromkeys(range(3), 0)
    for who, where, dt in attempts:
        now += dt
        verdict = t.check(f"u{who}", f"a{where}", now)
        if verdict.allowed:
            checked[who] += 1
            locks = t.failed(f"u{who}", f"a{where}", now)
            if any(lock.kind == "name" for lock in locks):
                checked[who] = 0
        assert checked[who] <= POLICY.lock_after
