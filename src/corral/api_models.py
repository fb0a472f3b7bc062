"""The controller API's requests and replies, shared by the server and the Python client.

msgspec Structs: the server validates request bodies and encodes replies with them, the
client decodes replies into them (typed return values), and the OpenAPI schema at ``/docs``
is generated from them. JSON on the HTTP edge only; task arguments and results appear as
JSON values (msgpack ``bytes`` as base64 strings).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from corral.core.text import check_command_text, check_keys, check_name, check_names
from corral.states import NodeStatus, TaskStatus

#: The header of a bus reply that is an error: the HTTP status the same error gets over HTTP.
STATUS_HEADER = "Corral-Status"
#: Submissions that take an ``Idempotency-Key`` (docs/api.md, "Idempotency keys"): the
#: Python client sends one with every call and retries only these.
KEYED = frozenset({"queue_task", "queue_tasks", "run_task", "send_command", "execute_command"})
#: Functions that change nothing, safe to send again on a fresh connection.
READS = frozenset(
    {
        "list_tasks",
        "wait",
        "list_queue",
        "list_running",
        "task_statuses",
        "task_history",
        "task_history_detail",
        "node_list",
        "node_detail",
        "node_status",
        "list_known_nodes",
        "task_logs",
        "command_detail",
        "list_commands",
    }
)

__all__ = [
    "KEYED",
    "READS",
    "STATUS_HEADER",
    "CancelTask",
    "CommandDetail",
    "ListCommands",
    "SendCommand",
    "ErrorBody",
    "KnownNode",
    "ListTasks",
    "NodeDetail",
    "NodeEdit",
    "NodePage",
    "NodeStatusView",
    "PageRequest",
    "QueueReply",
    "QueueTask",
    "QueueTasks",
    "QueueTasksReply",
    "RunTask",
    "TaskDetail",
    "TaskHistory",
    "TaskKeyView",
    "TaskPage",
    "TaskStatusView",
    "TaskView",
    "Wait",
    "WorkerView",
    "KillWorker",
    "KilledWorker",
    "NodeDelete",
    "NodeDeleted",
    "TaskLogs",
    "TaskLogsView",
]

Id = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
PageNo = Annotated[int, msgspec.Meta(ge=1, le=2**31)]
PerPage = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]
Attempts = Annotated[int, msgspec.Meta(ge=1, le=100)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=3600)]


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are refused, not ignored."""


# --- requests -------------------------------------------------------------------------------


class ListTasks(_Body):
    """``list_tasks``: only top-level tasks, only these keys (all when empty)."""

    toplevel: bool = True
    keys: list[Key] = []

    def __post_init__(self) -> None:
        """Refuse control characters in the keys (``InvalidText``, 422 over HTTP)."""
        check_names(self.keys, "task key")


class QueueTask(_Body):
    """``queue_task``: one instance of ``task_key`` with ``args`` as its keyword arguments."""

    task_key: Key
    args: dict[str, Any] = {}
    priority: Priority = 5
    labels: list[Key] = []
    max_attempts: Attempts | None = None

    def __post_init__(self) -> None:
        """Refuse control characters in the key, labels and argument names."""
        check_name(self.task_key, "task_key")
        check_names(self.labels, "label")
        check_keys(self.args, "argument name")


class RunTask(QueueTask):
    """``run_task``: queue one instance and wait at most ``timeout`` seconds for it."""

    timeout: Seconds = 60.0


class QueueTasks(_Body):
    """``queue_tasks``: one instance of ``task_key`` per mapping in ``args``."""

    task_key: Key
    args: Annotated[list[dict[str, Any]], msgspec.Meta(max_length=100_000)]
    priority: Priority = 5
    labels: list[Key] = []
    max_attempts: Attempts | None = None

    def __post_init__(self) -> None:
        """Refuse control characters in the key, labels and argument names."""
        check_name(self.task_key, "task_key")
        check_names(self.labels, "label")
        for i, args in enumerate(self.args):
            check_keys(args, f"argument name (args[{i}])")


