"""Maps (Pydra's parallel tasks) in the controller: a running task's subtasks, and its answer.

A task calls ``ctx.map(subtask, items)``; its node asks here (``corral.in.<node>.map``). The
items are queued as children of the task (``parent``, ``item``), and the task's node is lent
one slot while the task waits, so the children never wait for the slot their parent holds.
When the last child is on disk, the results go back in item order (``TaskMapped``); the first
child that fails or is cancelled ends the map at once with its error and cancels the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from corral import bus, subjects, wire
from corral.core.scheduler import Scheduler
from corral.core.taskstate import TaskInstance
from corral.errors import CorralError, NotFound
from corral.states import TaskStatus

__all__ = ["MapGroup", "TaskMaps"]

#: ``queue(key, args, *, priority, max_attempts, parent)``: the task service's queue call
Queue = Callable[..., Awaitable[list[TaskInstance]]]


class TaskMaps:
    """Every map in progress, by parent instance id.

    Args:
        core: The scheduler the parents run in (leases, lent slots, cancels).
        clock: Wall-clock source (seconds since the epoch).
        nc: The controller's bus connection (answers to the parents' nodes).
        queue: Queues the children (the task service's :meth:`queue`).
        next_id: The id the next queued instance will get.
        pump: Drains the scheduler's outboxes once a map has ended.
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
    ) -> None:
        self.core = core
        self.clock = clock
        self.nc = nc
        self.queue = queue
        self.next_id = next_id
        self.pump = pump
        self.maps: dict[int, MapGroup] = {}

    def __repr__(self) -> str:
        return f"<TaskMaps {len(self.maps)} in progress>"

    async def on_map(self, msg: Any) -> None:
        """A running task maps a subtask over items: queue them as its children."""
        group: MapGroup | None = None
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            request = wire.decode(msg.data, wire.TaskMap, msg.headers)
            parent = self.core.lease_of(request.lease)
            if parent is None or parent.node != node:
                raise NotFound(f"no running task holds lease {request.lease}")
            # Registered before queueing: a child may finish before the queue is durable.
            first = self.next_id()
            ids = list(range(first, first + len(request.args)))
            group = MapGroup(parent.id, node, request.lease, request.key, ids)
            self.maps[parent.id] = group
            self.core.lend(node, +1)
            await self.queue(
                request.key,
                request.args,
                priority=parent.priority,
                max_attempts=parent.max_attempts,
                parent=parent.id,
            )
        except CorralError as exc:
            if group is not None and self.maps.get(group.parent) is group:
                del self.maps[group.parent]
                self.core.lend(group.node, -1)
            reply: Any = wire.error_reply(exc)
        else:
            reply = wire.Ok()
        if msg.reply:
            await self.nc.publish(msg.reply, wire.encode(reply), headers=wire.HEADERS)

    async def child_done(self, child: TaskInstance) -> None:
        assert child.parent is not None and child.item is not None
        group = self.maps[child.parent]
        group.results[child.item] = child
        if child.status != TaskStatus.COMPLETE:
            why = child.error or child.status
            error = f"item {child.item} of {group.key} (task {child.id}) {child.status}: {why}"
            await self.end(group, cancel=True, error=error)
        elif len(group.results) == len(group.children):
            await self.end(group)

    async def end(self, group: MapGroup, *, cancel: bool = False, error: str = "") -> None:
        """Answer the parent (results in item order, or the error) and free the lent slot."""
        self.maps.pop(group.parent, None)
        self.core.lend(group.node, -1)
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
            lease=group.lease, ok=not (cancel or error), results=ordered, error=error or "cancelled"
        )
        nc = self.nc
        if not nc.is_closed:
            await nc.publish(
                subjects.node_tasks(group.node), wire.encode(done), headers=wire.HEADERS
            )
        await self.pump()


class MapGroup:
    """A parent's map in progress: its children by item, and the results so far."""

    def __init__(self, parent: int, node: str, lease: str, key: str, children: list[int]) -> None:
        self.parent = parent
        self.node = node
        self.lease = lease
        self.key = key
        self.children = children
        self.results: dict[int, TaskInstance] = {}

    def __repr__(self) -> str:
        return f"<Map of task {self.parent}: {len(self.results)}/{len(self.children)} {self.key}>"
