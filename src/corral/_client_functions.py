"""The controller's API functions as typed methods of :class:`corral.Client` (either transport).

Each method names its arguments and its reply type and goes through ``Client.call``, which
picks the transport (bus or HTTP), adds the idempotency key of a submission and re-sends only
what is safe to repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from corral import api_models as m
from corral.errors import NotSerializable, TaskFailed

__all__ = ["ApiFunctions"]

T = TypeVar("T")


def _check_args(args: dict[str, Any]) -> None:
    try:
        msgspec.msgpack.encode(args)
        msgspec.json.encode(args)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise NotSerializable(
            f"task arguments must be msgpack-able data (dicts, lists, str, numbers, bool, "
            f"None): {exc}"
        ) from None


class ApiFunctions:
    """Typed methods for every controller API function (mixed into :class:`corral.Client`)."""

    timeout: float

    async def call(
        self, function: str, reply: Any = Any, call_timeout: float | None = None, /, **kwargs: Any
    ) -> Any:
        raise NotImplementedError  # provided by the client

    async def _get(
        self, function: str, reply: type[T], call_timeout: float | None = None, /, **kwargs: Any
    ) -> T:
        result: T = await self.call(function, reply, call_timeout, **kwargs)
        return result

    # --- tasks --------------------------------------------------------------------------

    async def list_tasks(
        self, toplevel: bool = True, keys: Sequence[str] = ()
    ) -> list[m.TaskKeyView]:
        """The task keys the cluster can run (``toplevel``: without subtasks)."""
        return await self._get(
            "list_tasks", list[m.TaskKeyView], toplevel=toplevel, keys=list(keys)
        )

    async def queue_task(
        self,
        task_key: str,
        args: dict[str, Any] | None = None,
        priority: int = 5,
        labels: Sequence[str] = (),
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Queue task ``task_key`` with keyword arguments; returns the instance id.

        Arguments go in ``args`` (Pydra's ``queue_task(task_key, args={})``, positionally or
        by name) or as keyword arguments (``queue_task("T", foo="bar")``); a task argument
        named like a parameter here goes in ``args``. ``idempotency_key`` (default: a new
        uuid4) makes a repeat of this call within the controller's window answer the first
        instance instead of queueing another.

        Args:
            task_key: The task's key (``list_tasks``).
            args: The task's keyword arguments.
            priority: 0-9, lower runs first.
            labels: Only nodes with all these labels run it.
            max_attempts: Runs allowed when a worker is lost (default: the controller's).
            idempotency_key: Names this submission (default: a new uuid4).
            kwargs: More of the task's keyword arguments.

        Returns:
            The instance id.

        Raises:
            NotSerializable: an argument is not msgpack-able data (nothing is sent).
            InvalidArguments: the arguments do not fit the task's signature (``fields`` says
                what is wrong with each; nothing is queued).
            UnknownTask: no node offers the task.
        """
        values = {**(args or {}), **kwargs}
        _check_args(values)
        reply: m.QueueReply = await self._get(
            "queue_task",
            m.QueueReply,
            task_key=task_key,
            args=values,
            priority=priority,
            labels=list(labels),
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
        return reply.instance_id

    async def run_tasks(self, task_key: str, *args: dict[str, Any], **kwargs: Any) -> int:
        """The seed's spelling (``controller.run_tasks('MyTask', foo='bar')``) of
        :meth:`queue_task`; returns the instance id.

        Args:
            task_key: The task's key.
            args: At most one mapping of the task's keyword arguments.
            kwargs: The task's keyword arguments (and :meth:`queue_task`'s options).

        Returns:
            The instance id.

        Raises:
            NotSerializable: an argument is not msgpack-able data.
            InvalidArguments: the arguments do not fit the task's signature.
            UnknownTask: no node offers the task.
            TypeError: more than one positional mapping.
        """
        if len(args) > 1:
            raise TypeError(
                f"run_tasks() takes the task key and at most one mapping of arguments "
                f"({len(args) + 1} positional arguments given)"
            )
        if args:
            return await self.queue_task(task_key, args[0], **kwargs)
        return await self.queue_task(task_key, **kwargs)

    async def queue_tasks(
        self,
        task_key: str,
        args: Sequence[dict[str, Any]],
        priority: int = 5,
        labels: Sequence[str] = (),
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Queue one instance per argument mapping in one call; returns their ids in order.

        Args:
            task_key: The task's key.
            args: One mapping of the task's keyword arguments per instance.
            priority: 0-9, lower runs first.
            labels: Only nodes with all these labels run them.
            max_attempts: Runs allowed when a worker is lost (default: the controller's).
            idempotency_key: Names this submission (default: a new uuid4); a repeat answers
                the first ids.

        Returns:
            The instance ids, in the order of ``args``.

        Raises:
            NotSerializable: an argument is not msgpack-able data.
            InvalidArguments: an instance's arguments do not fit the task's signature
                (``fields`` names them ``args[<i>].<name>``; nothing is queued).
            UnknownTask: no node offers the task.
        """
        for values in args:
            _check_args(values)
        reply: m.QueueTasksReply = await self._get(
            "queue_tasks",
            m.QueueTasksReply,
            task_key=task_key,
            args=list(args),
            priority=priority,
            labels=list(labels),
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
        return reply.instance_ids

    async def cancel_task(self, task_instance_id: int, force: bool = False) -> m.TaskView:
        """Cancel: dequeue, or stop (``force``: kill the worker after the grace period)."""
        return await self._get(
            "cancel_task", m.TaskView, task_instance_id=task_instance_id, force=force
        )

    async def wait_many(self, ids: Sequence[int], timeout: float = 60.0) -> list[m.TaskView]:
        """Wait until every instance has finished; returns them in order.

        Raises:
            Timeout: not all finished within ``timeout`` seconds.
        """
        return await self._get(
            "wait",
            list[m.TaskView],
            timeout + self.timeout,
            task_instance_ids=list(ids),
            timeout=timeout,
        )

    async def wait(self, task_instance_id: int, timeout: float = 60.0) -> m.TaskView:
        """Wait until the instance has finished (complete, failed or cancelled).

        Raises:
            Timeout: it did not finish within ``timeout`` seconds.
        """
        (view,) = await self.wait_many([task_instance_id], timeout)
        return view

    async def result(self, task_instance_id: int, timeout: float = 60.0) -> Any:
        """Wait for the instance and return its result.

        Raises:
            TaskFailed: it failed or was cancelled (``.instance`` has the error, traceback).
            Timeout: it did not finish within ``timeout`` seconds.
        """
        view = await self.wait(task_instance_id, timeout)
        if view.status != "complete":
            raise TaskFailed(f"task {view.id} ({view.key}) {view.status}: {view.error}", view)
        return view.result

    async def run_task(
        self,
        task_key: str,
        args: dict[str, Any] | None = None,
        timeout: float = 60.0,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> m.TaskView:
        """Queue a task and wait until it has finished, in one call; returns the instance.

        Args:
            task_key: The task's key.
            args: The task's keyword arguments (or pass them as keyword arguments).
            timeout: Seconds to wait for it to finish.
            idempotency_key: Names this submission (default: a new uuid4); a repeat waits
                for the first instance.
            kwargs: More of the task's keyword arguments.

        Returns:
            The finished instance.

        Raises:
            NotSerializable: an argument is not msgpack-able data.
            InvalidArguments: the arguments do not fit the task's signature (nothing runs).
            Timeout: it did not finish within ``timeout`` seconds.
        """
        values = {**(args or {}), **kwargs}
        _check_args(values)
        return await self._get(
            "run_task",
            m.TaskView,
            timeout + self.timeout,
            task_key=task_key,
            args=values,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    async def run(
        self,
        task_key: str,
        args: dict[str, Any] | None = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> Any:
        """Run a task (queue it and wait, in one call) and return its result.

        Args:
            task_key: The task's key.
            args: The task's keyword arguments (or pass them as keyword arguments).
            timeout: Seconds to wait for it to finish.
            kwargs: More of the task's keyword arguments.

        Returns:
            The task's result.

        Raises:
            InvalidArguments: the arguments do not fit the task's signature (nothing runs).
            TaskFailed: it failed or was cancelled.
            Timeout: it did not finish within ``timeout`` seconds.
        """
        view = await self.run_task(task_key, args, timeout=timeout, **kwargs)
        if view.status != "complete":
            raise TaskFailed(f"task {view.id} ({view.key}) {view.status}: {view.error}", view)
        return view.result

    async def list_queue(self, page: int = 1, per_page: int | None = None) -> m.TaskPage:
        """Queued instances, oldest first."""
        return await self._get("list_queue", m.TaskPage, page=page, per_page=per_page)

    async def list_running(self, page: int = 1, per_page: int | None = None) -> m.TaskPage:
        """Running instances, oldest first."""
        return await self._get("list_running", m.TaskPage, page=page, per_page=per_page)

    async def task_statuses(self) -> list[m.TaskStatusView]:
        """Status, start time and progress of every running instance."""
        return await self._get("task_statuses", list[m.TaskStatusView])

    async def task_history(self, key: str, page: int = 1, per_page: int = 10) -> m.TaskPage:
        """The instances of task ``key``, newest first, ``per_page`` a page."""
        return await self._get("task_history", m.TaskPage, key=key, page=page, per_page=per_page)

    async def task_history_detail(self, task_instance_id: int) -> m.TaskView:
        """One instance, with its attempts, result or error and traceback.

        Raises:
            NotFound: no such instance.
        """
        return await self._get("task_history_detail", m.TaskView, task_instance_id=task_instance_id)

    # --- nodes --------------------------------------------------------------------------

    async def node_list(self, page: int = 1, per_page: int | None = None) -> m.NodePage:
        """The nodes the controller knows, by name."""
        return await self._get("node_list", m.NodePage, page=page, per_page=per_page)

    async def node_detail(self, id: str) -> m.NodeView:
        """One node.

        Raises:
            NotFound: no such node.
        """
        return await self._get("node_detail", m.NodeView, id=id)

    async def node_edit(self, values: dict[str, Any]) -> m.NodeView:
        """Set ``labels`` or ``attributes`` of node ``values['id']`` as the controller keeps them.

        Raises:
            Refused: no id, or a field that cannot be set.
            NotFound: no such node.
        """
        return await self._get("node_edit", m.NodeView, values=values)

    async def node_status(self) -> list[m.NodeStatusView]:
        """Every node and its worker slots (idle, busy, not connected)."""
        return await self._get("node_status", list[m.NodeStatusView])

    async def connect(self) -> dict[str, int]:
        """Make the controller announce itself now, so waiting nodes join at once."""
        return await self._get("connect", dict[str, int])

    async def list_known_nodes(self) -> list[m.KnownNode]:
        """Nodes enrolled but never seen by the controller."""
        return await self._get("list_known_nodes", list[m.KnownNode])

    # --- fleet hygiene and task logs (Pydra's kill worker, delete node, logs) -------------

    async def kill_worker(self, node: str, slot: int = 0) -> m.KilledWorker:
        """Kill worker ``slot`` of ``node``: the task it runs fails (as after a
        crash), the node starts the slot again.

        Raises:
            NotFound: no such node.
            Conflict: the node is not UP or runs no task workers.
            Refused: the node has no such slot.
        """
        return await self._get("kill_worker", m.KilledWorker, node=node, slot=slot)

    async def node_delete(self, id: str) -> m.NodeDeleted:
        """Forget node ``id`` (not UP): registry, store, and its credentials revoked.

        Raises:
            NotFound: no such node.
            Conflict: the node is UP.
        """
        return await self._get("node_delete", m.NodeDeleted, id=id)

    async def task_logs(self, task_instance_id: int) -> m.TaskLogsView:
        """What instance ``task_instance_id`` printed and ``ctx.log``-ged (bounded).

        Raises:
            NotFound: no such instance.
        """
        return await self._get("task_logs", m.TaskLogsView, task_instance_id=task_instance_id)
