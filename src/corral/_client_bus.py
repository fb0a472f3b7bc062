"""What only the bus has, on :class:`corral.Client`: the registry, node events, agents,
reports, data streams. On an HTTP client each raises :class:`~corral.errors.UsageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from corral import bus, subjects, wire
from corral.bus import gather_agents
from corral.errors import ControllerUnavailable, Timeout
from corral.streams import StreamReader

__all__ = ["BusMethods"]


class BusMethods:
    """Bus-only methods (mixed into :class:`corral.Client`)."""

    timeout: float
    identity: str

    async def _bus_connection(self, method: str) -> bus.NATS:
        raise NotImplementedError  # provided by the client

    @property
    def nc(self) -> bus.NATS:
        raise NotImplementedError  # provided by the client

    async def nodes(self) -> list[wire.NodeView]:
        """Every node in the registry, ordered by name.

        Raises:
            ControllerUnavailable: no controller is running.
            Timeout: the controller did not answer in time.
        """
        reply: wire.NodesReply = await bus.request(
            await self._bus_connection("nodes"),
            subjects.ctl("nodes"),
            wire.NodesRequest(),
            wire.NodesReply,
            timeout=self.timeout,
        )
        return reply.nodes

    async def stats(self) -> wire.StatsReply:
        """The controller's counters (messages handled, rejected by reason).

        Raises:
            ControllerUnavailable: no controller is running.
            Timeout: the controller did not answer in time.
        """
        reply: wire.StatsReply = await bus.request(
            await self._bus_connection("stats"),
            subjects.ctl("stats"),
            wire.StatsRequest(),
            wire.StatsReply,
            timeout=self.timeout,
        )
        return reply

    async def agents(self, wait: float = 0.5) -> list[wire.AgentInfo]:
        """Every live agent, as each describes itself, ordered by name.

        Agents answer a broadcast; those that answer within ``wait`` seconds are listed.
        """
        return await gather_agents(await self._bus_connection("agents"), wait)

    async def auth_event(self, event: wire.AuthEvent) -> None:
        """Tell the controller about an enrollment or revocation (audit log, registry).

        Raises:
            ControllerUnavailable: no controller is running.
        """
        subject = subjects.ctl_as("auth", self.identity)
        nc = await self._bus_connection("auth_event")
        await bus.request(nc, subject, event, wire.Ok, timeout=self.timeout)

    async def wait_for(
        self, predicate: Callable[[list[wire.NodeView]], bool], timeout: float
    ) -> list[wire.NodeView]:
        """Wait until ``predicate(nodes)`` holds for the registry.

        The registry is read now and again each time the controller publishes a node
        transition, so the wait ends as soon as the condition becomes true.

        Raises:
            Timeout: it did not become true within ``timeout`` seconds.
        """
        changed = asyncio.Event()

        async def on_event(_: object) -> None:
            changed.set()

        nc = await self._bus_connection("wait_for")
        sub = await nc.subscribe(subjects.node_events(), cb=on_event)
        nodes: list[wire.NodeView] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    try:
                        nodes = await self.nodes()
                    except ControllerUnavailable:
                        nodes = []
                    if predicate(nodes):
                        return nodes
                    # Re-read at least every second: a controller that was down publishes
                    # nothing about the time it was away.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 1.0)
        except TimeoutError:
            raise Timeout(
                f"condition not met within {timeout}s; last registry: {nodes!r}"
            ) from None
        finally:
            await sub.unsubscribe()

    async def events(self) -> AsyncIterator[wire.NodeEvent]:
        """Node status transitions as they happen (an endless async iterator)."""
        nc = await self._bus_connection("events")
        sub = await nc.subscribe(subjects.node_events())
        try:
            async for msg in sub.messages:
                yield wire.decode(msg.data, wire.NodeEvent, msg.headers)
        finally:
            if not nc.is_closed:
                await sub.unsubscribe()

    async def reports(self, topic: str = "") -> wire.ReportUpdate:
        """The latest report of every node (on ``topic``, if given), with the aggregates."""
        reply: wire.ReportUpdate = await bus.request(
            await self._bus_connection("reports"),
            subjects.ctl("reports"),
            wire.ReportsQuery(topic=topic),
            wire.ReportUpdate,
            timeout=self.timeout,
        )
        return reply

    def stream(self, node: str, stream: str, window: int = 100) -> StreamReader:
        """Read ``node``'s data stream ``stream`` with flow control (``async with`` it).

        Raises:
            InvalidName: a bad node or stream name.
            UsageError: ``window`` is less than 1.
        """
        return StreamReader(self.nc, node, stream, window)