class CancelTask(_Body):
    """``cancel_task``: dequeue, or ask to stop (and with ``force``, kill after the grace)."""

    task_instance_id: Id
    force: bool = False


class PageRequest(_Body):
    """A page number from 1 (past the end gives the last page) and its size."""

    page: PageNo = 1
    per_page: PerPage | None = None


class TaskHistory(_Body):
    """``task_history``: the instances of task ``key``, newest first."""

    key: Key
    page: PageNo = 1
    per_page: PerPage = 10

    def __post_init__(self) -> None:
        """Refuse control characters in the key."""
        check_name(self.key, "key")


class TaskDetail(_Body):
    """``task_history_detail``: one instance."""

    task_instance_id: Id


class Wait(_Body):
    """``wait``: until every instance has finished, at most ``timeout`` seconds."""

    task_instance_ids: Annotated[list[Id], msgspec.Meta(min_length=1, max_length=100_000)]
    timeout: Seconds = 30.0


class NodeDetail(_Body):
    """``node_detail``: one node by name."""

    id: Key

    def __post_init__(self) -> None:
        """Refuse control characters in the name."""
        check_name(self.id, "id")


class NodeEdit(_Body):
    """``node_edit``: ``values`` holds ``id`` (the node's name) and ``labels``/``attributes``."""

    values: dict[str, Any]

    def __post_init__(self) -> None:
        """Refuse control characters in the name, labels and attribute names given.

        Types are checked by ``node_edit`` itself (it says which fields it may set).
        """
        check_keys(self.values, "field name")
        name, labels, attributes = (self.values.get(k) for k in ("id", "labels", "attributes"))
        if isinstance(name, str):
            check_name(name, "id")
        if isinstance(labels, list):
            check_names((x for x in labels if isinstance(x, str)), "label")
        if isinstance(attributes, dict):
            check_keys(attributes, "attribute name")


class SendCommand(_Body):
    """``send_command`` / ``execute_command``: an addressed command (see docs/commands.md).

    ``targets``: names, globs, ``label:L``, ``has:X``, ``sinks`` or ``*``. ``kind``: command,
    shell, get, set, put or a message type the nodes registered (EXECUTE goes through
    ``execute_command``). ``data`` (base64 in JSON) is a PUT file or an EXECUTE script.
    """

    targets: Annotated[list[Key], msgspec.Meta(min_length=1, max_length=10_000)]
    kind: Key = "command"
    name: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    data: bytes = b""
    timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 60.0
    retire_after: Annotated[float, msgspec.Meta(ge=0, le=7 * 86_400)] | None = None

    def __post_init__(self) -> None:
        """Refuse control characters in the targets, kind, name and argument names."""
        check_command_text(self.targets, self.kind, self.name, self.args)


class CommandDetail(_Body):
    """``command_detail``: one command by serial."""

    serial: Id


class ListCommands(_Body):
    """``list_commands``: recent commands, newest first; ``before`` a serial for the next page."""

    limit: PerPage = 50
    before: Id | None = None


