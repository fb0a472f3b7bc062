"""Continuous data streams from a node to subscribers, with flow control (SEER STREAM).

Theory of operation: a subscriber opens a stream by name on ``corral.node.<node>.stream``
with a *credit*: how many items it can take. The node sends each subscriber at most its
credit, in batches, on the subscriber's own subject; the subscriber grants more credit as it
consumes (and at least every second, which also says it is still there). Items the node
produces faster than a subscriber takes them wait in that subscriber's bounded buffer; when
the buffer is full the oldest item is dropped and counted, and the count travels with the
next batch. So a slow subscriber costs the node at most ``buffer`` items, never unbounded
memory, and a fast producer never waits. A subscriber silent for ``idle_after`` seconds is
forgotten.

>>> temperature = node.stream("temperature", buffer=10_000)   # doctest: +SKIP
>>> temperature.write(21.5)                                    # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from corral import bus, subjects, wire
from corral.errors import CorralError, NotFound

__all__ = ["NodeStream", "StreamHub"]

log = logging.getLogger("corral.node.streams")

#: Most items sent in one message.
_BATCH = 256


class _Subscriber:
    def __init__(self, sid: str, credit: int, buffer: int) -> None:
        self.sid = sid
        self.credit = credit
        self.pending: deque[Any] = deque(maxlen=buffer)
        self.dropped = 0
        self.seq = 0
        self.seen = time.monotonic()

    def offer(self, item: Any) -> int:
        full = len(self.pending) == self.pending.maxlen
        self.pending.append(item)  # a full deque drops its oldest itself
        self.dropped += full
        return int(full)


class NodeStream:
    """One named stream of a node: :meth:`write` items; subscribers get them as they can.

    Args:
        hub: the node's stream hub.
        name: the stream's name (a subject token).
        buffer: the most items kept per subscriber that has no credit left.
    """

    def __init__(self, hub: StreamHub, name: str, buffer: int) -> None:
        self.hub = hub
        self.name = name
        self.buffer = buffer
        self.subscribers: dict[str, _Subscriber] = {}
        self.written = 0
        #: items dropped so far, over every subscriber past and present
        self.dropped = 0
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        waiting = sum(len(s.pending) for s in self.subscribers.values())
        return (
            f"<NodeStream {self.name!r} subscribers={len(self.subscribers)} "
            f"written={self.written} buffered={waiting} dropped={self.dropped}>"
        )

    @property
    def buffered(self) -> int:
        """Items waiting for subscribers' credit right now (bounded by buffer x subscribers)."""
        return sum(len(s.pending) for s in self.subscribers.values())

    def write(self, item: Any) -> None:
        """Offer ``item`` to every subscriber; never blocks (a full buffer drops its oldest)."""
        self.written += 1
        if not self.subscribers:
            return
        for sub in self.subscribers.values():
            self.dropped += sub.offer(item)
        self._wake.set()

    def wake(self) -> None:
        """Have :meth:`pump` look again now (a subscriber came, went or got credit)."""
        self._wake.set()

    async def pump(self) -> None:
        """Send what each subscriber has credit for; forget silent subscribers (forever)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            now = time.monotonic()
            for sid, sub in list(self.subscribers.items()):
                if now - sub.seen > self.hub.idle_after:
                    del self.subscribers[sid]
                    continue
                while sub.credit > 0 and sub.pending:
                    n = min(sub.credit, _BATCH, len(sub.pending))
                    items = [sub.pending.popleft() for _ in range(n)]
                    await self.hub.send(self.name, sub, items)
                    sub.credit -= n


class StreamHub:
    """A node's streams and the control messages of their subscribers.

    Args:
        node: the node's name.
        idle_after: seconds without word from a subscriber after which it is forgotten.
    """

    def __init__(self, node: str, idle_after: float = 5.0) -> None:
        self.node = node
        self.idle_after = idle_after
        self.streams: dict[str, NodeStream] = {}
        self.nc: bus.NATS | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def stream(self, name: str, buffer: int = 1000) -> NodeStream:
        """The stream called ``name`` (created on first use, with a ``buffer`` per subscriber).

        Raises:
            InvalidName: ``name`` is not a valid name.
            UsageError: ``buffer`` is less than 1.
        """
        from corral.errors import UsageError

        subjects.check_name(name, "stream")
        if buffer < 1:
            raise UsageError(f"a stream buffer holds at least 1 item, got {buffer}")
        found = self.streams.get(name)
        if found is None:
            found = self.streams[name] = NodeStream(self, name, buffer)
            if self.nc is not None:
                self._tasks.append(asyncio.create_task(found.pump(), name=f"stream-{name}"))
        return found

    async def start(self, nc: bus.NATS) -> None:
        """Listen for subscribers and start pumping every stream."""
        self.nc = nc
        await nc.subscribe(subjects.node_out(self.node, "stream"), cb=self._on_control)
        for s in self.streams.values():
            self._tasks.append(asyncio.create_task(s.pump(), name=f"stream-{s.name}"))

    async def stop(self) -> None:
        """Stop pumping (subscribers see no more items and time out)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def send(self, stream: str, sub: _Subscriber, items: list[Any]) -> None:
        """Send ``items`` of ``stream`` to ``sub``."""
        assert self.nc is not None
        batch = wire.StreamItems(seq=sub.seq, items=items, dropped=sub.dropped)
        sub.seq += len(items)
        try:
            await self.nc.publish(
                subjects.stream_items(self.node, stream, sub.sid),
                wire.encode(batch),
                headers=wire.HEADERS,
            )
        except Exception as exc:  # unencodable item or a closed connection: say so, go on
            sub.dropped += len(items)
            log.warning("stream %s: %d items not sent: %s", stream, len(items), exc)

    async def _on_control(self, msg: Any) -> None:
        try:
            control = wire.decode(msg.data, wire.StreamControl, msg.headers)
            subjects.check_name(control.sid, "stream subscriber id")
        except CorralError as exc:
            log.warning("bad stream control ignored: %s", exc)
            return
        stream = self.streams.get(control.stream)
        if stream is None:
            if msg.reply and self.nc is not None:
                known = ", ".join(sorted(self.streams)) or "none"
                error = wire.error_reply(
                    NotFound(f"node {self.node} has no stream {control.stream!r} (it has: {known})")
                )
                await self.nc.publish(msg.reply, wire.encode(error), headers=wire.HEADERS)
            return
        sub = stream.subscribers.get(control.sid)
        if control.action == "open" and sub is None:
            sub = stream.subscribers[control.sid] = _Subscriber(
                control.sid, control.credit, stream.buffer
            )
        elif control.action == "close":
            stream.subscribers.pop(control.sid, None)
        elif sub is not None and control.action == "credit":
            sub.credit += max(control.credit, 0)
            sub.seen = time.monotonic()
        if msg.reply and self.nc is not None:
            await self.nc.publish(msg.reply, wire.encode(wire.Ok()), headers=wire.HEADERS)
        stream.wake()
