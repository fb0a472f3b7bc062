"""A process group rebuilt by a new coordinator from its members' resumes, without I/O.

Theory of operation: a new coordinator (a controller restart, or a standby's takeover) knows no
group. A member of one resumes with what it knows of itself: its rank, the formed size (and the
size asked for) and the collective it calls next. The first resume makes the group ACTIVE again
(:func:`rebuilt`) with one placeholder per rank, last heard of at that moment; each resume puts
its member in its rank's place (:func:`resume`). A placeholder nobody takes is a member that
went silent: the group's usual liveness declares it dead after ``silence``, and every round
completes without it, reporting it missing. The core checks every resume: the size agrees, the
rank is inside it and not held by another member, the group has not ended, a rank declared
dead stays dead, and a group this coordinator formed itself takes no newcomer by resume.
"""

from __future__ import annotations

from corral.core.group import Decision, Group, Member, Phase, Refuse

__all__ = ["rebuilt", "resume"]


def _placeholder(rank: int) -> str:
    return f"?{rank}"  # never a member's id (those are hex)


def rebuilt(name: str, size: int, asked: int, silence: float, now: float) -> Group:
    """An ACTIVE group of ``size`` ranks (``asked`` asked for) this coordinator did not form,
    to be resumed into: every rank is a placeholder last heard of ``now``."""
    g = Group(
        name, asked, startup_timeout=0, allow_startup_failures=False, silence=silence, now=now
    )
    g.size, g.phase, g.rebuilt = size, Phase.ACTIVE, True
    for rank in range(size):
        g.members[_placeholder(rank)] = Member(_placeholder(rank), rank, now, now, rank=rank)
    return g


def resume(
    g: Group,
    member: str,
    rank: int,
    size: int,
    asked: int,
    seq: int,
    now: float,
    host: str = "",
    pid: int = 0,
) -> list[Decision]:
    """Member ``member`` of ``g`` re-announces itself: rank ``rank`` of ``size``, calling
    collective ``seq`` next. Nothing to answer when it is taken back (a :class:`Refuse`
    otherwise)."""
    if g.phase is not Phase.ACTIVE:
        return [Refuse(member, f"group {g.name!r} is {g.phase.lower()}: cannot resume")]
    if (size, asked) != (g.size, g.asked):
        return [
            Refuse(
                member,
                f"group {g.name!r} has {g.size} of {g.asked} members, not {size} of {asked}",
            )
        ]
    if not 0 <= rank < size or seq < 1:
        return [Refuse(member, f"rank {rank} is outside 0..{size - 1} or step {seq} < 1")]
    known = g.members.get(member)
    if known is not None:
        if known.rank != rank:
            return [Refuse(member, f"this member is rank {known.rank}, not {rank}")]
        g.beat(member, now)
        return []
    holder = g.members.get(_placeholder(rank))
    if not g.rebuilt or holder is None:
        return [Refuse(member, f"rank {rank} of group {g.name!r} is already taken")]
    if not holder.alive:
        return [
            Refuse(member, f"rank {rank} did not resume within {g.silence}s and was declared dead")
        ]
    del g.members[holder.id]
    g.members[member] = Member(member, rank, holder.joined, now, host, pid, rank=rank)
    if g.round is None and seq > g.next_seq:
        g.next_seq = seq  # a member already past a round the old coordinator ended
    return []
