"""The dashboard's pages and forms, mounted under ``/ui`` on the controller's API app.

Reading pages need the ``read`` role; forms that change something need ``operate`` (queue,
cancel, edit a node, send a command, talk to a guardian) and EXECUTE needs ``execute``, as in
the API. Every form goes through :meth:`~corral.dashboard.auth.Gate.form` (session, role,
origin, CSRF token) before it does anything. Commands take the bus's and the API's own path
(:func:`corral.controller.submit.submit`), with the signed-in user as actor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from corral import api_models as m
from corral import wire
from corral.controller.api_calls import ApiCalls
from corral.controller.submit import Sender, submit
from corral.dashboard import data
from corral.dashboard.auth import Gate, Session
from corral.dashboard.chart_pages import ChartPages
from corral.dashboard.guardian_pages import GuardianPages
from corral.dashboard.guardians import GuardianBoard
from corral.dashboard.live import Live
from corral.dashboard.lockout import SignInThrottle
from corral.dashboard.signin_pages import SignInPages
from corral.dashboard.task_pages import TaskPages
from corral.dashboard.trends import Sampler, Trends
from corral.dashboard.web import flash, guarded, json_object, redirect, render
from corral.errors import CorralError, UsageError
from corral.records import AuditEntry
from corral.tokens import Role, TokenChecker

if TYPE_CHECKING:
    from corral.controller.parts import ControllerParts

__all__ = ["Dashboard", "mount"]

_KINDS = ("command", "shell", "get", "set")


class Dashboard:
    """The dashboard of one controller.

    Args:
        controller: the started controller's services (registry, commands, tasks, store...).
        checker: the API's token checker.
    """

    def __init__(self, controller: ControllerParts, checker: TokenChecker) -> None:
        self.ctl = controller
        self.gate = Gate(controller.store, checker)
        self.calls = ApiCalls(controller)
        self.board = GuardianBoard(controller)
        #: the charts' samples, taken every few seconds from the controller's memory
        self.trends = Trends()
        self.sampler = Sampler(controller, self.trends)
        self.live = Live(self.ctl, self.calls, self.board, self.gate, self.trends)
        self.task_pages = TaskPages(
            ctl=self.ctl, gate=self.gate, calls=self.calls, audit=self.audit
        )
        self.guardian_pages = GuardianPages(gate=self.gate, board=self.board, audit=self.audit)
        self.chart_pages = ChartPages(self.gate)
        self.signin = SignInPages(ctl=self.ctl, gate=self.gate, audit=self.audit)

    def __repr__(self) -> str:
        return f"<Dashboard {self.gate!r}>"

    @property
    def throttle(self) -> SignInThrottle:
        """The sign-in throttle (wrong passwords per name and per address)."""
        return self.signin.throttle

    @property
    def clock(self) -> Callable[[], float]:
        """The throttle's clock (monotonic seconds); tests replace it."""
        return self.signin.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.signin.clock = clock

    async def stop(self) -> None:
        """Stop the guardian watch and the charts' sampler."""
        await self.sampler.stop()
        await self.board.stop()

    def audit(self, session: Session, action: str, target: str, **detail: Any) -> None:
        """Record a dashboard action in the audit log (written with the next commit)."""
        self.ctl.audit(
            AuditEntry(
                at=self.ctl.clock(),
                actor=session.user,
                action=f"dashboard.{action}",
                target=target,
                detail=detail,
                role=session.role.value,
            )
        )

    # --- fleet --------------------------------------------------------------------------

    async def fleet(self, request: Request) -> Response:
        """Every node, filtered by a glob or label."""
        session = await self.gate.require(request, Role.READ)
        pattern = request.query_params.get("filter", "")
        return render("fleet.html", session, nodes=data.fleet(self.ctl, pattern), filter=pattern)

    async def node(self, request: Request, name: str) -> Response:
        """One node: attributes (editable with operate), recent commands and tasks."""
        session = await self.gate.require(request, Role.READ)
        record = self.ctl.registry.nodes.get(name)
        if record is None:
            return render(
                "error.html", session, 404, title="No such node", message=f"no node named {name!r}"
            )
        (row,) = [r for r in data.fleet(self.ctl) if r["name"] == name]
        commands = [c for c in await data.command_history(self.ctl, 200) if name in c["nodes"]]
        assert self.ctl.tasks is not None and self.ctl.tasks.store is not None
        page = await self.ctl.tasks.store.page(page=1, per_page=200)
        tasks = [t for t in page.items if t.node == name][:20]
        return render(
            "node.html",
            session,
            node=row,
            attributes=record.attributes,
            commands=commands[:20],
            reports=[r for r in data.reports(self.ctl)["reports"] if r["node"] == name],
            tasks=tasks,
            can_edit=session.role.allows(Role.OPERATE),
        )

    async def node_edit(self, request: Request, name: str) -> Response:
        """Change a node's labels and attributes (the API's node_edit)."""
        session, fields = await self.gate.form(request, Role.OPERATE)
        try:
            labels = [x for x in fields.get("labels", "").replace(",", " ").split() if x]
            attributes = json_object(fields.get("attributes", ""), "attributes")
            await self.calls.node_edit(
                m.NodeEdit(values={"id": name, "labels": labels, "attributes": attributes})
            )
        except CorralError as exc:
            flash(session, str(exc))
        else:
            self.audit(session, "node_edit", name, labels=labels)
            flash(session, f"node {name} updated", "ok")
        return redirect(f"/ui/nodes/{name}")

    async def node_forget(self, request: Request, name: str) -> Response:
        """Forget a node that is not UP (the API's node_delete: registry, store, credentials)."""
        session, _ = await self.gate.form(request, Role.OPERATE)
        try:
            gone = await self.calls.node_delete(m.NodeDelete(id=name))
        except CorralError as exc:
            flash(session, str(exc))
            return redirect(f"/ui/nodes/{name}")
        self.audit(session, "node_delete", name, status=gone.status, revoked=gone.revoked)
        note = f" ({gone.note})" if gone.note else ""
        flash(session, f"node {name} forgotten, {gone.revoked} credential(s) revoked{note}", "ok")
        return redirect("/ui/fleet")

    # --- commands -----------------------------------------------------------------------

    async def commands(self, request: Request) -> Response:
        """The command form and the history."""
        session = await self.gate.require(request, Role.READ)
        kinds = _KINDS + (("execute",) if session.role.allows(Role.EXECUTE) else ())
        return render(
            "commands.html",
            session,
            history=await data.command_history(self.ctl),
            kinds=kinds,
            can_send=session.role.allows(Role.OPERATE),
            target_hints=data.target_hints(self.ctl),
        )

    async def send(self, request: Request) -> Response:
        """Send a command the way the bus and the API do (:func:`corral.controller.submit`):
        the same checks, the configured ``retire_after``, the signed-in user as actor."""
        session, fields = await self.gate.form(request, Role.OPERATE)
        kind = fields.get("kind", "command")
        try:
            targets = [t for t in fields.get("targets", "").replace(",", " ").split() if t]
            if "all" in targets and "all" not in self.ctl.registry.nodes:
                raise UsageError("no node is named 'all': every node is *")
            args = json_object(fields.get("args", ""), "args")
            if kind == "shell" and fields.get("cmd", "").strip():
                args["cmd"] = fields["cmd"]
            body = fields.get("code", "").encode() if kind == "execute" else b""
            try:
                timeout = float(fields.get("timeout") or 60)
            except ValueError:
                raise UsageError("timeout must be a number of seconds") from None
            request_msg = wire.CommandRequest(
                targets=targets,
                kind=kind,
                name=fields.get("name", "").strip(),
                args=args,
                data=body,
                timeout=timeout,
            )
            sender = Sender(actor=session.user, role=session.role.value, scope=f"ui:{session.user}")
            accepted = await submit(
                self.ctl.commands,
                self.ctl.submissions,
                request_msg,
                sender,
                via_execute=kind == "execute" and session.role.allows(Role.EXECUTE),
            )
            assert accepted is not None  # no reply subject: answered once on disk
        except CorralError as exc:
            flash(session, str(exc))
            return redirect("/ui/commands")
        return redirect(f"/ui/commands/{accepted.serial}")

    async def command(self, request: Request, serial: int) -> Response:
        """One command with every node's outcome (live)."""
        session = await self.gate.require(request, Role.READ)
        found = await data.command_detail(self.ctl, serial)
        if found is None:
            return render(
                "error.html", session, 404, title="No such command", message=f"no command #{serial}"
            )
        return render("command.html", session, command=found)

    # --- groups, agents, reports --------------------------------------------------------

    async def groups(self, request: Request) -> Response:
        """Live groups and agents."""
        session = await self.gate.require(request, Role.READ)
        return render("groups.html", session, groups=data.groups(self.ctl))

    async def reports(self, request: Request) -> Response:
        """The latest report of every node and topic."""
        session = await self.gate.require(request, Role.READ)
        return render("reports.html", session, reports=data.reports(self.ctl))

    async def home(self, request: Request) -> Response:
        """``/`` and ``/ui``: to the fleet."""
        return redirect("/ui/fleet")


