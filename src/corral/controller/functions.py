"""The controller's API: one table of functions, one dispatch path, one error classification.

Theory of operation: :data:`FUNCTIONS` is the single definition of the API — for each
function its request struct, reply type and the role it needs. Two transports serve it:
HTTP (:mod:`corral.controller.api`, FastAPI: ``POST /<function>``, JSON) and the bus
(:mod:`corral.controller.api_bus`, NATS request/reply on ``corral.ctl.<function>.<credential>``,
msgpack). A transport only decodes the request, establishes the :class:`Caller` (from the API
token, or from the credential the subject names) and encodes the reply; everything else —
the role gate, handing the caller to the functions that change state (which audit with it,
never with a name the client sent), the idempotency key of a submission — happens in
:meth:`Dispatch.call`, once for both. A failure becomes ``(status, ErrorBody)`` in
:func:`error_reply`, which both transports send as they send replies (HTTP: the status line;
the bus: a ``Corral-Status`` header), so a client raises the same exception over either.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from corral import api_models as m
from corral import wire
from corral._transport_bus import BusTransport
from corral.controller.api_calls import ApiCalls, Caller
from corral.errors import CorralError, Disconnected, Forbidden, FunctionNotFound, to_wire
from corral.tokens import Role

__all__ = [
    "FUNCTIONS",
    "KEYED",
    "LEADER_ONLY",
    "LIVE_READS",
    "WITH_CALLER",
    "Dispatch",
    "error_reply",
]

log = logging.getLogger("corral.api")

Handler = Callable[..., Awaitable[Any]]
#: what :meth:`Dispatch._from_leader` returns when no leader answered
_NO_ANSWER: Any = object()

#: name -> (request struct or None, reply type, role needed)
FUNCTIONS: dict[str, tuple[type[Any] | None, Any, Role]] = {
    "list_tasks": (m.ListTasks, list[m.TaskKeyView], Role.READ),
    "queue_task": (m.QueueTask, m.QueueReply, Role.OPERATE),
    "queue_tasks": (m.QueueTasks, m.QueueTasksReply, Role.OPERATE),
    "run_task": (m.RunTask, m.TaskView, Role.OPERATE),
    "cancel_task": (m.CancelTask, m.TaskView, Role.OPERATE),
    "wait": (m.Wait, list[m.TaskView], Role.READ),
    "list_queue": (m.PageRequest, m.TaskPage, Role.READ),
    "list_running": (m.PageRequest, m.TaskPage, Role.READ),
    "task_statuses": (None, list[m.TaskStatusView], Role.READ),
    "task_history": (m.TaskHistory, m.TaskPage, Role.READ),
    "task_history_detail": (m.TaskDetail, m.TaskView, Role.READ),
    "node_list": (m.PageRequest, m.NodePage, Role.READ),
    "node_detail": (m.NodeDetail, m.NodeView, Role.READ),
    "node_edit": (m.NodeEdit, m.NodeView, Role.OPERATE),
    "node_status": (None, list[m.NodeStatusView], Role.READ),
    "connect": (None, dict[str, int], Role.OPERATE),
    "list_known_nodes": (None, list[m.KnownNode], Role.READ),
    "kill_worker": (m.KillWorker, m.KilledWorker, Role.OPERATE),
    "node_delete": (m.NodeDelete, m.NodeDeleted, Role.OPERATE),
    "task_logs": (m.TaskLogs, m.TaskLogsView, Role.READ),
    "send_command": (m.SendCommand, wire.CommandAccepted, Role.OPERATE),
    "execute_command": (m.SendCommand, wire.CommandAccepted, Role.EXECUTE),
    "command_detail": (m.CommandDetail, wire.CommandView, Role.READ),
    "list_commands": (m.ListCommands, list[wire.CommandView], Role.READ),
}
#: Functions that change state: they get the caller the transport established, and are
#: audited with it (never with a name the client sent).
WITH_CALLER = frozenset(
    {
        "queue_task",
        "queue_tasks",
        "run_task",
        "cancel_task",
        "node_edit",
        "connect",
        "send_command",
        "execute_command",
        "kill_worker",
        "node_delete",
    }
)
#: Functions only the leading controller answers: a standby refuses them with NotLeader
#: (``wait`` too: the results it waits for reach the leader only).
LEADER_ONLY = WITH_CALLER | {"wait"}
#: Reads of what only the leader knows live (which node offers which task, the running
#: leases, the workers' states): a standby asks the leader over the bus, and answers from
#: what it has (the store) only when no leader answers.
LIVE_READS = frozenset({"list_tasks", "task_statuses", "node_status"})
#: Seconds a standby waits for the leader's answer to a live read.
FORWARD_TIMEOUT = 5.0
KEYED = m.KEYED  # submissions that take an idempotency key (elsewhere a key is ignored)


def error_reply(exc: Exception) -> tuple[int, m.ErrorBody]:
    """The HTTP status and coded body for an exception raised by an API function or a gate:
    what :func:`corral.errors.to_wire` makes of it (the one error tree's code and status).

    The bus sends the same pair (the status in a ``Corral-Status`` header), so a client maps
    both transports' errors with one function (:func:`corral.errors.from_wire`).
    """
    if not isinstance(exc, CorralError):
        log.error("API function failed", exc_info=exc)
    w = to_wire(exc)
    body = m.ErrorBody(
        code=w.code,
        error=w.error,
        kind=w.kind,
        fields=w.fields,
        retry_after=w.retry_after,
        step=w.step,
        leader=w.leader,
    )
    return w.status, body


class Dispatch:
    """Runs API functions for a caller a transport established.

    Args:
        calls: The functions (one controller's :class:`ApiCalls`).
    """

    def __init__(self, calls: ApiCalls) -> None:
        self.calls = calls
        self._rows: dict[str, tuple[Handler, Role]] = {
            name: (getattr(calls, name), role) for name, (_, _, role) in FUNCTIONS.items()
        }

    def __repr__(self) -> str:
        return f"<Dispatch {len(self._rows)} functions of {self.calls!r}>"

    async def call(self, name: str, caller: Caller, args: Any, key: str | None = None) -> Any:
        """Run function ``name`` with its decoded request ``args`` (``None`` if it takes none).

        Args:
            name: The function (a key of :data:`FUNCTIONS`).
            caller: Who calls, as the transport established it (never from the payload).
            args: The request struct, or ``None`` for a function without one.
            key: The submission's idempotency key, if it sent one.

        Returns:
            The function's reply (a struct, or a list or dict of them).

        Raises:
            FunctionNotFound: no such function.
            Forbidden: the caller's role is below the function's.
            NotLeader: this controller is a standby and the function is not a read, or it
                stepped down (every function, reads too).
            CorralError: whatever the function raises (see :func:`error_reply`).
        """
        row = self._rows.get(name)
        if row is None:
            raise FunctionNotFound(
                f"no API function {name!r}; the functions are: {', '.join(FUNCTIONS)}", 404
            )
        handler, role = row
        leadership = self.calls.parts.leadership
        if leadership is not None:
            leadership.check_serving(name)
            if name in LEADER_ONLY:
                leadership.check_write(name)
        if not Role(caller.role).allows(role):
            raise Forbidden(
                f"{caller.actor} has role {caller.role!r}; {name} needs {role.value!r} or "
                "higher (use a token or credential with that role)",
                403,
            )
        extra: dict[str, Any] = {}
        if name in WITH_CALLER:
            extra["caller"] = caller
        if name in KEYED:
            extra["key"] = key
        if leadership is not None and not leadership.leading and name in LIVE_READS:
            asked = await self._from_leader(name, args)
            if asked is not _NO_ANSWER:
                return asked
        call = handler(**extra) if FUNCTIONS[name][0] is None else handler(args, **extra)
        if leadership is None or name in LEADER_ONLY:
            return await call
        return await leadership.serving(call, name)  # a read: not past a step-down

    async def _from_leader(self, name: str, args: Any) -> Any:
        """A live read asked of the leader over the bus as this controller (the caller's
        role was checked here); :data:`_NO_ANSWER` when no leader answers."""
        nc = self.calls.parts.nc
        if nc is None or nc.is_closed:
            return _NO_ANSWER
        transport = BusTransport(self.calls.parts.config, nc=nc, identity="controller")
        try:
            return await transport.call(
                name, {} if args is None else args, FUNCTIONS[name][1], FORWARD_TIMEOUT, None
            )
        except Disconnected as exc:  # no leader right now: what this standby has
            log.info("live read %s answered from the store: %s", name, exc)
            return _NO_ANSWER
