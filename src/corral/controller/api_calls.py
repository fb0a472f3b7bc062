"""What each controller API function does (Pydra's Controller API, plus batch calls).

Each method takes a validated request struct (or nothing) and returns a reply struct; the
HTTP layer (:mod:`corral.controller.api`) authenticates, decodes and encodes around it.
Lists of instances and nodes are paged in SQL; what only exists in memory (which worker runs
what right now) comes from the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from corral import api_models as m
from corral import subjects, wire
from corral.controller import node_admin
from corral.controller.idempotency import Stamp
from corral.controller.submit import Sender, submit
from corral.core.taskstate import TaskInstance, TaskStatus
from corral.errors import InvalidArguments, NotFound, NotSerializable, RemoteError
from corral.records import AuditEntry
from corral.security import Authority
from corral.states import NodeStatus
from corral.store import Page, TaskRecords
from corral.tokens import Token

if TYPE_CHECKING:
    from corral.controller.parts import ControllerParts
    from corral.controller.tasks import TaskService

__all__ = ["ApiCalls", "Caller", "task_view"]

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_NODE_FIELDS = [c for c in m.NodeView.__struct_fields__]
_EDITABLE = {"labels": list[str], "attributes": dict[str, Any]}
#: per-field errors a refused batch reports at most
_MAX_FIELD_ERRORS = 100


def _value(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return None


def task_view(inst: TaskInstance) -> m.TaskView:
    """The API's view of an instance (arguments and result decoded)."""
    return m.TaskView(
        id=inst.id,
        key=inst.key,
        status=TaskStatus(inst.status),
        args=_value(inst.args),
        priority=inst.priority,
        parent=inst.parent,
        item=inst.item,
        labels=list(inst.labels),
        node=inst.node,
        worker=inst.worker,
        attempts=inst.attempts,
        max_attempts=inst.max_attempts,
        queued_at=inst.queued_at,
        started_at=inst.started_at,
        finished_at=inst.finished_at,
        progress=inst.progress,
        message=inst.message,
        result=_value(inst.result),
        error=inst.error,
        traceback=inst.traceback,
        history=inst.history,
    )


def _one(insts: list[TaskInstance]) -> m.QueueReply:
    (inst,) = insts
    return m.QueueReply(task_key=inst.key, instance_id=inst.id, time=inst.queued_at)


def _page(page: Page) -> m.TaskPage:
    return m.TaskPage(
        items=[task_view(i) for i in page.items],
        page=page.page,
        pages=page.pages,
        per_page=page.per_page,
        total=page.total,
        prev=page.prev,
        next=page.next,
    )


def encode_args(args: dict[str, Any]) -> bytes:
    """msgpack-encode task arguments, refusing what msgpack cannot carry.

    Raises:
        NotSerializable: naming the argument.
    """
    try:
        return _encode(args)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise NotSerializable(f"task arguments are not msgpack-able data: {exc}") from None


def _node_view(values: dict[str, Any]) -> m.NodeView:
    return m.NodeView(**{k: values[k] for k in _NODE_FIELDS})


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """Who makes a call that changes state, as the controller established it.

    Attributes:
        actor: The name the audit log gives (``api:<token name>``, a dashboard user).
        role: Their role (the token's or the user's).
        scope: Whose idempotency keys these are (``token:<id>``, ``ui:<user>``).
    """

    actor: str
    role: str
    scope: str

    @classmethod
    def of_token(cls, token: Token) -> Caller:
        """The caller an API token stands for (its name, its role, its id)."""
        return cls(actor=f"api:{token.name}", role=token.role, scope=f"token:{token.id}")


