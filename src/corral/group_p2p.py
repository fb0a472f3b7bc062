"""Point-to-point values between two members of a group (socketComm's ``writeDataTo`` /
``readDataFrom``): the receiving side.

Theory of operation: a sender numbers its values to each receiver 1, 2, 3, ... and publishes
each value's chunks on the receiver's inbox subject (:func:`corral.subjects.group_p2p`). The
bus keeps one publisher's messages on one subject in order, but the receiver does not rely on
it: it reassembles chunks per (sender, number) and hands values out strictly by number, so a
reader always gets a sender's values in the order they were written, each once.
"""

from __future__ import annotations

import asyncio

__all__ = ["Inbox"]


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
