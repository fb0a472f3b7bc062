"""What a sender holds after sending a command: :class:`CommandHandle`.

>>> handle = await client.send("web*", "restart", service="nginx")    # doctest: +SKIP
>>> await handle.wait(timeout=30)                                      # doctest: +SKIP
>>> for node, outcome in handle.outcomes.items():                      # doctest: +SKIP
...     print(node, outcome.state, outcome.result or outcome.error)

Each target node's outcome is one of ``pending`` (did not answer yet), ``delivered`` (queued
behind an earlier command), ``running``, ``done`` (with ``result``), ``failed`` (with
``error``) or ``expired`` (the node was away past the retire window) — never an ambiguous
"did not return".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from corral import bus, subjects, wire
from corral.errors import Timeout
from corral.states import CommandState

__all__ = ["CommandHandle", "SETTLED"]

#: States after which a node's outcome no longer changes by itself.
SETTLED = frozenset(s for s in CommandState if s.last_word)
_S = CommandState
_ORDER = {_S.PENDING: 0, _S.DELIVERED: 1, _S.RUNNING: 2, _S.EXPIRED: 3, _S.DONE: 4, _S.FAILED: 4}


class CommandHandle:
    """A sent command: its serial, the nodes it resolved to, and their outcomes as they come.

    Created by :meth:`corral.Client.send` and friends; it follows the outcome updates the
    controller publishes until :meth:`close` (``wait`` and ``updates`` do that for you).
    """

    def __init__(self, nc: bus.NATS, accepted: wire.CommandAccepted, timeout: float) -> None:
        self.nc = nc
        self.serial = accepted.serial
        self.created = accepted.created
        self.nodes = list(accepted.nodes)
        #: exact targets that matched no node (reported, not ignored)
        self.unknown = list(accepted.unknown)
        self.timeout = timeout
        self.outcomes: dict[str, wire.OutcomeView] = {
            n: wire.OutcomeView(node=n, state=CommandState.PENDING, at=accepted.created)
            for n in self.nodes
        }
        self._changed = asyncio.Condition()
        self._sub: Any = None

    def __repr__(self) -> str:
        return f"<CommandHandle #{self.serial} {self.counts()}>"

    def counts(self) -> dict[str, int]:
        """How many nodes are in each state."""
        out: dict[str, int] = {}
        for o in self.outcomes.values():
            state = str(o.state)  # the plain word: these counts are printed and sent as JSON
            out[state] = out.get(state, 0) + 1
        return out

    @property
    def settled(self) -> bool:
        """True once every node is done, failed or expired."""
        return all(o.state in SETTLED for o in self.outcomes.values())

    @property
    def ok(self) -> bool:
        """True if settled, every node is done, and no exact target was unknown."""
        return not self.unknown and all(o.state == _S.DONE for o in self.outcomes.values())

    @property
    def results(self) -> dict[str, Any]:
        """The result of each node that is done."""
        return {n: o.result for n, o in self.outcomes.items() if o.state == _S.DONE}

    @property
    def failed(self) -> dict[str, str]:
        """The error of each node that failed or expired."""
        return {n: o.error for n, o in self.outcomes.items() if o.state in (_S.FAILED, _S.EXPIRED)}

    async def follow(self) -> None:
        """Subscribe to outcome updates, then read the current state (no update is missed)."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(
                subjects.command_events(self.serial), cb=self._on_update
            )
            await self.refresh()

    async def refresh(self) -> None:
        """Read every outcome from the controller now."""
        view: wire.CommandView = await bus.request(
            self.nc,
            subjects.ctl("command"),
            wire.CommandQuery(serial=self.serial),
            wire.CommandView,
            timeout=self.timeout,
        )
        await self.merge(view.outcomes)

    async def _on_update(self, msg: Any) -> None:
        try:
            update = wire.decode(msg.data, wire.CommandUpdate, msg.headers)
        except Exception:
            return
        await self.merge(update.outcomes)

    async def merge(self, outcomes: list[wire.OutcomeView]) -> None:
        """Take these outcomes where they are newer than the ones held (a view read from
        the controller, or an update)."""
        async with self._changed:
            for o in outcomes:
                old = self.outcomes.get(o.node)
                if old is None:
                    continue
                if _ORDER[o.state] < _ORDER.get(old.state, 0):
                    continue  # an older view arrived after a newer update
                # (updates carry the whole output so far, bounded by the controller)
                self.outcomes[o.node] = o
            self._changed.notify_all()

    async def wait(self, timeout: float | None = None) -> CommandHandle:
        """Wait until every node's outcome is settled.

        Returns:
            The handle itself.

        Raises:
            Timeout: not settled within ``timeout`` seconds; the message says how many nodes
                are in which state (the handle keeps following if you wait again).
        """
        await self.follow()
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.settled)
        except TimeoutError:
            raise Timeout(
                f"command #{self.serial} not settled within {timeout} s: {self.counts()}"
            ) from None
        return self

    async def updates(
        self, timeout: float | None = None
    ) -> AsyncIterator[dict[str, wire.OutcomeView]]:
        """Yield the outcomes each time they change, until settled (or ``timeout``)."""
        await self.follow()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        yield dict(self.outcomes)
        while not self.settled:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
            yield dict(self.outcomes)

    async def close(self) -> None:
        """Stop following updates."""
        if self._sub is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._sub = None
