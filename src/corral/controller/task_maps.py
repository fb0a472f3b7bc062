"""Maps (Pydra's parallel tasks) in the controller: a running task's subtasks, and its answer.

A task calls ``ctx.map(subtask, items)``; its node asks here (``corral.in.<node>.map``). The
items are queued as children of the task (``parent``, ``item``), and the task's node is lent
one slot while the task waits, so the children never wait for the slot their parent holds.
When the last child is on disk, the results go back in item order (``TaskMapped``); the first
child that fails or is cancelled ends the map at once with its error and cancels the others.

A map outlives its controller: the parent's node asks again (same lease, same ``seq``) until
the answer comes, after a restart or takeover too. A repeat of a map in memory is answered
``Ok``; one this controller does not have is found on disk (:mod:`corral.core.map_resume`):
its children finished before are read back, not run again, and those unfinished were taken
back with every other unfinished instance, so the map ends as it would have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from corral import bus, subjects, wire
from corral.core.map_resume import map_children
from corral.core.scheduler import Scheduler
from corral.core.taskstate import TaskInstance
from corral.errors import CorralError, NotFound
from corral.states import TaskStatus

__all__ = ["MapGroup", "TaskMaps"]

#: ``queue(key, args, *, priority, max_attempts, parent)``: the task service's queue call
Queue = Callable[..., Awaitable[list[TaskInstance]]]
#: ``read(parent)``: every stored child of ``parent``; ``read(None, ids)``: these instances
Read = Callable[[int | None, list[int]], Awaitable[list[TaskInstance]]]


class TaskMaps:
    """Every map in progress, by parent instance id.

    Args:
        core: The scheduler the parents run in (leases, lent slots, cancels).
        clock: Wall-clock source (seconds since the epoch).
        nc: The controller's bus connection (answers to the parents' nodes).
        queue: Queues the children (the task service's :meth:`queue`).
        next_id: The id the next queued instance will get.
        pump: Drains the scheduler's outboxes once a map has ended.
        read: Reads children from the store (a map asked again that is not in memory).
        unfinished: Whether an instance id has not ended on disk yet (it is active, or its
            end is not committed): its end still comes to :meth:`child_done`.
    """

    def __init__(
        self,
        *,
        core: Scheduler,
        clock: Callable[[], float],
        nc: bus.NATS,
        queue: Queue,
        next_id: Callable[[], int],
        pump: Callable[[], Awaitable[None]],
        read: Read,
        unfinished: Callable[[int], bool],
    ) -> None:
        self.core = core
        self.clock = clock
        self.nc = nc
        self.queue = queue
        self.next_id = next_id
        self.pump = pump
        self.read = read
        self.unfinished = unfinished
        self.maps: dict[int, MapGroup] = {}
        #: (lease, seq) of the maps being found on disk (a repeat meanwhile is answered Ok)
        self._finding: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"<TaskMaps {len(self.maps)} in progress>"

    async def on_map(self, msg: Any) -> None:
        """A running task maps a subtask over items: queue them as its children (or, asked
        again, answer from the map in memory or on disk)."""
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            request = wire.decode(msg.data, wire.TaskMap, msg.headers)
            parent = self.core.lease_of(request.lease)
            if parent is None or parent.node != node:
                raise NotFound(f"no running task holds lease {request.lease}")
            if not self._asked_before(parent.id, request):
                await self._start(parent, node, request)
        except CorralError as exc:
            reply: Any = wire.error_reply(exc)
        else:
            reply = wire.Ok()
        if msg.reply:
            await self.nc.publish(msg.reply, wire.encode(reply), headers=wire.HEADERS)

    def _asked_before(self, parent: int, request: wire.TaskMap) -> bool:
        """Whether ``request`` repeats a map in memory, or one being found on disk."""
        if not request.seq:
            return False  # a node that never asks twice
        known = self.maps.get(parent)
        if known is not None and known.lease == request.lease and known.seq >= request.seq:
            return True  # (a later map in memory: this repeat of an earlier one is late)
        return (request.lease, request.seq) in self._finding

    async def _start(self, parent: TaskInstance, node: str, request: wire.TaskMap) -> None:
        """Take up a map not in memory: from disk if it was queued before, else queue it."""
        old = self.maps.pop(parent.id, None)
        if old is not None:  # an earlier attempt's map: its answer is for nobody
            self._unlend(old)
        if request.seq:
            marker = (request.lease, request.seq)
            self._finding.add(marker)
            try:
                if await self._resume(parent, node, request):
                    return
            finally:
                self._finding.discard(marker)
        # Registered before queueing: a child may finish before the queue is durable.
        first = self.next_id()
        ids = list(range(first, first + len(request.args)))
        group = MapGroup(parent.id, node, request.lease, request.key, ids, request.seq)
        self.maps[parent.id] = group
        group.lent = self.core.lend(node, +1)
        try:
            await self.queue(
                request.key,
                request.args,
                priority=parent.priority,
                max_attempts=parent.max_attempts,
                parent=parent.id,
            )
        except CorralError:
            if self.maps.get(group.parent) is group:
                del self.maps[group.parent]
                self._unlend(group)
            raise

    async def _resume(self, parent: TaskInstance, node: str, request: wire.TaskMap) -> bool:
        """Rebuild the map ``request`` asks again for from its children on disk, and end it
        if they all ended. False if it was never queued."""
        stored = await self.read(parent.id, [])
        children = map_children(parent, request.lease, request.seq, len(request.args), stored)
        if children is None:
            return False
        ids = [c.id for c in children]
        group = MapGroup(parent.id, node, request.lease, request.key, ids, request.seq)
        self.maps[parent.id] = group
        group.lent = self.core.lend(node, +1)
        # What is unfinished now ends through child_done; the rest ended on disk, maybe
        # after the read above (then it is read again: an end on disk never changes).
        stale = []
        for child in children:
            if self.unfinished(child.id):
                continue
            if child.terminal:
                group.results[child.item or 0] = child
            else:
                stale.append(child.id)
        if stale:
            for child in await self.read(None, stale):
                if child.terminal:
                    group.results[child.item or 0] = child
        if self.maps.get(parent.id) is not group:
            return True  # (a child failed it meanwhile)
        lost = [c for c in children if c.item not in group.results and not self.unfinished(c.id)]
        if lost:  # (its end was refused by the store: it is in nobody's memory)
            error = f"item {lost[0].item} of {group.key} (task {lost[0].id}) was lost"
            await self.end(group, cancel=True, error=error)
        else:
            await self._settle(group, sorted(group.results))
        return True

    async def child_done(self, child: TaskInstance) -> None:
        """A child's end is on disk: note its result; the last one (or a failure) ends the map."""
        assert child.parent is not None and child.item is not None
        group = self.maps.get(child.parent)
        if group is None or child.item >= len(group.children):
            return
        if group.children[child.item] != child.id:
            return  # a child of an earlier map of the parent
        group.results[child.item] = child
        await self._settle(group, [child.item])

    async def _settle(self, group: MapGroup, items: list[int]) -> None:
        """End ``group`` if the child of one of ``items`` failed, or if they all completed."""
        for item in items:
            child = group.results[item]
            if child.status != TaskStatus.COMPLETE:
                why = child.error or child.status
                error = f"item {item} of {group.key} (task {child.id}) {child.status}: {why}"
                await self.end(group, cancel=True, error=error)
                return
        if len(group.results) == len(group.children):
            await self.end(group)

    def _unlend(self, group: MapGroup) -> None:
        if group.lent:
            group.lent = False
            self.core.lend(group.node, -1)

    async def end(self, group: MapGroup, *, cancel: bool = False, error: str = "") -> None:
        """Answer the parent (results in item order, or the error) and free the lent slot."""
        if self.maps.get(group.parent) is group:
            del self.maps[group.parent]
        self._unlend(group)
        if cancel:
            for ident in group.children:
                if ident in self.core.active:
                    self.core.cancel(ident, self.clock(), force=True)
        ordered = (
            [group.results[n].result for n in range(len(group.children))]
            if not (cancel or error)
            else []
        )
        done = wire.TaskMapped(
            lease=group.lease,
            ok=not (cancel or error),
            results=ordered,
            error=error or "cancelled",
            seq=group.seq,
        )
        nc = self.nc
        if not nc.is_closed:
            await nc.publish(
                subjects.node_tasks(group.node), wire.encode(done), headers=wire.HEADERS
            )
        await self.pump()


class MapGroup:
    """A parent's map in progress: its children by item, and the results so far."""

    def __init__(
        self, parent: int, node: str, lease: str, key: str, children: list[int], seq: int = 0
    ) -> None:
        self.parent = parent
        self.node = node
        self.lease = lease
        self.key = key
        self.children = children
        #: the map's number in the parent's run (0: from a node that never asks twice)
        self.seq = seq
        self.results: dict[int, TaskInstance] = {}
        #: the parent's node was lent a slot for it (taken back when it ends)
        self.lent = False

    def __repr__(self) -> str:
        return f"<Map of task {self.parent}: {len(self.results)}/{len(self.children)} {self.key}>"
