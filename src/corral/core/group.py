"""Process groups without I/O: formation, liveness, and collective rounds (socketComm).

Theory of operation: a coordinator keeps one :class:`Group` per (name, run). Members *join*;
once ``size`` have joined, or the start-up timeout passes, the group forms: every member gets
its rank (asked-for ranks first, then join order) and the final size — with start-up failures
allowed, the members that made it are renumbered 0..n-1. Members then *arrive* at collectives
(barrier, collect, distribute), each numbered by how many collectives that member has done, so
a member at barrier #5 can never be counted in barrier #4 (socketComm's barrier counted a live
member that reached a barrier from another line of code). A round completes when every live
member has arrived; a member silent for longer than ``silence`` is dead for good and every
round completes without it, reporting it missing. A round that is not complete by its deadline
fails, naming the live ranks that did not arrive — no collective waits past its timeout.

The coordinator feeds events in with the current time and carries out the decisions returned.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

__all__ = [
    "Formed",
    "Group",
    "GroupFailed",
    "Phase",
    "Refuse",
    "RoundDone",
    "RoundFailed",
]


class Phase(enum.StrEnum):
    """Where a group stands."""

    FORMING = "FORMING"
    ACTIVE = "ACTIVE"
    ENDED = "ENDED"


@dataclass
class Member:
    """One member as the coordinator sees it."""

    id: str
    wanted: int | None
    joined: float
    last_seen: float
    host: str = ""
    pid: int = 0
    rank: int = -1
    alive: bool = True
    left: bool = False


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Formed:
    """The group formed: tell each member its rank and the size."""

    ranks: dict[str, int]
    size: int
    asked: int  # the size the members asked for (size < asked: start-up failures)


@dataclass(frozen=True)
class GroupFailed:
    """The group could not form; tell every waiting member why."""

    members: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Refuse:
    """One member's request is refused."""

    member: str
    reason: str


@dataclass(frozen=True)
class RoundDone:
    """A collective completed: answer every member that arrived."""

    kind: str
    seq: int
    waiters: tuple[str, ...]
    reached: tuple[int, ...]
    missing: tuple[int, ...]


@dataclass(frozen=True)
class RoundFailed:
    """A collective timed out: answer every member that arrived, naming who did not."""

    kind: str
    seq: int
    waiters: tuple[str, ...]
    missing: tuple[int, ...]
    reason: str


Decision = Formed | GroupFailed | Refuse | RoundDone | RoundFailed


@dataclass
class _Round:
    kind: str
    seq: int
    deadline: float
    arrived: dict[int, str] = field(default_factory=dict)  # rank -> member id