class ApiCalls:
    """The API functions of one controller.

    Args:
        parts: The started controller's services (task service, registry, command router,
            store) and its ``audit`` and ``wake`` functions.
    """

    def __init__(self, parts: ControllerParts) -> None:
        self.parts = parts

    def __repr__(self) -> str:
        return f"<ApiCalls of controller {self.parts.id[:8]}>"

    @property
    def tasks(self) -> TaskService:
        """The task service."""
        return self.parts.tasks

    @property
    def task_store(self) -> TaskRecords:
        """The task instances' store (a standby's too: its task service never starts)."""
        return self.parts.store.tasks

    # --- commands (SEER; docs/commands.md) ---------------------------------------------

    async def send_command(
        self, req: m.SendCommand, caller: Caller, key: str | None = None
    ) -> wire.CommandAccepted:
        """Send an addressed command; answers once it is on disk, with its serial and nodes.

        EXECUTE is refused here (it goes through :meth:`execute_command`), as on the bus.
        """
        return await self._command(req, caller, key, via_execute=False)

    async def execute_command(
        self, req: m.SendCommand, caller: Caller, key: str | None = None
    ) -> wire.CommandAccepted:
        """EXECUTE: run ``data`` (a Python file, base64 in JSON) on nodes that allow it."""
        return await self._command(req, caller, key, via_execute=True, kind="execute")

    async def _command(
        self,
        req: m.SendCommand,
        caller: Caller,
        key: str | None,
        *,
        via_execute: bool,
        kind: str | None = None,
    ) -> wire.CommandAccepted:
        request = wire.CommandRequest(
            targets=list(req.targets),
            kind=kind or req.kind,
            name=req.name,
            args=req.args,
            data=req.data,
            timeout=req.timeout,
            retire_after=req.retire_after,
        )
        sender = Sender(actor=caller.actor, role=caller.role, scope=caller.scope)
        accepted = await submit(
            self.parts.commands,
            self.parts.submissions,
            request,
            sender,
            via_execute=via_execute,
            key=key,
        )
        assert accepted is not None  # no reply subject: answered once on disk
        return accepted

    async def command_detail(self, req: m.CommandDetail) -> wire.CommandView:
        """One command with every node's outcome (live while the controller follows it)."""
        view = await self.parts.endpoints.command_view(req.serial)
        if view is None:
            raise NotFound(f"no command #{req.serial}", 404)
        return view

    async def list_commands(self, req: m.ListCommands) -> list[wire.CommandView]:
        """Recent commands, newest first, with how many nodes are in each state."""
        return await self.parts.endpoints.command_views(req.limit, req.before)

    # --- tasks --------------------------------------------------------------------------

    async def list_tasks(self, req: m.ListTasks) -> list[m.TaskKeyView]:
        """The task keys the cluster can run now."""
        found: dict[str, m.TaskKeyView] = {}
        for node in self.tasks.core.nodes.values():
            for key in node.keys:
                view = found.setdefault(
                    key, m.TaskKeyView(key=key, nodes=[], slots=0, toplevel=True)
                )
                view.nodes.append(node.name)
                view.slots += node.slots
                if key in node.subtasks:
                    view.toplevel = False
        views = sorted(found.values(), key=lambda v: v.key)
        if req.toplevel:
            views = [v for v in views if v.toplevel]
        if req.keys:
            wanted = set(req.keys)
            views = [v for v in views if v.key in wanted]
        return views

    def _entry(self, caller: Caller, action: str, target: str, **detail: Any) -> AuditEntry:
        return AuditEntry(
            at=self.parts.clock(),
            actor=caller.actor,
            action=action,
            target=target,
            detail=detail,
            role=caller.role,
        )

    def _audit(self, caller: Caller | None, action: str, target: str, **detail: Any) -> None:
        """Append an audit entry for ``caller`` (written with the controller's next commit).

        A call without a caller comes from inside the controller (the dashboard audits its
        own, with the signed-in user). Task calls write theirs with the task commit instead.
        """
        if caller is None:
            return
        self.parts.audit(self._entry(caller, action, target, **detail))

    def _check_args(self, key: str, args: list[dict[str, Any]], *, batch: bool) -> None:
        """Refuse arguments that do not fit the task's signature, before storing anything.

        Raises:
            InvalidArguments: naming each argument at fault (``args[<i>].<name>`` in a batch).
        """
        fields: dict[str, str] = {}
        check = self.tasks.signatures.check
        for i, values in enumerate(args):
            for name, why in check(key, values).items():
                fields[f"args[{i}].{name}" if batch else name] = why
            if len(fields) >= _MAX_FIELD_ERRORS:
                break
        if not fields:
            return
        said = "; ".join(f"{n}: {w}" for n, w in list(fields.items())[:5])
        more = f" (and {len(fields) - 5} more)" if len(fields) > 5 else ""
        raise InvalidArguments(
            f"invalid arguments for task {key!r}: {said}{more}. Nothing was queued; fix them "
            "and send again (list_tasks shows the tasks, docs/tasks.md their arguments)",
            422,
            fields,
        )

    async def _queue(
        self,
        function: str,
        req: m.QueueTask | m.QueueTasks,
        args: list[dict[str, Any]],
        caller: Caller | None,
        key: str | None,
        reply: Callable[[list[TaskInstance]], Any],
    ) -> Any:
        """Queue instances once per idempotency key; the key's row commits with them."""
        self._check_args(req.task_key, args, batch=function == "queue_tasks")
        encoded = [encode_args(a) for a in args]
        kind = m.QueueTasksReply if function == "queue_tasks" else m.QueueReply

        def extra(stamp: Stamp | None, insts: list[TaskInstance]) -> list[Any]:
            # Written in the task commit that stores the instances: one writer, one
            # transaction for the work, its key and its audit entry.
            rows: list[Any] = [] if stamp is None else [stamp.row(reply(insts))]
            if caller is not None:
                ids = [i.id for i in insts]
                rows.append(self._entry(caller, function, req.task_key, instances=ids))
            return rows

        async def submit(stamp: Stamp | None) -> Any:
            insts = await self.tasks.queue(
                req.task_key,
                encoded,
                priority=req.priority,
                labels=req.labels,
                max_attempts=req.max_attempts,
                extra=lambda insts: extra(stamp, insts),
            )
            return reply(insts)

        scope = caller.scope if caller is not None else "controller"
        return await self.parts.submissions.once(scope, key, function, req, kind, submit)

    async def queue_task(
        self, req: m.QueueTask, caller: Caller | None = None, key: str | None = None
    ) -> m.QueueReply:
        """Queue one instance; it starts at once if a worker is free."""
        reply: m.QueueReply = await self._queue("queue_task", req, [req.args], caller, key, _one)
        return reply

    async def run_task(
        self, req: m.RunTask, caller: Caller | None = None, key: str | None = None
    ) -> m.TaskView:
        """Queue one instance and wait until it has finished (one round trip)."""
        # The task runs while its queued row commits; the answer waits for that commit and
        # the result, not for the result's commit (see TaskService.wait). With a key, a
        # repeat waits for the instance the first call queued.
        queued: m.QueueReply = await self._queue("run_task", req, [req.args], caller, key, _one)
        (done,) = await self.tasks.wait([queued.instance_id], req.timeout)
        return task_view(done)

    async def queue_tasks(
        self, req: m.QueueTasks, caller: Caller | None = None, key: str | None = None
    ) -> m.QueueTasksReply:
        """Queue one instance per argument mapping, in one transaction."""

        def many(insts: list[TaskInstance]) -> m.QueueTasksReply:
            when = insts[0].queued_at if insts else 0.0
            return m.QueueTasksReply(
                task_key=req.task_key, instance_ids=[i.id for i in insts], time=when
            )

        reply: m.QueueTasksReply = await self._queue(
            "queue_tasks", req, list(req.args), caller, key, many
        )
        return reply

    async def cancel_task(self, req: m.CancelTask, caller: Caller | None = None) -> m.TaskView:
        """Dequeue, or ask the task to stop (``force``: kill its worker after the grace)."""
        ident = req.task_instance_id
        audit = None
        if caller is not None:
            audit = self._entry(caller, "cancel_task", str(ident), force=req.force)
        return task_view(await self.tasks.cancel(ident, force=req.force, audit=audit))

    async def wait(self, req: m.Wait) -> list[m.TaskView]:
        """Wait until the instances have finished; returns them in the order asked."""
        done = await self.tasks.wait(req.task_instance_ids, req.timeout)
        return [task_view(i) for i in done]

    async def list_queue(self, req: m.PageRequest) -> m.TaskPage:
        """Queued instances, in queue order (oldest first)."""
        await self.tasks.settled()
        page = await self.task_store.page(
            page=req.page,
            per_page=req.per_page or 25,
            statuses=[TaskStatus.QUEUED.value],
            newest_first=False,
        )
        return _page(page)

    async def list_running(self, req: m.PageRequest) -> m.TaskPage:
        """Running instances, those assigned to a node and not started yet, and those asked
        to stop, oldest first."""
        statuses = [
            TaskStatus.ASSIGNED.value,
            TaskStatus.RUNNING.value,
            TaskStatus.CANCEL_REQUESTED.value,
        ]
        await self.tasks.settled()
        page = await self.task_store.page(
            page=req.page, per_page=req.per_page or 25, statuses=statuses, newest_first=False
        )
        return _page(page)

    async def task_statuses(self) -> list[m.TaskStatusView]:
        """Every running instance's status, start time and progress (from memory, live)."""
        return [
            m.TaskStatusView(
                id=i.id,
                key=i.key,
                status=TaskStatus(i.status),
                node=i.node,
                started_at=i.started_at,
                progress=i.progress,
                message=i.message,
            )
            for i in self.tasks.running()
        ]

    async def task_history(self, req: m.TaskHistory) -> m.TaskPage:
        """The instances of one task key, newest first, a page at a time."""
        await self.tasks.settled()
        page = await self.task_store.page(page=req.page, per_page=req.per_page, key=req.key)
        return _page(page)

    async def task_history_detail(self, req: m.TaskDetail) -> m.TaskView:
        """One instance with its attempts, result or error and traceback."""
        inst = self.tasks.find(req.task_instance_id)
        if inst is None:
            inst = await self.task_store.get(req.task_instance_id)
        if inst is None:
            raise NotFound(f"no task instance {req.task_instance_id}", 404)
        return task_view(inst)

    async def task_logs(self, req: m.TaskLogs) -> m.TaskLogsView:
        """What one instance printed and ``ctx.log``-ged (bounded: the oldest text is cut)."""
        inst = self.tasks.find(req.task_instance_id)
        if inst is None:
            inst = await self.task_store.get(req.task_instance_id)
        if inst is None:
            raise NotFound(f"no task instance {req.task_instance_id}", 404)
        return m.TaskLogsView(
            id=inst.id, key=inst.key, status=TaskStatus(inst.status), logs=inst.logs
        )

    # --- nodes --------------------------------------------------------------------------

    async def node_list(self, req: m.PageRequest) -> m.NodePage:
        """The nodes the controller knows, by name, 25 a page (paged in SQL)."""
        store = self.parts.store
        found = await store.node_page(req.page, req.per_page or 25)
        page, pages = found.page, found.pages
        return m.NodePage(
            items=[_node_view(msgspec.structs.asdict(r)) for r in found.items],
            page=page,
            pages=pages,
            per_page=found.per_page,
            total=found.total,
            prev=page - 1 if page > 1 else None,
            next=page + 1 if page < pages else None,
        )

    async def node_detail(self, req: m.NodeDetail) -> m.NodeView:
        """One node as the registry keeps it now."""
        record = self.parts.registry.nodes.get(req.id)
        if record is None:
            raise NotFound(f"no node named {req.id!r}", 404)
        return _node_view(msgspec.structs.asdict(record))

    async def node_edit(self, req: m.NodeEdit, caller: Caller | None = None) -> m.NodeView:
        """Change a node's labels or attributes as the controller keeps them.

        Only those two fields may be set (Pydra copied any field onto the record); the
        node's next join replaces them with what it says itself. New nodes are enrolled
        (``corral enroll``), not created here.
        """
        values = dict(req.values)
        name = values.pop("id", None)
        if not isinstance(name, str):
            raise RemoteError(
                "node_edit needs values['id'], the node's name; new nodes are added with "
                "`corral enroll NAME`, not created through the API",
                400,
            )
        unknown = sorted(set(values) - set(_EDITABLE))
        if unknown:
            raise RemoteError(
                f"node_edit cannot set {', '.join(unknown)}: only {', '.join(_EDITABLE)}", 400
            )
        record = self.parts.registry.nodes.get(name)
        if record is None:
            raise NotFound(f"no node named {name!r}", 404)
        try:
            checked = {k: msgspec.convert(v, _EDITABLE[k]) for k, v in values.items()}
        except msgspec.ValidationError as exc:
            raise RemoteError(f"node_edit: {exc}", 400) from None
        if "labels" in checked:
            record.labels = tuple(checked["labels"])
        if "attributes" in checked:
            record.attributes = checked["attributes"]
        self.parts.registry.mark_dirty([name])
        self._audit(caller, "node_edit", name, **msgspec.to_builtins(checked))
        self.parts.wake()
        return _node_view(msgspec.structs.asdict(record))

    async def node_status(self) -> list[m.NodeStatusView]:
        """Every node and its worker slots: idle, busy with a task, or not connected."""
        out = []
        core = self.tasks.core
        for record in self.parts.registry.all():
            workers = core.nodes.get(record.name)
            if record.status != NodeStatus.UP or workers is None:
                slots = [m.WorkerView(slot=i, state="not connected") for i in range(record.slots)]
                out.append(
                    m.NodeStatusView(
                        name=record.name, status=NodeStatus(record.status), workers=slots
                    )
                )
                continue
            held = [core.active[i] for i in workers.leases.values() if i in core.active]
            busy = {i.worker: i for i in held if i.worker >= 0}
            slots = []
            for n in range(workers.slots):
                inst = busy.get(n)
                if inst is None:
                    slots.append(m.WorkerView(slot=n, state="idle"))
                else:
                    slots.append(m.WorkerView(slot=n, state="busy", task=inst.id, key=inst.key))
            out.append(
                m.NodeStatusView(
                    name=record.name,
                    status=NodeStatus(record.status),
                    keys=sorted(workers.keys),
                    workers=slots,
                    held=len(held),
                )
            )
        return out

    async def connect(self, caller: Caller | None = None) -> dict[str, int]:
        """Announce the controller now, so nodes waiting to join do so at once."""
        nc = self.parts.nc
        announce = wire.Announce(
            controller=self.parts.id,
            started=self.parts.started,
            heartbeat_interval=self.parts.config.heartbeat_interval,
        )
        await nc.publish(subjects.ANNOUNCE, wire.encode(announce), headers=wire.HEADERS)
        self._audit(caller, "connect", "nodes")
        return {"nodes": len(self.parts.registry)}

    async def kill_worker(self, req: m.KillWorker, caller: Caller | None = None) -> m.KilledWorker:
        """Kill worker ``slot`` of ``node``: its task fails as a crashed worker's; it restarts."""
        actor = caller.actor if caller is not None else "the controller"
        killed = await node_admin.kill_worker(
            self.parts.registry, self.tasks.core, self.parts.nc, req, actor
        )
        self._audit(caller, "kill_worker", req.node, slot=req.slot, task=killed.task)
        return killed

    async def node_delete(self, req: m.NodeDelete, caller: Caller | None = None) -> m.NodeDeleted:
        """Forget a node that is not UP: registry, store, and its credentials revoked."""
        deleted = await node_admin.delete_node(
            self.parts.registry, self.parts.store, self.parts.config, req
        )
        self._audit(caller, "node_delete", req.id, status=deleted.status, revoked=deleted.revoked)
        return deleted

    async def list_known_nodes(self) -> list[m.KnownNode]:
        """Nodes enrolled with this authority that the controller has never seen."""
        data = self.parts.config.data_path
        if not Authority.exists(data):
            return []
        enrolled = Authority.load(data).enrolled()
        seen = self.parts.registry.nodes
        return [
            m.KnownNode(name=name, enrolled_at=keys[0].issued_at)
            for name, keys in sorted(enrolled.items())
            if ":" not in name and name not in seen and any(k.revoked_at is None for k in keys)
        ]
