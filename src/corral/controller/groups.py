"""The group coordinator: the I/O shell around :mod:`corral.core.group`.

Members' joins and arrivals are requests whose replies wait until the group forms or the round
completes; this service keeps their reply subjects and answers them when the core decides. It
runs inside the controller and shares its tick, so a dead member is noticed within a quarter
second of its silence limit.

Groups live in this process only: a new controller (a restart or a standby's takeover) rebuilds
each one from its members. A member it does not know is refused with the core's ``RESUME``
step (an arrival) or nudged on its beat's reply subject; it then resumes with its own rank, the
formed size and group id, and the collective it calls next (:mod:`corral.core.group_resume`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from corral import bus, subjects, wire
from corral.core import group_resume
from corral.core.group import (
    RESUME,
    Decision,
    Formed,
    Group,
    GroupFailed,
    Refuse,
    RoundDone,
    RoundFailed,
)
from corral.errors import CorralError, GroupRefused, GroupTimeout

__all__ = ["GroupService"]

log = logging.getLogger("corral.groups")

Key = tuple[str, str]  # (group name, run)

_MAX_RESUMED_SIZE = 1 << 16  # a resume creates one placeholder per rank: bounded
_ENDED_KEPT = 4096  # ended groups remembered, so a late resume into one is refused


def _why(left_out: dict[int, str]) -> str:
    return "; ".join(f"rank {rank}: {why}" for rank, why in sorted(left_out.items()))


class GroupService:
    """Every live group, by (name, run).

    Args:
        nc: the controller's bus connection.
        silence: seconds without a heartbeat after which a member is dead.
        clock: wall-clock source.
        limit: largest request accepted, in bytes.
    """

    def __init__(
        self, nc: bus.NATS, silence: float, clock: Callable[[], float], limit: int
    ) -> None:
        self.nc = nc
        self.silence = silence
        self.clock = clock
        self.limit = limit
        self.groups: dict[Key, Group] = {}
        self.ids: dict[Key, str] = {}
        self._waiting: dict[tuple[Key, str], str] = {}  # (group, member) -> reply subject
        self._ended: dict[Key, str] = {}  # recently ended groups -> their id (oldest first)

    def __repr__(self) -> str:
        return f"<GroupService groups={len(self.groups)}>"

    async def start(self) -> None:
        """Subscribe to every group's requests."""
        handlers = {
            "join": self._on_join,
            "beat": self._on_beat,
            "arrive": self._on_arrive,
            "leave": self._on_leave,
            "info": self._on_info,
            "resume": self._on_resume,
        }
        for verb, handler in handlers.items():
            await self.nc.subscribe(subjects.group("*", verb), cb=handler)

    async def tick(self) -> None:
        """Let time pass for every group (start-up timeouts, deaths, deadlines)."""
        now = self.clock()
        for key, g in list(self.groups.items()):
            await self._carry_out(key, g.tick(now))

    # --- requests -----------------------------------------------------------------------

    def _decode(self, msg: Any, kind: type[Any]) -> Any:
        return wire.decode(msg.data, kind, msg.headers, limit=self.limit)

    async def _error(self, reply: str, exc: CorralError) -> None:
        if reply:
            await self.nc.publish(reply, wire.encode(wire.error_reply(exc)), headers=wire.HEADERS)

    async def _on_join(self, msg: Any) -> None:
        try:
            name = subjects.check_name(msg.subject.split(".")[2], "group")
            join: wire.GroupJoin = self._decode(msg, wire.GroupJoin)
        except CorralError as exc:
            await self._error(msg.reply, exc)
            return
        if join.size < 1 or not 0 <= join.startup_timeout <= 86400:
            await self._error(
                msg.reply,
                GroupRefused(
                    f"size must be >= 1 and startup_timeout within 0..86400 s, got {join.size} "
                    f"and {join.startup_timeout}"
                ),
            )
            return
        key, now = (name, join.run), self.clock()
        g = self.groups.get(key)
        if g is None or g.ended:
            g = self.groups[key] = Group(
                name,
                join.size,
                startup_timeout=join.startup_timeout,
                allow_startup_failures=join.allow_startup_failures,
                silence=self.silence,
                now=now,
            )
            self.ids[key] = uuid.uuid4().hex[:12]
            log.info("group forming", extra={"group": name, "run": join.run, "size": join.size})
        self._waiting[(key, join.member)] = msg.reply
        await self._carry_out(
            key, g.join(join.member, join.rank, join.size, now, join.host, join.pid)
        )

    async def _on_beat(self, msg: Any) -> None:
        try:
            beat: wire.GroupBeat = self._decode(msg, wire.GroupBeat)
        except CorralError:
            return
        g = self.groups.get((msg.subject.split(".")[2], beat.run))
        if g is not None:
            g.beat(beat.member, self.clock())
        if msg.reply and (g is None or g.rebuilt and beat.member not in g.members):
            await self.nc.publish(msg.reply, b"resume")  # a member this coordinator lost

    async def _on_resume(self, msg: Any) -> None:
        try:
            name = subjects.check_name(msg.subject.split(".")[2], "group")
            resume: wire.GroupResume = self._decode(msg, wire.GroupResume)
            if not (
                1 <= resume.size <= min(resume.asked, _MAX_RESUMED_SIZE)
                and 0 < len(resume.group_id) <= 64
                and resume.group_id.isalnum()
            ):
                raise GroupRefused(f"not a resumable group: {resume.size} of {resume.asked}")
        except CorralError as exc:
            await self._error(msg.reply, exc)
            return
        key, now = (name, resume.run), self.clock()
        g = self.groups.get(key)
        if self._ended.get(key) == resume.group_id:
            decisions: list[Decision] = [Refuse(resume.member, f"group {name!r} has ended")]
        else:
            if g is None:
                g = self.groups[key] = group_resume.rebuilt(
                    name, resume.size, resume.asked, self.silence, now
                )
                self.ids[key] = resume.group_id
                log.info("group rebuilt", extra={"group": name, "run": resume.run})
            if self.ids[key] != resume.group_id:
                decisions = [Refuse(resume.member, f"group {name!r} is another instance now")]
            else:
                decisions = group_resume.resume(
                    g,
                    resume.member,
                    resume.rank,
                    resume.size,
                    resume.asked,
                    resume.seq,
                    now,
                    resume.host,
                    resume.pid,
                )
        self._waiting[(key, resume.member)] = msg.reply
        if not decisions:
            taken = wire.GroupFormed(
                group_id=resume.group_id, rank=resume.rank, size=resume.size, asked=resume.asked
            )
            await self._answer(key, resume.member, taken)
        await self._carry_out(key, decisions)

    async def _on_arrive(self, msg: Any) -> None:
        try:
            arrive: wire.GroupArrive = self._decode(msg, wire.GroupArrive)
        except CorralError as exc:
            await self._error(msg.reply, exc)
            return
        key = (msg.subject.split(".")[2], arrive.run)
        g = self.groups.get(key)
        if g is None:
            refusal = GroupRefused(f"no running group {key[0]!r} here: resume", RESUME)
            await self._error(msg.reply, refusal)
            return
        self._waiting[(key, arrive.member)] = msg.reply
        decisions = g.arrive(arrive.member, arrive.kind, arrive.seq, arrive.timeout, self.clock())
        await self._carry_out(key, decisions)

    async def _on_leave(self, msg: Any) -> None:
        try:
            leave: wire.GroupLeave = self._decode(msg, wire.GroupLeave)
        except CorralError:
            return
        key = (msg.subject.split(".")[2], leave.run)
        g = self.groups.get(key)
        if g is not None:
            await self._carry_out(key, g.leave(leave.member, self.clock()))

    async def _on_info(self, msg: Any) -> None:
        try:
            ask: wire.GroupInfoRequest = self._decode(msg, wire.GroupInfoRequest)
        except CorralError as exc:
            await self._error(msg.reply, exc)
            return
        key = (msg.subject.split(".")[2], ask.run)
        g = self.groups.get(key)
        if g is None or ask.member not in g.members:
            await self._error(msg.reply, GroupRefused(f"not a member of group {key[0]!r}"))
            return
        ranks = tuple(wire.GroupRank(rank=r, host=h, pid=p, state=s) for r, h, p, s in g.ranks())
        info = wire.GroupInfo(
            name=key[0], group_id=self.ids[key], size=g.size, asked=g.asked, ranks=ranks
        )
        if msg.reply:
            await self.nc.publish(msg.reply, wire.encode(info), headers=wire.HEADERS)

    # --- decisions ----------------------------------------------------------------------

    async def _answer(self, key: Key, member: str, payload: msgspec.Struct) -> None:
        reply = self._waiting.pop((key, member), "")
        if reply:
            await self.nc.publish(reply, wire.encode(payload), headers=wire.HEADERS)

    async def _round_done(self, key: Key, d: RoundDone) -> None:
        done = wire.GroupRound(
            kind=d.kind, seq=d.seq, reached=d.reached, missing=d.missing, left_out=d.left_out
        )
        if d.left_out:
            log.info(
                "group round left ranks out",
                extra={"group": key[0], "kind": d.kind, "seq": d.seq, "why": _why(d.left_out)},
            )
        for member in d.waiters:
            await self._answer(key, member, done)

    async def _carry_out(self, key: Key, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Formed):
                log.info("group formed", extra={"group": key[0], "size": d.size, "asked": d.asked})
                for member, rank in d.ranks.items():
                    formed = wire.GroupFormed(
                        group_id=self.ids[key], rank=rank, size=d.size, asked=d.asked
                    )
                    await self._answer(key, member, formed)
            elif isinstance(d, RoundDone):
                await self._round_done(key, d)
            elif isinstance(d, RoundFailed):
                failed = wire.GroupRound(
                    kind=d.kind,
                    seq=d.seq,
                    reached=(),
                    missing=d.missing,
                    error=d.reason,
                    left_out=d.left_out,
                )
                for member in d.waiters:
                    await self._answer(key, member, failed)
            elif isinstance(d, GroupFailed):
                error = wire.error_reply(GroupTimeout(d.reason))
                for member in d.members:
                    await self._answer(key, member, error)
            elif isinstance(d, Refuse):
                refusal = wire.error_reply(GroupRefused(d.reason, d.step))
                await self._answer(key, d.member, refusal)
        g = self.groups.get(key)
        if g is not None and g.ended:
            del self.groups[key]
            self._ended[key] = self.ids.pop(key, "")
            while len(self._ended) > _ENDED_KEPT:
                del self._ended[next(iter(self._ended))]
            for waiting in [w for w in self._waiting if w[0] == key]:
                del self._waiting[waiting]
            log.info("group ended", extra={"group": key[0], "run": key[1]})