class Group:
    """One group's membership and its collectives.

    Args:
        name: the group's name.
        size: how many members it waits for.
        startup_timeout: seconds from the first join to give up waiting for the rest.
        allow_startup_failures: form with whoever joined in time instead of failing.
        silence: seconds without a heartbeat after which a member is dead.
        now: the time of the first join.
    """

    def __init__(
        self,
        name: str,
        size: int,
        *,
        startup_timeout: float,
        allow_startup_failures: bool,
        silence: float,
        now: float,
    ) -> None:
        self.name = name
        self.asked = size
        self.size = size
        self.startup_deadline = now + startup_timeout
        self.allow_startup_failures = allow_startup_failures
        self.silence = silence
        self.phase = Phase.FORMING
        self.members: dict[str, Member] = {}
        self.next_seq = 1
        self.round: _Round | None = None

    def __repr__(self) -> str:
        alive = sum(1 for m in self.members.values() if m.alive and not m.left)
        return f"<Group {self.name!r} {self.phase} size={self.size} alive={alive}>"

    # --- membership ---------------------------------------------------------------------

    def join(
        self, member: str, wanted: int | None, size: int, now: float, host: str = "", pid: int = 0
    ) -> list[Decision]:
        """A member asks to join; it is answered when the group forms (or fails)."""
        if self.phase is not Phase.FORMING:
            return [
                Refuse(
                    member,
                    f"group {self.name!r} is already running with {self.size} members; "
                    "use another group name (or run id) for a new run",
                )
            ]
        if size != self.asked:
            return [Refuse(member, f"group {self.name!r} has size {self.asked}, not {size}")]
        if wanted is not None and not 0 <= wanted < size:
            return [Refuse(member, f"rank {wanted} is outside 0..{size - 1}")]
        if wanted is not None and any(m.wanted == wanted for m in self.members.values()):
            return [Refuse(member, f"rank {wanted} of group {self.name!r} is already taken")]
        self.members[member] = Member(member, wanted, now, now, host, pid)
        if len(self.members) == self.asked:
            return [self._form()]
        return []

    def _form(self) -> Formed:
        # Asked-for ranks keep their order; the others follow in order of joining.
        ordered = sorted(
            self.members.values(),
            key=lambda m: (m.wanted if m.wanted is not None else math.inf, m.joined),
        )
        if len(ordered) == self.asked:
            free = iter(sorted(set(range(self.asked)) - {m.wanted for m in ordered}))
            for m in ordered:
                m.rank = m.wanted if m.wanted is not None else next(free)
        else:  # start-up failures: renumber the survivors 0..n-1
            for rank, m in enumerate(ordered):
                m.rank = rank
        self.size = len(ordered)
        self.phase = Phase.ACTIVE
        return Formed({m.id: m.rank for m in ordered}, self.size, self.asked)

    def beat(self, member: str, now: float) -> None:
        """A member is alive."""
        m = self.members.get(member)
        if m is not None and m.alive:
            m.last_seen = now

    def leave(self, member: str, now: float) -> list[Decision]:
        """A member is done (its program ended) and will not arrive again."""
        m = self.members.get(member)
        if m is None:
            return []
        if self.phase is Phase.FORMING:
            del self.members[member]
            return []
        m.left = True
        return self._after_membership_change(now)

    def _live(self) -> list[Member]:
        return [m for m in self.members.values() if m.alive and not m.left]

    # --- collectives --------------------------------------------------------------------

    def arrive(
        self, member: str, kind: str, seq: int, timeout: float, now: float
    ) -> list[Decision]:
        """A member reached collective number ``seq`` of kind ``kind``."""
        m = self.members.get(member)
        if m is None or self.phase is not Phase.ACTIVE:
            return [Refuse(member, f"not a member of the running group {self.name!r}")]
        if not m.alive:
            return [
                Refuse(
                    member,
                    f"rank {m.rank} was declared dead after {self.silence}s of silence; the "
                    "group went on without it",
                )
            ]
        m.last_seen = now
        if seq < self.next_seq:
            return [Refuse(member, f"{kind} #{seq} of group {self.name!r} is already over")]
        current = self.round
        if current is None:
            if seq != self.next_seq:
                return [self._out_of_step(m, kind, seq, "(none open)")]
            current = self.round = _Round(kind, seq, now + timeout)
        elif (kind, seq) != (current.kind, current.seq):
            return [self._out_of_step(m, kind, seq, f"{current.kind} #{current.seq}")]
        current.arrived[m.rank] = member
        current.deadline = min(current.deadline, now + timeout)
        return self._complete_if_done()

    def _out_of_step(self, m: Member, kind: str, seq: int, group_at: str) -> Refuse:
        return Refuse(
            m.id,
            f"rank {m.rank} called {kind} #{seq} while the group is at {group_at}: every "
            "member must call the same collectives in the same order",
        )

    def _complete_if_done(self) -> list[Decision]:
        current = self.round
        if current is None:
            return []
        live = {m.rank for m in self._live()}
        if not live <= set(current.arrived):
            return []
        self.round = None
        self.next_seq += 1
        reached = tuple(sorted(current.arrived))
        missing = tuple(sorted(set(range(self.size)) - set(current.arrived)))
        waiters = tuple(current.arrived[r] for r in reached)
        return [RoundDone(current.kind, current.seq, waiters, reached, missing)]

    # --- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> list[Decision]:
        """Let time pass: start-up timeout, deaths, round deadlines."""
        if self.phase is Phase.FORMING:
            return self._tick_forming(now)
        if self.phase is Phase.ENDED:
            return []
        for m in self._live():
            if now - m.last_seen > self.silence:
                m.alive = False
        return self._after_membership_change(now)

    def _tick_forming(self, now: float) -> list[Decision]:
        for member in [m.id for m in self.members.values() if now - m.last_seen > self.silence]:
            del self.members[member]  # died while waiting for the others
        if now < self.startup_deadline:
            return []
        if self.allow_startup_failures and self.members:
            return [self._form()]
        self.phase = Phase.ENDED
        taken = {m.wanted for m in self.members.values()}
        wanted_missing = [r for r in range(self.asked) if r not in taken]
        return [
            GroupFailed(
                tuple(self.members),
                f"only {len(self.members)} of {self.asked} members of group {self.name!r} "
                f"joined in time (ranks not claimed: {wanted_missing}); raise startup_timeout "
                "or allow start-up failures",
            )
        ]

    def _after_membership_change(self, now: float) -> list[Decision]:
        decisions = self._complete_if_done()
        current = self.round
        if current is not None and now >= current.deadline:
            self.round = None
            self.next_seq += 1
            live = {m.rank for m in self._live()}
            late = sorted(live - set(current.arrived))
            dead = sorted(set(range(self.size)) - live - set(current.arrived))
            missing = tuple(sorted([*late, *dead]))
            decisions.append(
                RoundFailed(
                    current.kind,
                    current.seq,
                    tuple(current.arrived.values()),
                    missing,
                    f"{current.kind} #{current.seq} of group {self.name!r} timed out: ranks "
                    f"{late} did not arrive" + (f" (ranks {dead} are dead)" if dead else ""),
                )
            )
        if not self._live():
            self.phase = Phase.ENDED
        return decisions

    @property
    def ended(self) -> bool:
        """True once every member left or died, or the group failed to form."""
        return self.phase is Phase.ENDED
