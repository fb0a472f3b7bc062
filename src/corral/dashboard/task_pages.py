"""The dashboard's task pages: queue, running with progress, cancel, detail, history."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from fastapi import Request
from fastapi.responses import Response

from corral import api_models as m
from corral.dashboard import data
from corral.dashboard.auth import Gate
from corral.dashboard.web import flash, json_object, redirect, render, safe_next
from corral.errors import CorralError, UsageError
from corral.tokens import Role

if TYPE_CHECKING:
    from corral.controller.api_calls import ApiCalls
    from corral.controller.parts import ControllerParts

__all__ = ["TaskPages"]


class TaskPages:
    """The dashboard's task pages.

    Args:
        ctl: the started controller's services (the live task data).
        gate: who is signed in, with which role.
        calls: the API's functions (queue, cancel, detail, history).
        audit: records a dashboard action (``audit(session, action, target, **detail)``).
    """

    def __init__(
        self, *, ctl: ControllerParts, gate: Gate, calls: ApiCalls, audit: Callable[..., None]
    ) -> None:
        self.ctl = ctl
        self.gate = gate
        self.calls = calls
        self.audit = audit

    def __repr__(self) -> str:
        return "<TaskPages>"

    # --- tasks --------------------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        """Queue form, running instances with progress, the queue, the task keys."""
        session = await self.gate.require(request, Role.READ)
        keys = await self.calls.list_tasks(m.ListTasks(toplevel=True))
        return render(
            "tasks.html",
            session,
            keys=keys,
            live=await data.tasks_live(self.ctl),
            can_queue=session.role.allows(Role.OPERATE),
        )

    async def queue(self, request: Request) -> Response:
        """Queue one instance with JSON arguments."""
        session, fields = await self.gate.form(request, Role.OPERATE)
        try:
            try:
                priority = int(fields.get("priority") or 5)
            except ValueError:
                raise UsageError("priority must be a whole number from 0 to 9") from None
            req = msgspec.convert(
                {
                    "task_key": fields.get("task_key", "").strip(),
                    "args": json_object(fields.get("args", ""), "args"),
                    "priority": priority,
                },
                m.QueueTask,
            )
            reply = await self.calls.queue_task(req)
        except msgspec.ValidationError as exc:
            flash(session, f"cannot queue: {exc}")
            return redirect("/ui/tasks")
        except CorralError as exc:
            flash(session, str(exc))
            return redirect("/ui/tasks")
        self.audit(session, "queue_task", reply.task_key, instance=reply.instance_id)
        flash(session, f"queued {reply.task_key} as instance {reply.instance_id}", "ok")
        return redirect("/ui/tasks")

    async def cancel(self, request: Request, ident: int) -> Response:
        """Cancel an instance (dequeue, or ask it to stop)."""
        session, fields = await self.gate.form(request, Role.OPERATE)
        try:
            await self.calls.cancel_task(m.CancelTask(task_instance_id=ident))
        except CorralError as exc:
            flash(session, str(exc))
        else:
            self.audit(session, "cancel_task", str(ident))
            flash(session, f"asked instance {ident} to stop", "ok")
        return redirect(safe_next(fields.get("next", "")) if fields.get("next") else "/ui/tasks")

    async def task(self, request: Request, ident: int) -> Response:
        """One instance: arguments, attempts, result or traceback, and its logs."""
        session = await self.gate.require(request, Role.READ)
        view = await self.calls.task_history_detail(m.TaskDetail(task_instance_id=ident))
        logs = await self.calls.task_logs(m.TaskLogs(task_instance_id=ident))
        return render(
            "task.html",
            session,
            task=view,
            logs=logs.logs,
            can_cancel=session.role.allows(Role.OPERATE),
        )

    async def history(self, request: Request, key: str) -> Response:
        """The instances of one task key, newest first, a page at a time."""
        session = await self.gate.require(request, Role.READ)
        try:
            page_no = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            page_no = 1
        page = await self.calls.task_history(m.TaskHistory(key=key, page=page_no, per_page=20))
        return render("history.html", session, key=key, page=page)
