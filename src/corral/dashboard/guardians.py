"""The guardians page's source: every guardian's latest view, watched live from the bucket.

The watch starts the first time someone opens the page (a fleet without guardians never
pays for it) and keeps a name -> view map that the page and its events read. Requests and
mode changes go to the guardian itself through :class:`~corral.guardian.client.GuardianClient`
on the controller's connection, signed with the dashboard user's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from corral import wire
from corral.errors import CorralError
from corral.guardian.client import GuardianClient
from corral.guardian.graph import Graph, StateInfo
from corral.guardian.views import as_seen

if TYPE_CHECKING:
    from corral.controller.parts import ControllerParts

__all__ = ["GuardianBoard"]

log = logging.getLogger("corral.dashboard")


class GuardianBoard:
    """The latest view of every guardian, kept up to date by one KV watch.

    Args:
        controller: whose bus connection to use.
    """

    def __init__(self, controller: ControllerParts) -> None:
        self.ctl = controller
        self.views: dict[str, wire.GuardianView] = {}
        #: set once the stored views have been read (the page shows "loading" until then)
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<GuardianBoard {len(self.views)} guardians>"

    def client(self, by: str) -> GuardianClient:
        """A client on the controller's connection whose requests come from ``by``."""
        assert self.ctl.nc is not None
        return GuardianClient(self.ctl.nc, by=by, stale_after=self.ctl.config.down_after)

    def start(self) -> None:
        """Start watching (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="dashboard-guardians")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, CorralError):
                await self._task

    async def _watch(self) -> None:
        client = self.client("dashboard")
        while True:
            try:
                async with contextlib.aclosing(client.watch(">")) as views:
                    async for view in views:
                        if view is None:
                            self.ready.set()
                        else:
                            self.views[view.name] = view
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus hiccuped: watch again
                log.warning("guardian watch failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every guardian's view as JSON-able data, by name."""
        return [msgspec.to_builtins(self.seen(name)) for name in sorted(self.views)]

    def seen(self, name: str) -> wire.GuardianView:
        """Guardian ``name``'s view as a reader shows it (CONNECTION_ERROR once silent).

        Raises:
            KeyError: no view of that guardian.
        """
        return as_seen(self.views[name], self.ctl.config.down_after)

    async def graph(self, name: str) -> dict[str, Any]:
        """Guardian ``name``'s state graph as JSON-able data, for the browser to lay out.

        ``states`` in declaration order (``goto`` states have an implicit edge from every
        state, not listed), ``edges`` as ``[from, to]`` pairs, and the view (state, request,
        path) to highlight; the page's live updates move the highlight afterwards.

        Raises:
            NoSuchGuardian, Timeout: it is not running or did not answer.
            UsageError: the graph names an edge to a state it does not have.
        """
        reply = await self.client("dashboard").graph(name)
        g = Graph.build(
            (StateInfo(s.name, s.goto, s.request, s.index) for s in reply.states), reply.edges
        )
        return {
            "name": name,
            "states": [
                {"name": s.name, "goto": s.goto, "request": s.request, "index": s.index}
                for s in g.states
            ],
            "edges": [list(e) for e in g.edges],
            "view": msgspec.to_builtins(reply.view),
        }
