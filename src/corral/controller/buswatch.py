"""Whether this controller's bus answers: a round trip every quarter lease (issue #13).

A leader cut off from the bus (its store still up) could renew its lease forever while it
reaches no node. :class:`BusWatch` asks the bus for a round trip (a NATS PING, see
:class:`corral.bus.RoundTrip`) every quarter of the lease, or of ``down_after`` if shorter,
and notes when it last answered. :class:`~corral.controller.leadership.Leadership` lets the
lease go once it has not answered for a whole lease (:meth:`BusWatch.lost`) and a standby
does not take the lease meanwhile; the controller defers DOWN while it is :meth:`BusWatch.deaf`
(the nodes' silence is then its own).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from corral.config import Config

__all__ = ["BusWatch"]

log = logging.getLogger("corral.controller")


class BusWatch:
    """Round trips to the bus in the background (see the module's documentation).

    Args:
        config: Its settings (``lease``, ``down_after``).
        probe: Returns once the bus answered, within the seconds given (raises otherwise).
    """

    def __init__(self, config: Config, probe: Callable[[float], Awaitable[None]]) -> None:
        self.config = config
        self._probe = probe
        #: when the bus last answered (monotonic; it was connected just now)
        self.answered = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<BusWatch answered {self.silence():.1f}s ago>"

    @property
    def every(self) -> float:
        """Seconds between round trips."""
        return min(self.config.lease, self.config.down_after) / 4

    def silence(self) -> float:
        """Seconds since the bus last answered."""
        return time.monotonic() - self.answered

    def deaf(self) -> bool:
        """Whether the last round trip is late (more than two round trips' worth)."""
        return self._task is not None and self.silence() > 2 * self.every

    def lost(self) -> bool:
        """Whether the bus has not answered for a whole lease."""
        return self._task is not None and self.silence() >= self.config.lease

    def left(self) -> float:
        """Seconds until :meth:`lost` (if the bus stays silent)."""
        return max(0.0, self.config.lease - self.silence())

    def start(self) -> None:
        """Start the round trips."""
        self._task = asyncio.create_task(self._run(), name="bus-watch")

    async def stop(self) -> None:
        """Stop them (:meth:`deaf` and :meth:`lost` are false from then on)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._probe(max(0.1, self.config.lease / 2))
                self.answered = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - nats-py raises many kinds: not answered
                log.debug("the bus did not answer: %r", exc)
            await asyncio.sleep(self.every)
