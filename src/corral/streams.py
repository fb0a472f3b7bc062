"""Reading a node's data stream with flow control: :class:`StreamReader` (SEER STREAM).

>>> async with client.stream("daq1", "samples", window=500) as samples:   # doctest: +SKIP
...     async for value in samples:
...         process(value)
...     print(samples.dropped)   # items the node dropped because we were slower

The reader grants the node credit for ``window`` items and more as it consumes them, so the
node never sends faster than the reader reads; what the node produces meanwhile waits in its
bounded buffer, oldest dropped first, and ``dropped`` says how many were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from corral import bus, subjects, wire
from corral.errors import ControllerUnavailable, CorralError, Unavailable, UsageError

__all__ = ["StreamReader"]


class StreamReader:
    """A subscription to one stream of one node. Use ``async with`` and ``async for``.

    Args:
        nc: an admin connection.
        node: the node's name.
        stream: the stream's name.
        window: items the node may send ahead of what has been read (at least 1).
    """

    def __init__(self, nc: bus.NATS, node: str, stream: str, window: int = 100) -> None:
        if window < 1:
            raise UsageError(f"window must be at least 1 item, got {window}")
        self.nc = nc
        self.node = subjects.check_name(node)
        self.stream = subjects.check_name(stream, "stream")
        self.window = window
        self.sid = uuid.uuid4().hex[:16]
        #: items the node dropped for this reader because it was slower than the node
        self.dropped = 0
        #: the number of the next item expected (items are numbered from 0)
        self.seq = 0
        self._items: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._consumed = 0
        self._sub: Any = None
        self._keepalive: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"<StreamReader {self.node}/{self.stream} seq={self.seq} "
            f"buffered={len(self._items)} dropped={self.dropped}>"
        )

    async def _control(self, action: str, credit: int = 0) -> None:
        control = wire.StreamControl(action=action, stream=self.stream, sid=self.sid, credit=credit)
        await bus.request(
            self.nc, subjects.node_out(self.node, "stream"), control, wire.Ok, timeout=5.0
        )

    async def open(self) -> StreamReader:
        """Subscribe, then ask the node for the stream with the first window of credit.

        Raises:
            Refused: the node has no such stream.
            Unavailable: the node is not there (nobody answers).
        """
        self._sub = await self.nc.subscribe(
            subjects.stream_items(self.node, self.stream, self.sid), cb=self._on_items
        )
        try:
            await self._control("open", self.window)
        except ControllerUnavailable:
            await self._sub.unsubscribe()
            raise Unavailable(
                f"node {self.node} does not answer: it is not running or not connected "
                "(`corral nodes` shows its status)"
            ) from None
        self._keepalive = asyncio.create_task(self._keep_alive())
        return self

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(CorralError):
                await self._control("credit", 0)

    async def _on_items(self, msg: Any) -> None:
        try:
            batch = wire.decode(msg.data, wire.StreamItems, msg.headers)
        except CorralError:
            return
        self._items.extend(batch.items)
        self.dropped = max(self.dropped, batch.dropped)
        self._arrived.set()

    async def next(self, timeout: float | None = None) -> Any:
        """The next item (waiting up to ``timeout`` seconds for one).

        Raises:
            TimeoutError: nothing arrived in time.
        """
        while not self._items:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), timeout)
        item = self._items.popleft()
        self.seq += 1
        self._consumed += 1
        if self._consumed >= max(1, self.window // 2):
            granted, self._consumed = self._consumed, 0
            with contextlib.suppress(CorralError):
                await self._control("credit", granted)
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            yield await self.next()

    async def close(self) -> None:
        """Tell the node to stop sending, and unsubscribe."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        with contextlib.suppress(CorralError):
            await self._control("close")
        if self._sub is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def __aenter__(self) -> StreamReader:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
