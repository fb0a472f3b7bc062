"""The dashboard's guardian pages: views, request and mode forms, the state graph (as JSON,
laid out and drawn by the browser with the vendored dagre: no Graphviz on the host)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from corral.dashboard.auth import Gate
from corral.dashboard.web import HEADERS, flash, redirect, render
from corral.errors import CorralError
from corral.tokens import Role

if TYPE_CHECKING:
    from corral.dashboard.guardians import GuardianBoard

__all__ = ["GuardianPages"]


class GuardianPages:
    """The dashboard's guardian pages.

    Args:
        gate: who is signed in, with which role.
        board: the guardians, as the controller's connection sees them.
        audit: records a dashboard action (``audit(session, action, target, **detail)``).
    """

    def __init__(self, *, gate: Gate, board: GuardianBoard, audit: Callable[..., None]) -> None:
        self.gate = gate
        self.board = board
        self.audit = audit

    def __repr__(self) -> str:
        return "<GuardianPages>"

    # --- guardians ----------------------------------------------------------------------

    async def guardians(self, request: Request) -> Response:
        """Every guardian's state, request, mode and status."""
        session = await self.gate.require(request, Role.READ)
        self.board.start()
        return render("guardians.html", session, guardians=self.board.snapshot())

    async def guardian(self, request: Request, name: str) -> Response:
        """One guardian: its view, notifications, forms, and its state graph (drawn in the
        browser from :meth:`guardian_graph`)."""
        session = await self.gate.require(request, Role.READ)
        self.board.start()
        view = self.board.seen(name) if name in self.board.views else None
        requestable: list[str] = []
        try:
            graph = await self.board.client("dashboard").graph(name)
            requestable = [s.name for s in graph.states if s.request]
            if view is None:
                view = graph.view
        except CorralError as exc:
            if view is None:
                return render(
                    "error.html", session, 404, title="No such guardian", message=str(exc)
                )
        return render(
            "guardian.html",
            session,
            g=msgspec.to_builtins(view),
            states=requestable,
            can_operate=session.role.allows(Role.OPERATE),
            now=time.time(),
        )

    async def guardian_graph(self, request: Request, name: str) -> Response:
        """``GET /ui/guardians/<name>/graph.json``: states, edges and view, as JSON."""
        await self.gate.require(request, Role.READ)
        try:
            graph = await self.board.graph(name)
        except CorralError as exc:
            return JSONResponse({"error": str(exc)}, 404, headers=HEADERS)
        return JSONResponse(graph, headers=HEADERS)

    async def guardian_request(self, request: Request, name: str) -> Response:
        """Ask a guardian for a state."""
        session, fields = await self.gate.form(request, Role.OPERATE)
        state = fields.get("state", "")
        try:
            await self.board.client(session.user).request(name, state)
        except CorralError as exc:
            flash(session, str(exc))
        else:
            self.audit(session, "guardian_request", name, state=state)
            flash(session, f"asked {name} for {state}", "ok")
        return redirect(f"/ui/guardians/{name}")

    async def guardian_mode(self, request: Request, name: str) -> Response:
        """Change a guardian's mode."""
        session, fields = await self.gate.form(request, Role.OPERATE)
        mode = fields.get("mode", "")
        try:
            await self.board.client(session.user).set_mode(name, mode)
        except CorralError as exc:
            flash(session, str(exc))
        else:
            self.audit(session, "guardian_mode", name, mode=mode)
            flash(session, f"{name} is now {mode.upper()}", "ok")
        return redirect(f"/ui/guardians/{name}")
