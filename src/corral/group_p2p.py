"""Point-to-point values between two members of a group (socketComm's ``writeDataTo`` /
``readDataFrom``) and ``info``: the part of :class:`corral.group.Group` that does them.

Theory of operation: a sender numbers its values to each receiver 1, 2, 3, ... and publishes
each value's chunks on the receiver's inbox subject (:func:`corral.subjects.group_p2p`). The
bus keeps one publisher's messages on one subject in order, but the receiver does not rely on
it: it reassembles chunks per (sender, number) and hands values out strictly by number, so a
reader always gets a sender's values in the order they were written, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
import nats.errors

from corral import bus, subjects, wire
from corral.core.group import RESUME
from corral.errors import (
    ControllerUnavailable,
    CorralError,
    GroupRefused,
    GroupTimeout,
    MalformedMessage,
    UsageError,
)

__all__ = [
    "Inbox",
    "PointToPoint",
    "arrive_across_takeovers",
    "coordinator_request",
    "encode_value",
    "join_across_takeovers",
]

_ENCODER = msgspec.msgpack.Encoder()

R = TypeVar("R")


class Inbox:
    """Values sent to this member, per sender rank, handed out in the order they were sent."""

    def __init__(self) -> None:
        # src -> number -> the value's pieces so far
        self._parts: dict[int, dict[int, list[bytes | None]]] = {}
        self._next: dict[int, int] = {}  # src -> number of the next value to hand out
        self._arrived: dict[int, asyncio.Event] = {}

    def __repr__(self) -> str:
        waiting = {src: len(p) for src, p in self._parts.items() if p}
        return f"<Inbox waiting={waiting}>"

    def add(self, src: int, seq: int, index: int, total: int, data: bytes) -> None:
        """Store one chunk of value ``seq`` from ``src`` (duplicates and old values ignored).

        Args:
            src: the sender's rank.
            seq: the value's number from this sender (1, 2, ...).
            index: the chunk's place in the value.
            total: how many chunks the value has.
            data: the chunk.
        """
        if seq < self._next.get(src, 1) or not 0 <= index < total:
            return
        parts = self._parts.setdefault(src, {}).setdefault(seq, [None] * total)
        if len(parts) != total:
            return  # a malformed chunk: its value's pieces disagree on the count
        parts[index] = data
        if all(p is not None for p in parts):
            self._event(src).set()

    def _event(self, src: int) -> asyncio.Event:
        return self._arrived.setdefault(src, asyncio.Event())

    def ready(self, src: int) -> bool:
        """True if the next value from ``src`` arrived whole (and :meth:`take` returns it)."""
        parts = self._parts.get(src, {}).get(self._next.get(src, 1))
        return parts is not None and all(p is not None for p in parts)

    def take(self, src: int) -> bytes | None:
        """The next value from ``src`` if it arrived whole, else None."""
        seq = self._next.get(src, 1)
        parts = self._parts.get(src, {}).get(seq)
        if parts is None or any(p is None for p in parts):
            return None
        del self._parts[src][seq]
        self._next[src] = seq + 1
        return b"".join(p for p in parts if p is not None)

    async def wait(self, src: int, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` seconds for the next value from ``src``.

        Returns:
            The value's bytes, or None if it did not arrive in time.
        """
        event = self._event(src)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (value := self.take(src)) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return self.take(src)
        return value


