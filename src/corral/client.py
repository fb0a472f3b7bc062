"""``corral.Client``: an operator's connection to the controller over the bus.

>>> async with await Client.connect(config) as client:      # doctest: +SKIP
...     for node in await client.nodes():
...         print(node.name, node.status)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

from corral import bus, subjects, wire
from corral.config import Config
from corral.errors import ControllerUnavailable, Timeout
from corral.security import ADMIN_INBOX
from corral.sender import gather_agents

__all__ = ["Client"]


class Client:
    """Requests to the controller, authenticated with the admin credential.

    Create with :meth:`connect`; use as an async context manager or call :meth:`close`.
    """

    def __init__(self, nc: bus.NATS, config: Config, timeout: float = 5.0) -> None:
        self.nc = nc
        self.config = config
        self.timeout = timeout

    def __repr__(self) -> str:
        state = "connected" if self.nc.is_connected else "closed"
        return f"<Client {self.config.bus_url} {state}>"

    @classmethod
    async def connect(
        cls, config: Config, *, creds: Path | None = None, wait: float = 0.0
    ) -> Client:
        """Connect to the bus as the admin role.

        Args:
            config: where the bus is and how to trust it.
            creds: the admin credentials file (default ``<data_dir>/auth/admin.creds``).
            wait: seconds to keep trying while the bus is unreachable.

        Raises:
            ConfigError: no credentials file.
            AuthError: the credential was refused.
            BusUnavailable: the bus could not be reached.
        """
        nc = await bus.connect(
            config, "admin", creds=creds, inbox_prefix=ADMIN_INBOX, wait=wait, name="corral-cli"
        )
        return cls(nc, config)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        if not self.nc.is_closed:
            await self.nc.close()

    async def nodes(self) -> list[wire.NodeView]:
        """Every node in the registry, ordered by name.

        Raises:
            ControllerUnavailable: no controller is running.
            Timeout: the controller did not answer in time.
        """
        reply: wire.NodesReply = await bus.request(
            self.nc,
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
            self.nc,
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
        return await gather_agents(self.nc, wait)

    async def auth_event(self, event: wire.AuthEvent) -> None:
        """Tell the controller about an enrollment or revocation (audit log, registry).

        Raises:
            ControllerUnavailable: no controller is running.
        """
        await bus.request(self.nc, subjects.ctl("auth"), event, wire.Ok, timeout=self.timeout)

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

        sub = await self.nc.subscribe(subjects.node_events(), cb=on_event)
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
        sub = await self.nc.subscribe(subjects.node_events())
        try:
            async for msg in sub.messages:
                yield wire.decode(msg.data, wire.NodeEvent, msg.headers)
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()
