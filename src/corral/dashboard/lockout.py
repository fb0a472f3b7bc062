"""Dashboard sign-in lockout: slow down, then lock out, repeated wrong passwords (no I/O).

Theory of operation: wrong passwords are counted per user name *and* per client address,
each count forgotten after ``window`` seconds without a new failure. Past ``free`` failures a
key must wait before its next attempt: ``delay`` seconds, doubling with each further failure
up to ``max_delay``; an attempt made sooner is answered 429 with ``Retry-After`` without the
password being looked at. At ``lock_after`` failures the key is locked for ``lockout``
seconds: every attempt for that name (or from that address) is refused, the right password
too. An address gets more room than a name (``address_factor`` times), since one address may
stand for many people behind a NAT. A successful sign-in clears its name's count, never its
address's, so signing in to one's own account does not buy more guesses at another's.

The dashboard calls :meth:`SignInThrottle.check` before checking a password and
:meth:`~SignInThrottle.failed` / :meth:`~SignInThrottle.succeeded` after, with the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Lockout", "Policy", "SignInThrottle", "Verdict"]


@dataclass(frozen=True)
class Policy:
    """The limits (the defaults are what the dashboard uses; see docs/security.md).

    Attributes:
        free: wrong passwords for a name allowed without delay.
        delay: seconds to wait after the first failure past ``free``; doubles each time.
        max_delay: the longest such wait.
        lock_after: wrong passwords for a name that lock it.
        lockout: seconds a locked name or address stays locked.
        window: seconds without a failure after which a count is forgotten.
        address_factor: an address may fail this many times more than a name.
        max_keys: names and addresses tracked at most (the oldest are forgotten first).
    """

    free: int = 5
    delay: float = 1.0
    max_delay: float = 30.0
    lock_after: int = 10
    lockout: float = 900.0
    window: float = 900.0
    address_factor: int = 5
    max_keys: int = 100_000


@dataclass(frozen=True)
class Verdict:
    """Whether a sign-in attempt may go ahead now.

    Attributes:
        allowed: True to check the password.
        retry_after: seconds until an attempt may be made (0 when allowed).
        reason: why not, for the sign-in page (empty when allowed).
    """

    allowed: bool
    retry_after: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class Lockout:
    """A name or an address was just locked (log it, audit it)."""

    kind: str  # "name" or "address"
    key: str
    failures: int
    until: float


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0
    not_before: float = 0.0
    locked_until: float = 0.0


class SignInThrottle:
    """Counts wrong passwords per name and per address and says when to slow or refuse.

    Args:
        policy: the limits.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self._counts: dict[tuple[str, str], _Count] = {}

    def __repr__(self) -> str:
        ever = sum(1 for c in self._counts.values() if c.locked_until)
        return f"<SignInThrottle keys={len(self._counts)} locked_since_counted={ever}>"

    def _limits(self, kind: str) -> tuple[int, int]:
        factor = self.policy.address_factor if kind == "address" else 1
        return self.policy.free * factor, self.policy.lock_after * factor

    def _count(self, kind: str, key: str, now: float) -> _Count | None:
        count = self._counts.get((kind, key))
        if count is None:
            return None
        quiet = now - count.last > self.policy.window
        if quiet and now >= count.locked_until:
            del self._counts[(kind, key)]  # forgotten: no failure for a whole window
            return None
        return count

    def check(self, name: str, address: str, now: float) -> Verdict:
        """May an attempt for ``name`` from ``address`` be made at ``now``?

        Args:
            name: the user name given.
            address: the client's address.
            now: the current time (monotonic seconds).

        Returns:
            The verdict; when refused, how long to wait and why.
        """
        worst = Verdict(True)
        for kind, key in (("name", name), ("address", address)):
            count = self._count(kind, key, now)
            if count is None:
                continue
            if now < count.locked_until:
                wait = count.locked_until - now
                why = (
                    f"too many wrong passwords for this {kind}: sign-in is locked for "
                    f"{math.ceil(wait)} s more"
                )
            elif now < count.not_before:
                wait = count.not_before - now
                why = f"too many wrong passwords: wait {math.ceil(wait)} s before trying again"
            else:
                continue
            if wait > worst.retry_after:
                worst = Verdict(False, wait, why)
        return worst

    def failed(self, name: str, address: str, now: float) -> list[Lockout]:
        """A wrong password for ``name`` from ``address``.

        Args:
            name: the user name given.
            address: the client's address.
            now: the current time (monotonic seconds).

        Returns:
            The name and/or address this failure locked (empty if none was locked now).
        """
        locked: list[Lockout] = []
        for kind, key in (("name", name), ("address", address)):
            count = self._count(kind, key, now) or self._new(kind, key)
            count.failures += 1
            count.last = now
            free, lock_after = self._limits(kind)
            if count.failures >= free:
                extra = count.failures - free
                count.not_before = now + min(
                    self.policy.max_delay, self.policy.delay * 2 ** min(extra, 32)
                )
            if count.failures >= lock_after and now >= count.locked_until:
                count.locked_until = now + self.policy.lockout
                locked.append(Lockout(kind, key, count.failures, count.locked_until))
        return locked

    def succeeded(self, name: str, now: float) -> None:
        """``name`` signed in: its count starts again (its address's does not).

        Args:
            name: the user who signed in.
            now: the current time (monotonic seconds).
        """
        self._counts.pop(("name", name), None)

    def _new(self, kind: str, key: str) -> _Count:
        if len(self._counts) >= self.policy.max_keys:
            # Forget the quietest unlocked key (bounded memory under a spray of names).
            oldest = min(
                (k for k, c in self._counts.items() if not c.locked_until),
                key=lambda k: self._counts[k].last,
                default=next(iter(self._counts)),
            )
            del self._counts[oldest]
        count = self._counts[(kind, key)] = _Count()
        return count
