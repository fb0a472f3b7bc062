"""Process groups: a barrier that survives crashes, collect, distribute (socketComm).

Theory of operation: members coordinate through the controller's group coordinator
(:mod:`corral.controller.groups`), which decides when a group formed and when a collective
completed, and notices dead members by their silence. Values do not pass through it: a member
publishes its value, split into chunks no larger than the bus allows, straight to the members
that need it (``collect``: rank 0; ``distribute``: everyone) *before* it arrives at the
collective, so when the coordinator says "done" the data is already on its way. Every member
heartbeats while it is in the group; one that stops is declared dead after ``down_after``
seconds and every collective completes without it, reporting it missing.

    g = await Group.join("sweep-42", size=8)
    reached = await g.barrier(timeout=30)
    rows = await g.collect(my_row)          # rank 0: [row of rank 0, row of rank 1, ...]
    params = await g.distribute(params)     # rank 0's value, on every rank
    await g.write_data_to(1, row)           # point to point, in order per pair
    row = await g.read_data_from(0)

Point-to-point values go straight to the receiver's inbox subject, chunked the same way; the
coordinator is asked only whether the peer is still alive (before a write, and while a read
waits), so a dead or departed peer is an error within a heartbeat of the coordinator's verdict.

The coordinator keeps groups in memory only. A new one (the controller restarted, or a standby
took over) answers a member it does not know on its heartbeat's reply subject, or refuses its
collective with the resume step; the member then resumes (its own rank, the size, the group id
and the collective it calls next) and calls the refused collective again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from types import TracebackType
from typing import Any

import msgspec

from corral import bus, subjects, wire
from corral.config import Config, load_config
from corral.errors import (
    CorralError,
    GroupRefused,
    GroupTimeout,
    UsageError,
)
from corral.group_p2p import (
    Inbox,
    PointToPoint,
    arrive_across_takeovers,
    coordinator_request,
    encode_value,
    join_across_takeovers,
)
from corral.security import GROUP_INBOX

__all__ = ["Collected", "Group", "Reached"]

# Headroom below the server's max_payload for the chunk's own fields and headers.
_CHUNK_OVERHEAD = 4096


class Reached(list[int]):
    """What :meth:`Group.barrier` returns: the ranks that reached it, still alive.

    It is the plain list of ranks it always was, plus ``missing`` (every other rank) and
    ``left_out``: why each missing rank was not counted — ``"dead"``, ``"departed"``,
    ``"out of step: called collect #3"``, ``"reached, then died"`` or
    ``"reached, then departed"``.
    """

    missing: tuple[int, ...] = ()
    left_out: dict[int, str] = {}  # set per instance


class Collected(list[Any]):
    """What rank 0 gets from :meth:`Group.collect`: one value per rank (None where missing).

    ``missing`` lists the ranks without a value, ``left_out`` why each was left out (as in
    :class:`Reached`).
    """

    missing: tuple[int, ...] = ()
    left_out: dict[int, str] = {}  # set per instance


def _env(name: str) -> str | None:
    return os.environ.get(f"CORRAL_GROUP{name}")


class Group(PointToPoint):
    """One member of a process group. Create with :meth:`join`."""

    def __init__(self, nc: bus.NATS, name: str, run: str, member: str) -> None:
        self.nc = nc
        self.name = name
        self.run = run
        self.member = member
        #: the group instance's id (a new one for every run)
        self.id = ""
        #: this member's rank, 0..size-1
        self.rank = -1
        #: members in the group (less than ``asked`` after start-up failures)
        self.size = 0
        #: the size the members asked for
        self.asked = 0
        self._seq = 0
        # (group id, collective, source rank) -> the value's pieces so far
        self._chunks: dict[tuple[str, int, int], list[bytes | None]] = {}
        self._complete: dict[tuple[str, int, int], asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._to_rank0: Any = None
        self._p2p_any: Any = None
        self._early: list[Any] = []  # point-to-point chunks that came before our rank
        self._inbox = Inbox()
        self._sent: dict[int, int] = {}  # receiver rank -> number of values sent to it
        self._poll = 1.0
        self._alive_at: dict[int, float] = {}  # rank -> when the coordinator said alive
        self._in_flight = False  # a collective call waits for the coordinator
        self._lost = asyncio.Event()  # a new coordinator nudged us while a call waited
        self._resuming: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Group {self.name!r} rank {self.rank}/{self.size} run={self.run or '-'} "
            f"collectives={self._seq}>"
        )

    # --- joining ------------------------------------------------------------------------

    @classmethod
    async def join(
        cls,
        name: str | None = None,
        size: int | None = None,
        rank: int | None = None,
        *,
        startup_timeout: float = 50.0,
        allow_startup_failures: bool = False,
        run: str | None = None,
        config: Config | None = None,
    ) -> Group:
        """Join group ``name`` and wait until it forms.

        Unset arguments come from ``CORRAL_GROUP``, ``CORRAL_GROUP_SIZE``,
        ``CORRAL_GROUP_RANK`` and ``CORRAL_GROUP_RUN`` (what ``corral launch`` sets).

        Args:
            name: the group's name.
            size: how many members to wait for.
            rank: this member's rank, or None to be given one.
            startup_timeout: seconds to wait for the others.
            allow_startup_failures: after the timeout, form with the members that made it,
                renumbered 0..n-1 (``size`` is then n).
            run: an id that keeps two runs of one group name apart.
            config: how to reach the bus.

        Raises:
            UsageError: no name or size given or in the environment.
            GroupTimeout: the group did not form in time (start-up failures not allowed).
            GroupRefused: the rank is taken, the size disagrees, or the group already runs.
            ControllerUnavailable: no controller (the coordinator) is running.
        """
        name = name or _env("")
        size = size if size is not None else int(_env("_SIZE") or 0)
        rank = rank if rank is not None else (int(r) if (r := _env("_RANK")) else None)
        run = run if run is not None else (_env("_RUN") or "")
        if not name or size < 1:
            raise UsageError("Group.join needs a name and a size >= 1 (or CORRAL_GROUP[_SIZE])")
        subjects.check_name(name, "group")
        config = config or load_config()[0]
        nc = await bus.connect(config, "group", inbox_prefix=GROUP_INBOX, name=f"group-{name}")
        member = uuid.uuid4().hex
        self = cls(nc, name, run, member)
        self._poll = config.heartbeat_interval
        nudges = nc.new_inbox()
        beat = asyncio.create_task(_beat(nc, name, run, member, config.heartbeat_interval, nudges))
        self._tasks.append(beat)
        try:
            await nc.subscribe(nudges, cb=self._on_nudge)
            # Listen before joining: a member told "formed" first may send its value at once.
            await self._subscribe()
            request = wire.GroupJoin(
                member=member,
                size=size,
                run=run,
                rank=rank,
                startup_timeout=startup_timeout,
                allow_startup_failures=allow_startup_failures,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
            formed = await join_across_takeovers(
                nc, subjects.group(name, "join"), request, self._lost, self._poll
            )
            self.id, self.rank, self.size, self.asked = (
                formed.group_id,
                formed.rank,
                formed.size,
                formed.asked,
            )
            if self.rank != 0:
                await self._to_rank0.unsubscribe()  # collect traffic is for rank 0 only
            await self._own_inbox()
        except BaseException:
            beat.cancel()
            await nc.close()
            raise
        return self

    # --- a new coordinator --------------------------------------------------------------

    async def _on_nudge(self, msg: Any) -> None:
        # The coordinator does not know this member (it is new): resume, once at a time; a
        # collective call (or the join of a group still forming) waiting on the old one calls
        # again.
        if self._in_flight or not self.id:  # a collective, or the join, waits on the old one
            self._lost.set()
        elif self.id and (self._resuming is None or self._resuming.done()):
            self._resuming = asyncio.create_task(self._resume_quietly())

    async def _resume_quietly(self) -> None:
        with contextlib.suppress(CorralError, asyncio.TimeoutError):
            await self._resume(self._seq + 1)

    async def _resume(self, seq: int) -> None:
        """Tell a coordinator that lost this group who this member is (its own rank only)."""
        request = wire.GroupResume(
            member=self.member,
            group_id=self.id,
            rank=self.rank,
            size=self.size,
            asked=self.asked,
            seq=seq,
            run=self.run,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        await coordinator_request(
            self.nc, subjects.group(self.name, "resume"), request, wire.GroupFormed, 10.0
        )

    async def _subscribe(self) -> None:
        limit = 1 << 30  # large values arrive in a few big chunks
        await self.nc.subscribe(
            subjects.group_data(self.name, "*", "all"),
            cb=self._on_chunk,
            pending_bytes_limit=limit,
        )
        self._to_rank0 = await self.nc.subscribe(
            subjects.group_data(self.name, "*", "0"),
            cb=self._on_chunk,
            pending_bytes_limit=limit,
        )
        self._p2p_any = await self.nc.subscribe(
            subjects.group_p2p(self.name, "*", "*"),
            cb=self._on_p2p,
            pending_bytes_limit=limit,
        )
        await self.nc.flush()

    async def leave(self) -> None:
        """Leave the group (the others' collectives no longer wait for this member)."""
        for task in self._tasks:
            task.cancel()
        if not self.nc.is_closed:
            leave = wire.GroupLeave(member=self.member, run=self.run)
            with contextlib.suppress(Exception):
                await self.nc.publish(
                    subjects.group(self.name, "leave"), wire.encode(leave), headers=wire.HEADERS
                )
                await self.nc.drain()

    async def __aenter__(self) -> Group:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.leave()

    # --- collectives --------------------------------------------------------------------

    async def barrier(self, timeout: float = 30.0) -> Reached:
        """Wait for every live member; return the ranks that reached the barrier.

        Returns:
            The ranks that reached it and were alive when it completed (a list), with
            ``missing`` and ``left_out`` saying who was not counted and why.

        Raises:
            GroupTimeout: not every live member arrived within ``timeout`` (``missing`` says
                who, ``left_out`` why).
            GroupRefused: this member is out of step (this call only was not counted: call
                again) or was declared dead.
            ControllerUnavailable: no coordinator answered by the call's deadline (a
                restarted or new one is waited for until then, and the call made again).
        """
        done = await self._arrive("barrier", timeout)
        reached = Reached(done.reached)
        reached.missing, reached.left_out = done.missing, dict(done.left_out)
        return reached

    async def collect(self, value: Any, timeout: float = 30.0) -> Collected | None:
        """Gather every member's ``value`` at rank 0, in rank order.

        Returns:
            On rank 0, a list with one value per rank (None for a member that died, listed in
            its ``missing``); on the others, None.

        Raises:
            MalformedMessage: ``value`` is not msgpack-able.
            GroupTimeout, GroupRefused: as :meth:`barrier`.
        """
        seq = self._seq + 1
        data = encode_value(value)
        if self.rank != 0:
            await self._publish(seq, "0", data)
            await self._arrive("collect", timeout)
            return None
        done = await self._arrive("collect", timeout)
        out = Collected([None] * self.size)
        out.missing, out.left_out = done.missing, dict(done.left_out)
        out[0] = value
        for src in done.reached:
            if src != 0:
                out[src] = msgspec.msgpack.decode(await self._received(seq, src, timeout))
        return out

    async def distribute(self, value: Any = None, timeout: float = 30.0) -> Any:
        """Return rank 0's ``value`` on every rank (the others' ``value`` is ignored).

        Raises:
            MalformedMessage: rank 0's ``value`` is not msgpack-able.
            GroupRefused: rank 0 died before distributing.
            GroupTimeout: as :meth:`barrier`.
        """
        seq = self._seq + 1
        if self.rank == 0:
            await self._publish(seq, "all", encode_value(value))
            await self._arrive("distribute", timeout)
            return value
        done = await self._arrive("distribute", timeout)
        if 0 not in done.reached:
            why = done.left_out.get(0, "dead")
            how = "died" if "died" in why or why == "dead" else f"left ({why})"
            raise GroupRefused(f"rank 0 of group {self.name!r} {how} before distributing")
        return msgspec.msgpack.decode(await self._received(seq, 0, timeout))

    async def _arrive(self, kind: str, timeout: float) -> wire.GroupRound:
        self._seq += 1
        # Values of earlier collectives nobody will read (a refused call's, say) are dropped.
        for stale in [k for k in self._chunks if k[1] < self._seq]:
            del self._chunks[stale]
            self._complete.pop(stale, None)
        request = wire.GroupArrive(
            member=self.member, kind=kind, seq=self._seq, timeout=timeout, run=self.run
        )
        self._in_flight = True
        try:
            done = await arrive_across_takeovers(
                self.nc,
                subjects.group(self.name, "arrive"),
                request,
                self._lost,
                lambda: self._resume(request.seq),
                self._poll,
            )
        except GroupRefused as exc:
            # Not counted: the next call is made at the group's current collective.
            self._seq = exc.step - 1 if exc.step > 0 else self._seq - 1
            raise
        finally:
            self._in_flight = False
        if done.error:
            raise GroupTimeout(done.error, done.missing, done.left_out)
        return done

    # --- values -------------------------------------------------------------------------

    async def _publish(self, seq: int, to: str, data: bytes, subject: str = "") -> None:
        size = max(1024, self.nc.max_payload - _CHUNK_OVERHEAD)
        total = max(1, -(-len(data) // size))
        subject = subject or subjects.group_data(self.name, self.id, to)
        for index in range(total):
            piece = data[index * size : (index + 1) * size]
            chunk = wire.GroupChunk(seq=seq, src=self.rank, index=index, total=total, data=piece)
            await self.nc.publish(subject, wire.encode(chunk), headers=wire.HEADERS)
        await self.nc.flush()

    async def _on_chunk(self, msg: Any) -> None:
        try:
            chunk = wire.decode(msg.data, wire.GroupChunk, msg.headers)
        except CorralError:
            return
        group_id = msg.subject.split(".")[3]
        if self.id and group_id != self.id or chunk.src == self.rank:
            return  # another run of this group name, or our own value
        key = (group_id, chunk.seq, chunk.src)
        parts = self._chunks.setdefault(key, [None] * chunk.total)
        parts[chunk.index] = chunk.data
        if all(p is not None for p in parts):
            self._complete.setdefault(key, asyncio.Event()).set()

    async def _received(self, seq: int, src: int, timeout: float) -> bytes:
        key = (self.id, seq, src)
        event = self._complete.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            raise GroupTimeout(
                f"the value of rank {src} for collective #{seq} did not arrive within {timeout}s",
                (src,),
            ) from None
        parts = self._chunks.pop(key)
        del self._complete[key]
        return b"".join(p for p in parts if p is not None)


async def _beat(nc: bus.NATS, name: str, run: str, member: str, every: float, nudges: str) -> None:
    # A coordinator that does not know this member answers on ``nudges`` (the others do not).
    data = wire.encode(wire.GroupBeat(member=member, run=run))
    subject = subjects.group(name, "beat")
    while True:
        if nc.is_connected:
            await nc.publish(subject, data, reply=nudges, headers=wire.HEADERS)
        await asyncio.sleep(every)