# --- replies --------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every error reply: Pydra's ``code`` and what went wrong.

    ``kind``: the :mod:`corral.errors` class raised (the Python client raises the same one).
    ``fields``: when task arguments do not fit the task's signature (422), what is wrong with
    each argument, by name (``args[<i>].<name>`` in ``queue_tasks``); absent otherwise.
    """

    code: int
    error: str
    kind: str = ""
    fields: dict[str, str] = {}
    #: a :class:`~corral.errors.RetryLater`'s delay; a :class:`~corral.errors.GroupRefused`'s step
    retry_after: float = 0.0
    step: int = 0
    #: a :class:`~corral.errors.NotLeader`'s leader address
    leader: str = ""


class TaskKeyView(msgspec.Struct, kw_only=True):
    """A task the cluster can run, with the nodes that offer it."""

    key: str
    nodes: list[str]
    slots: int
    toplevel: bool = True


class QueueReply(msgspec.Struct, kw_only=True):
    """``queue_task``: what was queued (Pydra's reply)."""

    task_key: str
    instance_id: int
    time: float


class QueueTasksReply(msgspec.Struct, kw_only=True):
    """``queue_tasks``: the instance ids, in the order of the arguments."""

    task_key: str
    instance_ids: list[int]
    time: float


class TaskView(msgspec.Struct, kw_only=True):
    """One task instance: where it stands, its attempts, its result or error."""

    id: int
    key: str
    status: TaskStatus
    args: Any = None
    priority: int = 5
    parent: int | None = None
    item: int | None = None
    labels: list[str] = []
    node: str = ""
    worker: int = -1
    attempts: int = 0
    max_attempts: int = 3
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    message: str = ""
    result: Any = None
    error: str = ""
    traceback: str = ""
    history: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        where = f" on {self.node}" if self.node else ""
        return f"<Task {self.id} {self.key!r} {self.status}{where} attempt {self.attempts}>"


class TaskPage(msgspec.Struct, kw_only=True):
    """A page of instances: Pydra's history reply (``prev``/``next``/``page``)."""

    items: list[TaskView]
    page: int
    pages: int
    per_page: int
    total: int
    prev: int | None = None
    next: int | None = None


class TaskStatusView(msgspec.Struct, kw_only=True):
    """``task_statuses``: one unfinished instance's status, start and progress."""

    id: int
    key: str
    status: TaskStatus
    node: str = ""
    started_at: float | None = None
    progress: float = 0.0
    message: str = ""


class NodeView(msgspec.Struct, kw_only=True):
    """One node as the registry keeps it."""

    name: str
    status: NodeStatus
    since: float
    last_seen: float
    joined_at: float
    labels: list[str] = []
    interfaces: list[str] = []
    attributes: dict[str, Any] = {}
    host: str = ""
    pid: int = 0
    version: str = ""
    slots: int = 0
    #: ``cpu_percent``, ``mem_percent``, ``disk_percent``, ``load1`` from its last heartbeat
    stats: dict[str, float] | None = None


class NodePage(msgspec.Struct, kw_only=True):
    """A page of nodes, by name."""

    items: list[NodeView]
    page: int
    pages: int
    per_page: int
    total: int
    prev: int | None = None
    next: int | None = None


class WorkerView(msgspec.Struct, kw_only=True):
    """A worker slot: ``idle``, ``busy`` (with its task) or ``not connected``."""

    slot: int
    state: str
    task: int | None = None
    key: str = ""


class NodeStatusView(msgspec.Struct, kw_only=True):
    """``node_status``: a node and its workers."""

    name: str
    status: NodeStatus
    keys: list[str] = []
    workers: list[WorkerView] = []
    held: int = 0


class KnownNode(msgspec.Struct, kw_only=True):
    """``list_known_nodes``: enrolled with this authority but never seen by the controller."""

    name: str
    enrolled_at: float


# --- kill a worker, delete a node, task logs (Pydra, issue #17) ------------------------------


class KillWorker(_Body):
    """``kill_worker``: kill worker ``slot`` of node ``node`` (its task fails; it restarts)."""

    node: Key
    slot: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 0

    def __post_init__(self) -> None:
        """Refuse control characters in the name."""
        check_name(self.node, "node")


class KilledWorker(msgspec.Struct, kw_only=True):
    """``kill_worker``'s reply: the slot asked to die and the task it was running, if any."""

    node: str
    slot: int
    task: int | None = None
    key: str = ""


class NodeDelete(_Body):
    """``node_delete``: forget a node that is not UP (registry, store, credentials)."""

    id: Key

    def __post_init__(self) -> None:
        """Refuse control characters in the name."""
        check_name(self.id, "id")


class NodeDeleted(msgspec.Struct, kw_only=True):
    """``node_delete``'s reply: how many credentials were revoked now, and any note."""

    name: str
    status: str
    revoked: int = 0
    note: str = ""


class TaskLogs(_Body):
    """``task_logs``: the kept stdout/stderr and ``ctx.log`` lines of one instance."""

    task_instance_id: Id


class TaskLogsView(msgspec.Struct, kw_only=True):
    """``task_logs``' reply: the instance's log text (oldest cut first, with a marker)."""

    id: int
    key: str
    status: TaskStatus
    logs: str = ""