def mount(app: FastAPI, controller: ControllerParts, checker: TokenChecker) -> Dashboard:
    """Add the dashboard's routes (``/ui/...``, ``/`` redirecting there) to ``app``."""
    from importlib.resources import files

    d = Dashboard(controller, checker)
    t, g = d.task_pages, d.guardian_pages
    pages: list[tuple[str, str, Any]] = [
        ("/", "GET", d.home),
        ("/ui", "GET", d.home),
        ("/ui/", "GET", d.home),
        ("/ui/login", "GET", d.signin.login_page),
        ("/ui/login", "POST", d.signin.login),
        ("/ui/logout", "POST", d.signin.logout),
        ("/ui/fleet", "GET", d.fleet),
        ("/ui/charts", "GET", d.chart_pages.charts),
        ("/ui/nodes/{name}", "GET", d.node),
        ("/ui/nodes/{name}/edit", "POST", d.node_edit),
        ("/ui/nodes/{name}/forget", "POST", d.node_forget),
        ("/ui/commands", "GET", d.commands),
        ("/ui/commands", "POST", d.send),
        ("/ui/commands/{serial}", "GET", d.command),
        ("/ui/tasks", "GET", t.tasks),
        ("/ui/tasks", "POST", t.queue),
        ("/ui/tasks/{ident}", "GET", t.task),
        ("/ui/tasks/{ident}/cancel", "POST", t.cancel),
        ("/ui/history/{key}", "GET", t.history),
        ("/ui/groups", "GET", d.groups),
        ("/ui/reports", "GET", d.reports),
        ("/ui/guardians", "GET", g.guardians),
        ("/ui/guardians/{name}", "GET", g.guardian),
        ("/ui/guardians/{name}/graph.json", "GET", g.guardian_graph),
        ("/ui/guardians/{name}/request", "POST", g.guardian_request),
        ("/ui/guardians/{name}/mode", "POST", g.guardian_mode),
    ]
    for path, method, page in pages:
        app.add_api_route(
            path,
            guarded(page),
            methods=[method],
            include_in_schema=False,
            response_class=Response,
        )
    app.add_api_route(
        "/ui/events/{page}",
        guarded(d.live.events, json_errors=True),
        methods=["GET"],
        include_in_schema=False,
        response_class=Response,
    )
    d.sampler.start()
    static = files("corral.dashboard").joinpath("static")
    app.mount("/ui/static", StaticFiles(directory=str(static)), name="dashboard-static")
    return d
