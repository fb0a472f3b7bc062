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

A call out of step (another collective, or another number, than the group's current one) is
refused for that call only: the member stays a member, the refusal carries the group's current
step so the member can call again there and be counted, and until it does the round records
what it called. Every round says why each rank it did not count was left out (dead, departed,
out of step, did not arrive, or reached and then died/departed before the round completed):
``reached`` holds only the members still alive when the round completed.

A new coordinator (a controller restart or a standby's takeover) knows no group: it is rebuilt
from its members (:mod:`corral.core.group_resume`). Each member, refused with
:data:`RESUME` as its step, re-announces its rank, the formed size and the collective it calls
next; the group is ACTIVE again with those ranks, and a rank nobody resumes counts as a member
last heard of when the group was rebuilt: it is dead after the usual silence, as a crashed one.

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
    "LEFT_OUT",
    "Member",
    "Phase",
    "RESUME",
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
    """One member's request is refused (that request only).

    ``step`` is, for a refused collective, the number the group's current (or next)
    collective has: calling again at it is counted. 0 when it does not apply.
    """

    member: str
    reason: str
    step: int = 0


@dataclass(frozen=True)
class RoundDone:
    """A collective completed: answer every member that arrived."""

    kind: str
    seq: int
    waiters: tuple[str, ...]
    reached: tuple[int, ...]
    missing: tuple[int, ...]
    #: why each rank in ``missing`` was left out (see :data:`LEFT_OUT`)
    left_out: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundFailed:
    """A collective timed out: answer every member that arrived, naming who did not."""

    kind: str
    seq: int
    waiters: tuple[str, ...]
    missing: tuple[int, ...]
    reason: str
    #: why each rank in ``missing`` was left out (see :data:`LEFT_OUT`)
    left_out: dict[int, str] = field(default_factory=dict)


#: How a rank left out of a round is described (the out-of-step one is followed by what the
#: member called, e.g. ``"out of step: called collect #1"``).
LEFT_OUT = (
    "dead",
    "departed",
    "out of step",
    "did not arrive",
    "reached, then died",
    "reached, then departed",
)


#: A :class:`Refuse` step that means "this coordinator does not know you: resume".
RESUME = -1

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
        # rank -> what it called, for members refused out of step at the current step
        self.strays: dict[int, str] = {}
        #: rebuilt from members' resumes (after a controller restart or takeover)
        self.rebuilt = False

    def __repr__(self) -> str:
        alive = sum(1 for m in self.members.values() if m.alive and not m.left)
        return f"<Group {self.name!r} {self.phase} size={self.size} alive={alive}>"

    # --- membership ---------------------------------------------------------------------

    def join(
        self, member: str, wanted: int | None, size: int, now: float, host: str = "", pid: int = 0
    ) -> list[Decision]:
        """A member asks to join; it is answered when the group forms (or fails).

        A member asking again (its join crossed a coordinator's restart, or a nudge from a
        coordinator that had not seen it yet) is the same member: it waits on, or, once the
        group formed, is told its rank again.
        """
        known = self.members.get(member)
        if known is not None:
            if self.phase is Phase.FORMING:
                return []
            if known.rank >= 0 and known.alive:
                return [Formed({member: known.rank}, self.size, self.asked)]
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

    def ranks(self) -> list[tuple[int, str, int, str]]:
        """Every ranked member as (rank, host, pid, state), state ``alive``, ``dead`` or
        ``left``, in rank order (empty while the group forms)."""
        return sorted(
            (m.rank, m.host, m.pid, "left" if m.left else "alive" if m.alive else "dead")
            for m in self.members.values()
            if m.rank >= 0
        )

    def _live(self) -> list[Member]:
        return [m for m in self.members.values() if m.alive and not m.left]

    # --- collectives --------------------------------------------------------------------

    def arrive(
        self, member: str, kind: str, seq: int, timeout: float, now: float
    ) -> list[Decision]:
        """A member reached collective number ``seq`` of kind ``kind``."""
        m = self.members.get(member)
        if m is None and self.rebuilt and self.phase is Phase.ACTIVE:
            return [Refuse(member, f"resume into group {self.name!r} first", RESUME)]
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
            return [
                Refuse(
                    member,
                    f"{kind} #{seq} of group {self.name!r} is already over; the group is at "
                    f"collective #{self.next_seq}: call again to be counted there",
                    self.next_seq,
                )
            ]
        current = self.round
        if current is None:
            if seq != self.next_seq:
                return [self._out_of_step(m, kind, seq, "(none open)")]
            current = self.round = _Round(kind, seq, now + timeout)
        elif (kind, seq) != (current.kind, current.seq):
            return [self._out_of_step(m, kind, seq, f"{current.kind} #{current.seq}")]
        current.arrived[m.rank] = member
        self.strays.pop(m.rank, None)
        current.deadline = min(current.deadline, now + timeout)
        return self._complete_if_done()

    def _out_of_step(self, m: Member, kind: str, seq: int, group_at: str) -> Refuse:
        # Refused for this call only: the member stays in, and the others learn why it is
        # missing if it does not come back in time.
        self.strays[m.rank] = f"out of step: called {kind} #{seq}"
        return Refuse(
            m.id,
            f"rank {m.rank} called {kind} #{seq} while the group is at {group_at}: every "
            "member must call the same collectives in the same order; this call was not "
            f"counted, call again at collective #{self.next_seq}",
            self.next_seq,
        )

    def _why(self, rank: int, arrived: bool) -> str:
        """Why ``rank`` is not counted as reached in the round ending now."""
        m = next((m for m in self.members.values() if m.rank == rank), None)
        gone = "" if m is None else "died" if not m.alive else "departed" if m.left else ""
        if arrived:
            return f"reached, then {gone}"
        if gone:
            return "dead" if gone == "died" else "departed"
        return self.strays.get(rank, "did not arrive")

    def _end_round(self) -> None:
        self.round = None
        self.next_seq += 1
        self.strays.clear()

    def _complete_if_done(self) -> list[Decision]:
        current = self.round
        if current is None:
            return []
        live = {m.rank for m in self._live()}
        if not live <= set(current.arrived):
            return []
        self._end_round()
        # A member that arrived and then died or departed is not reported as reached.
        reached = tuple(sorted(live & set(current.arrived)))
        missing = tuple(sorted(set(range(self.size)) - set(reached)))
        left_out = {r: self._why(r, r in current.arrived) for r in missing}
        waiters = tuple(current.arrived[r] for r in sorted(current.arrived))
        return [RoundDone(current.kind, current.seq, waiters, reached, missing, left_out)]

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
            live = {m.rank for m in self._live()}
            late = sorted(live - set(current.arrived))
            dead = sorted(set(range(self.size)) - live - set(current.arrived))
            missing = tuple(sorted([*late, *dead]))
            left_out = {r: self._why(r, False) for r in missing}
            why = "; ".join(f"rank {r}: {left_out[r]}" for r in missing)
            self._end_round()
            decisions.append(
                RoundFailed(
                    current.kind,
                    current.seq,
                    tuple(current.arrived.values()),
                    missing,
                    f"{current.kind} #{current.seq} of group {self.name!r} timed out: ranks "
                    f"{late} did not arrive"
                    + (f" (ranks {dead} are dead)" if dead else "")
                    + f" [{why}]",
                    left_out,
                )
            )
        if not self._live():
            self.phase = Phase.ENDED
        return decisions

    @property
    def ended(self) -> bool:
        """True once every member left or died, or the group failed to form."""
        return self.phase is Phase.ENDED
