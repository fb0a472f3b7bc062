"""A node's maps waiting for their answers: asked for, and asked for again, until answered.

A task's ``ctx.map`` reaches its node as a frame from the worker; the node asks the controller
(``TaskMap`` on ``corral.in.<node>.map``) and the worker waits for the answer (``TaskMapped``).
The map lives in the leading controller's memory, so an answer can be lost with it (a restart,
a takeover) or on the way. The node therefore keeps every map until its answer comes and asks
again after each hello and every :data:`MAP_REASK` seconds; the controller answers a repeat
(the same lease and ``seq``) from the same children, never new ones
(:mod:`corral.controller.task_maps`). An answer twice, or for an earlier map, is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from corral import bus, subjects, wire
from corral.errors import CorralError, RetryLater, Timeout, Unavailable

__all__ = ["MAP_REASK", "MapAsks"]

log = logging.getLogger("corral.node.workers")

#: Seconds between asks for a map still unanswered (its answer may have been lost)
MAP_REASK = 5.0

#: Called with the answer's fields ``[lease, ok, results, error, seq]``
Answer = Callable[[list[Any]], None]


class MapAsks:
    """The maps of one node's tasks that wait for their answers.

    Args:
        name: The node's name.
        bus_of: Returns the node's bus connection.
    """

    def __init__(self, name: str, bus_of: Callable[[], bus.NATS]) -> None:
        self.name = name
        self.bus_of = bus_of
        #: maps waiting for their answer, by the parent's lease: who to answer, the request
        self.pending: dict[str, tuple[Answer, wire.TaskMap]] = {}
        #: leases whose map is being asked for now
        self.asking: set[str] = set()
        #: the asks running in tasks of their own (see :meth:`reask`)
        self.tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<MapAsks {self.name} pending={len(self.pending)}>"

    async def ask(self, request: wire.TaskMap, answer: Answer) -> None:
        """Keep ``request`` until its answer comes (given to ``answer``), and ask for it."""
        self.pending[request.lease] = (answer, request)
        await self._ask(request.lease)

    def forget(self, lease: str) -> None:
        """The run under ``lease`` ended: its map (if any) waits for nothing any more."""
        self.pending.pop(lease, None)

    async def _ask(self, lease: str) -> None:
        """Ask the controller for the map of the task under ``lease`` until it takes it up
        (answers Ok) or refuses it (the map fails). Without an answer (no controller, a
        takeover), it is asked for again later (:meth:`reask`)."""
        if lease in self.asking:
            return
        self.asking.add(lease)
        try:
            while (entry := self.pending.get(lease)) is not None:
                answer, request = entry
                subject = subjects.node_in(self.name, subjects.TASK_MAP_VERB)
                try:
                    reply = await self.bus_of().request(
                        subject, wire.encode(request), timeout=30.0, headers=wire.HEADERS
                    )
                    wire.decode_reply(reply.data, wire.Ok, reply.headers)
                    return
                except RetryLater as exc:
                    await asyncio.sleep(min(max(exc.retry_after or 0.25, 0.05), MAP_REASK))
                except (Unavailable, Timeout) as exc:
                    log.info("map not taken up yet (%s); asking again later", exc)
                    return
                except CorralError as exc:  # refused: the map fails at once
                    del self.pending[lease]
                    answer(
                        [lease, False, None, f"map of {request.key!r} refused: {exc}", request.seq]
                    )
                    return
                except Exception as exc:  # no controller (no responders, a timeout)
                    log.info("map not taken up yet (%s); asking again later", type(exc).__name__)
                    return
        finally:
            self.asking.discard(lease)

    def reask(self) -> None:
        """Ask again for every map still unanswered (each in a task of its own)."""
        for lease in list(self.pending):
            if lease not in self.asking:
                ask = asyncio.create_task(self._ask(lease), name="tasks-map-ask")
                self.tasks.add(ask)
                ask.add_done_callback(self.tasks.discard)

    def mapped(self, done: wire.TaskMapped) -> None:
        """A map's answer: to its task, unless it is gone or the answer is not for this map."""
        entry = self.pending.get(done.lease)
        if entry is None or entry[1].seq != done.seq:
            return  # the parent is gone (killed, finished), or an answer sent twice
        del self.pending[done.lease]
        entry[0]([done.lease, done.ok, done.results, done.error, done.seq])