class PointToPoint:
    """The point-to-point calls of a group member (mixed into :class:`corral.group.Group`)."""

    nc: bus.NATS
    name: str
    run: str
    member: str
    id: str
    rank: int
    size: int
    asked: int
    _inbox: Inbox
    _sent: dict[int, int]
    _poll: float
    _early: list[Any]
    _p2p_any: Any
    _alive_at: dict[int, float]

    async def _publish(self, seq: int, to: str, data: bytes, subject: str = "") -> None:
        raise NotImplementedError  # the group's chunked publish

    async def _own_inbox(self) -> None:
        # Until our rank was known every inbox was heard; now only ours, then the early ones.
        await self.nc.subscribe(
            subjects.group_p2p(self.name, self.id, str(self.rank)),
            cb=self._on_p2p,
            pending_bytes_limit=1 << 30,
        )
        await self.nc.flush()
        await self._p2p_any.unsubscribe()
        early, self._early = self._early, []
        for msg in early:
            await self._on_p2p(msg)

    async def write_data_to(self, rank: int, value: Any, timeout: float = 30.0) -> None:
        """Send ``value`` to member ``rank`` (socketComm's ``writeDataTo``).

        Returns once the value is on the bus; ``rank`` reads it with :meth:`read_data_from`.
        Values from one member to another are read in the order they were written.

        Args:
            rank: the receiving member's rank.
            value: msgpack-able data (any size: large values travel in chunks).
            timeout: seconds to wait for the coordinator's word on whether ``rank`` lives.

        Raises:
            UsageError: ``rank`` is not a rank of this group, or is this member's own.
            GroupRefused: ``rank`` died or left the group.
            MalformedMessage: ``value`` is not msgpack-able.
            GroupTimeout: the coordinator did not answer within ``timeout``.
        """
        self._check_peer(rank)
        data = encode_value(value)
        await self._refuse_if_gone(rank, timeout, "nothing can be sent to it")
        seq = self._sent[rank] = self._sent.get(rank, 0) + 1
        await self._publish(seq, "", data, subjects.group_p2p(self.name, self.id, str(rank)))

    async def read_data_from(self, rank: int, timeout: float = 30.0) -> Any:
        """Return the next value member ``rank`` wrote to this one (socketComm's
        ``readDataFrom``); wait for it if none came yet.

        Values that arrived before ``rank`` died or left are still read, in order.

        Args:
            rank: the sending member's rank.
            timeout: seconds to wait for the value.

        Raises:
            UsageError: ``rank`` is not a rank of this group, or is this member's own.
            GroupRefused: ``rank`` died or left the group with nothing more sent.
            GroupTimeout: nothing came from ``rank`` within ``timeout`` (``missing`` is
                ``(rank,)``).
        """
        self._check_peer(rank)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            data = await self._inbox.wait(rank, max(0.0, min(self._poll, left)))
            if data is not None:
                return msgspec.msgpack.decode(data)
            if loop.time() >= deadline:
                raise GroupTimeout(
                    f"nothing came from rank {rank} of group {self.name!r} within {timeout}s",
                    (rank,),
                )
            await self._refuse_if_gone(rank, max(1.0, left), "and sent nothing more", True)

    async def info(self, rank: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """What the coordinator knows of member ``rank`` (default: this member).

        Returns:
            ``group``, ``run``, ``id``, ``size``, ``asked``, ``rank``, ``host``, ``pid`` and
            ``state`` (``alive``, ``dead`` or ``left``) of that rank.

        Raises:
            UsageError: ``rank`` is not a rank of this group.
            GroupTimeout: the coordinator did not answer within ``timeout``.
        """
        rank = self.rank if rank is None else rank
        if not 0 <= rank < self.size:
            raise UsageError(self._no_such_rank(rank))
        known = await self._ask_info(timeout)
        (entry,) = [r for r in known.ranks if r.rank == rank] or [
            wire.GroupRank(rank=rank, host="", pid=0, state="dead")
        ]
        return {
            "group": self.name,
            "run": self.run,
            "id": self.id,
            "size": self.size,
            "asked": self.asked,
            "rank": rank,
            "host": entry.host,
            "pid": entry.pid,
            "state": entry.state,
        }

    def _no_such_rank(self, rank: int) -> str:
        return (
            f"group {self.name!r} has no rank {rank}: its ranks are 0..{self.size - 1} "
            f"({self.size} members)"
        )

    def _check_peer(self, rank: int) -> None:
        if not 0 <= rank < self.size:
            raise UsageError(self._no_such_rank(rank))
        if rank == self.rank:
            raise UsageError(f"rank {rank} is this member: point-to-point needs another rank")

    async def _ask_info(self, timeout: float) -> wire.GroupInfo:
        ask = wire.GroupInfoRequest(member=self.member, run=self.run)
        subject = subjects.group(self.name, "info")
        known: wire.GroupInfo = await coordinator_request(
            self.nc, subject, ask, wire.GroupInfo, timeout
        )
        return known

    async def _refuse_if_gone(
        self, rank: int, timeout: float, what: str, reading: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        if not reading and loop.time() - self._alive_at.get(rank, -math.inf) < self._poll:
            return  # alive a heartbeat ago: a burst of writes asks the coordinator once
        known = await self._ask_info(timeout)
        state = next((r.state for r in known.ranks if r.rank == rank), "dead")
        if state == "alive":
            self._alive_at[rank] = loop.time()
            return
        if reading and self._inbox.ready(rank):
            return  # its last values came in while we asked: read them first
        how = "died" if state == "dead" else "left the group"
        raise GroupRefused(f"rank {rank} of group {self.name!r} {how}; {what}")

    async def _on_p2p(self, msg: Any) -> None:
        if self.rank < 0:
            self._early.append(msg)
            return
        try:
            chunk = wire.decode(msg.data, wire.GroupChunk, msg.headers)
        except CorralError:
            return
        tokens = msg.subject.split(".")
        group_id, to = tokens[3], tokens[-1]
        if group_id != self.id or to != str(self.rank) or chunk.src == self.rank:
            return
        self._inbox.add(chunk.src, chunk.seq, chunk.index, chunk.total, chunk.data)


def encode_value(value: Any) -> bytes:
    """``value`` as msgpack, for a group message.

    Raises:
        MalformedMessage: it is not msgpack-able.
    """
    try:
        return _ENCODER.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise MalformedMessage(f"group values must be msgpack-able: {exc}") from None


async def coordinator_request(
    nc: bus.NATS, subject: str, msg: msgspec.Struct, kind: Any, timeout: float
) -> Any:
    """Ask the group coordinator (in the controller) and decode its ``kind`` reply.

    Raises:
        ControllerUnavailable: no coordinator answers.
        GroupTimeout: it did not answer within ``timeout`` seconds.
    """
    try:
        reply = await nc.request(subject, wire.encode(msg), timeout=timeout, headers=wire.HEADERS)
    except nats.errors.NoRespondersError:
        raise ControllerUnavailable(
            "no group coordinator answers: process groups need a running controller "
            "(`corral up` or `corral controller`)"
        ) from None
    except nats.errors.TimeoutError:
        raise GroupTimeout(f"the group coordinator did not answer within {timeout}s") from None
    return wire.decode_reply(reply.data, kind, reply.headers)


async def _unless_nudged(
    request: Coroutine[Any, Any, R], lost: asyncio.Event
) -> asyncio.Future[R] | None:
    """Run ``request`` until it ends (its future, done) or ``lost`` is set first (None: the
    request is cancelled). If the caller is cancelled meanwhile, so is the request: nothing
    is left waiting for a reply nobody reads."""
    call = asyncio.ensure_future(request)
    nudged = asyncio.ensure_future(lost.wait())
    try:
        await asyncio.wait({call, nudged}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        call.cancel()
        raise
    finally:
        nudged.cancel()
    if call.done():
        return call
    call.cancel()
    return None


async def join_across_takeovers(
    nc: bus.NATS, subject: str, request: wire.GroupJoin, lost: asyncio.Event, poll: float
) -> wire.GroupFormed:
    """Join a group, through a controller restart or takeover while it forms.

    The join is sent again, with the start-up time left, when ``lost`` is set (a new
    coordinator, which knows no forming group, nudged this member: the old one will never
    answer) and while no coordinator answers at all (every ``poll`` seconds). The new
    coordinator forms the group from the members' joins as the old one did.

    Raises:
        ControllerUnavailable: still no coordinator at the deadline.
        GroupTimeout: the group did not form within the start-up time (+10 s).
        GroupRefused: the coordinator refused the join.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.startup_timeout + 10
    while True:
        left = deadline - loop.time()
        ask = msgspec.structs.replace(request, startup_timeout=max(0.0, left - 10))
        lost.clear()
        call = await _unless_nudged(
            coordinator_request(nc, subject, ask, wire.GroupFormed, max(left, 0.001)), lost
        )
        if call is None:
            continue  # the coordinator that had this join is gone: join the new one
        try:
            formed: wire.GroupFormed = call.result()
            return formed
        except ControllerUnavailable:
            if loop.time() + poll >= deadline:
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), poll)  # a nudge: a coordinator is back


async def arrive_across_takeovers(
    nc: bus.NATS,
    subject: str,
    request: wire.GroupArrive,
    lost: asyncio.Event,
    resume: Callable[[], Awaitable[None]],
    poll: float,
) -> wire.GroupRound:
    """Ask the coordinator for a collective's round, through a controller restart or takeover.

    The call is made again, after ``resume``, when the coordinator says it does not know the
    group (a refusal with the resume step), when ``lost`` is set (a new coordinator nudged
    this member while it waited: the old one will never answer), and while no coordinator
    answers at all (every ``poll`` seconds, up to the call's deadline).

    Raises:
        ControllerUnavailable: still no coordinator at the deadline.
        GroupTimeout: no answer within the call's timeout (+10 s).
        GroupRefused: the coordinator refused the call (its ``step`` says where to call).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.timeout + 10
    needs_resume, resumes = False, 0
    while True:
        left = deadline - loop.time()
        try:
            if needs_resume:
                resumes += 1
                await resume()
                needs_resume = False
            lost.clear()
            call = await _unless_nudged(
                coordinator_request(nc, subject, request, wire.GroupRound, max(left, 0.001)),
                lost,
            )
            if call is None:
                needs_resume = True  # the coordinator that had this call is gone
                continue
            result: wire.GroupRound = call.result()
            return result
        except GroupRefused as exc:
            if exc.step != RESUME or resumes >= 5:
                raise  # (a coordinator that keeps forgetting us is not waited for forever)
            needs_resume = True
        except ControllerUnavailable:
            if loop.time() + poll >= deadline:
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), poll)  # a nudge: a coordinator is back
            needs_resume = True
