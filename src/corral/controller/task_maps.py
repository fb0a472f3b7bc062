"""Maps (Pydra's parallel tasks) in the controller: a running task's subtasks, and its answer.

A task calls ``ctx.map(subtask, items)``; its node asks here (``corral.in.<node>.map``). The
items are queued as children of the task (``parent``, ``item``), and the task's node is lent
one slot while the task waits, so the children never wait for the slot their parent holds.
When the last child is on disk, the results go back in item order (``TaskMapped``); the first
child that fails or is cancelled ends the map at once with its error and cancels the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral import subjects, wire
from corral.core.taskstate import TaskInstance
from corral.errors import CorralError, NotFound
from corral.states import TaskStatus

if TYPE_CHECKING:
    from corral.controller.tasks import TaskService

__all__ = ["TaskMaps"]


class TaskMaps:
    """Every map in progress, by parent instance id.

    Args:
        tasks: The task service the children are queued through.
    """

    def __init__(self, tasks: TaskService) -> None:
        self.tasks = tasks
        self.maps: dict[int, _Map] = {}

    def __repr__(self) -> str:
        return f"<TaskMaps {len(self.maps)} in progress>"

    async def on_map(self, msg: Any) -> None:
        """A running task maps a subtask over items: queue them as its children."""
        assert self.tasks.ctl.nc is not None
        group: _Map | None = None
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            request = wire.decode(msg.data, wire.TaskMap, msg.headers)
            parent = self.tasks.core.lease_of(request.lease)
            if parent is None or parent.node != node:
                raise NotFound(f"no running task holds lease {request.lease}")
            # Registered before queueing: a child may finish before the queue is durable.
            first = self.tasks._next_id
            ids = list(range(first, first + len(request.args)))
            group = _Map(parent.id, node, request.lease, request.key, ids)
            self.maps[parent.id] = group
            self.tasks.core.lend(node, +1)
            await self.tasks.queue(
                request.key,
                request.args,
                priority=parent.priority,
                max_attempts=parent.max_attempts,
                parent=parent.id,
            )
        except CorralError as exc:
            if group is not None and self.maps.get(group.parent) is group:
                del self.maps[group.parent]
                self.tasks.core.lend(group.node, -1)
            reply: Any = wire.ErrorReply(code=wire.error_code(exc), error=str(exc))
        else:
            reply = wire.Ok()
        if msg.reply:
            await self.tasks.ctl.nc.publish(msg.reply, wire.encode(reply), headers=wire.HEADERS)

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

    async def end(self, group: _Map, *, cancel: bool = False, error: str = "") -> None:
        """Answer the parent (results in item order, or the error) and free the lent slot."""
        self.maps.pop(group.parent, None)
        self.tasks.core.lend(group.node, -1)
        if cancel:
            for ident in group.children:
                if ident in self.tasks.core.active:
                    self.tasks.core.cancel(ident, self.tasks.clock(), force=True)
        ordered = (
            [group.results[n].result for n in range(len(group.children))]
            if not (cancel or error)
            else []
        )
        done = wire.TaskMapped(
            lease=group.lease, ok=not (cancel or error), results=ordered, error=error or "cancelled"
        )
        nc = self.tasks.ctl.nc
        if nc is not None and not nc.is_closed:
            await nc.publish(
                subjects.node_tasks(group.node), wire.encode(done), headers=wire.HEADERS
            )
        await self.tasks._pump()


class _Map:
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
