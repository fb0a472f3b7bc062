"""Server-sent events: each page's data, pushed whenever it changes.

``GET /ui/events/<page>`` streams ``data: <json>`` events. The stream reads the page's data
(:mod:`corral.dashboard.data`) a few times a second and sends it only when it changed, with a
comment line every 15 seconds so proxies keep the connection. It re-checks the session on
every round: a signed-out, revoked or removed user's stream ends with an ``signout`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from corral import api_models as m
from corral import bus
from corral.dashboard import data
from corral.dashboard.trends import KEEP, Trends
from corral.dashboard.web import HEADERS
from corral.errors import CorralError, UsageError
from corral.tokens import Role

if TYPE_CHECKING:
    from corral.controller.api_calls import ApiCalls
    from corral.controller.parts import ControllerParts
    from corral.dashboard.auth import Gate
    from corral.dashboard.guardians import GuardianBoard

__all__ = ["Live"]

#: seconds between reads of a page's data
INTERVAL = 0.25
KEEPALIVE = 15.0
#: seconds between gathering the agents (a broadcast that listens for answers)
AGENTS_EVERY = 2.0


class Live:
    """The event streams of one dashboard.

    Args:
        ctl: the started controller's services the pages' data is read from.
        calls: the API's functions (a task's detail).
        board: the guardians the guardian pages show.
        gate: who may read (every stream is re-checked each round).
        trends: the charts' samples.
    """

    def __init__(
        self,
        ctl: ControllerParts,
        calls: ApiCalls,
        board: GuardianBoard,
        gate: Gate,
        trends: Trends,
    ) -> None:
        self.ctl = ctl
        self.trends = trends
        self.calls = calls
        self.board = board
        self.gate = gate
        self._agents: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._agents_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "<Live>"

    async def agents(self) -> list[dict[str, Any]]:
        """The live agents and their handlers (gathered at most every two seconds)."""
        async with self._agents_lock:
            at, found = self._agents
            if time.monotonic() - at > AGENTS_EVERY:
                assert self.ctl.nc is not None
                infos = await bus.gather_agents(self.ctl.nc, 0.3)
                found = [msgspec.to_builtins(a) for a in infos]
                self._agents = (time.monotonic(), found)
            return found

    def source(self, page: str, request: Request) -> Callable[[], Awaitable[Any]]:
        """The function that reads ``page``'s data.

        Raises:
            UsageError: no such page, or a bad parameter.
        """
        ctl = self.ctl
        q = request.query_params

        async def fleet() -> Any:
            return data.fleet(ctl, q.get("filter", ""))

        async def node() -> Any:
            name = q.get("name", "")
            return {
                "node": [n for n in data.fleet(ctl) if n["name"] == name],
                "reports": [r for r in data.reports(ctl)["reports"] if r["node"] == name],
            }

        async def commands() -> Any:
            return await data.command_history(ctl)

        async def command() -> Any:
            try:
                serial = int(q.get("serial", ""))
            except ValueError:
                raise UsageError("events/command needs ?serial=N") from None
            return await data.command_detail(ctl, serial)

        async def tasks() -> Any:
            return await data.tasks_live(ctl)

        async def task() -> Any:
            try:
                ident = int(q.get("id", ""))
            except ValueError:
                raise UsageError("events/task needs ?id=N") from None
            view = await self.calls.task_history_detail(m.TaskDetail(task_instance_id=ident))
            return {
                "status": view.status,
                "progress": view.progress,
                "message": view.message,
                "attempts": view.attempts,
            }

        async def groups() -> Any:
            return {"groups": data.groups(ctl), "agents": await self.agents()}

        async def guardians() -> Any:
            self.board.start()
            return self.board.snapshot()

        async def reports() -> Any:
            return data.reports(ctl)

        sources: dict[str, Callable[[], Awaitable[Any]]] = {
            "fleet": fleet,
            "node": node,
            "commands": commands,
            "command": command,
            "tasks": tasks,
            "task": task,
            "groups": groups,
            "guardians": guardians,
            "reports": reports,
            "charts": self._charts(),
        }
        if page not in sources:
            raise UsageError(f"no event stream {page!r}: use one of {', '.join(sources)}")
        return sources[page]

    def _charts(self) -> Callable[[], Awaitable[Any]]:
        """The charts' source for one stream: the whole ring of samples once, then only the
        samples this stream has not sent yet (``reset`` tells the page to start afresh)."""
        sent = 0

        async def charts() -> Any:
            nonlocal sent
            rows = self.trends.since(sent)
            reset = sent == 0
            if rows:
                sent = rows[-1]["seq"]
            return {"reset": reset, "keep": KEEP, "samples": rows}

        return charts

    async def events(self, request: Request, page: str) -> Response:
        """``GET /ui/events/<page>``: the page's data as server-sent events."""
        await self.gate.require(request, Role.READ)
        read = self.source(page, request)
        first = await read()  # a bad parameter fails here, as a 400, not mid-stream

        async def stream() -> AsyncIterator[bytes]:
            last = ""
            quiet = time.monotonic()
            value = first
            while True:
                text = json.dumps(value, default=repr, separators=(",", ":"))
                if text != last:
                    last = text
                    quiet = time.monotonic()
                    yield f"data: {text}\n\n".encode()
                elif time.monotonic() - quiet > KEEPALIVE:
                    quiet = time.monotonic()
                    yield b": keepalive\n\n"
                await asyncio.sleep(INTERVAL)
                if await request.is_disconnected():
                    return
                try:
                    signed_out = await self.gate.session(request) is None
                except CorralError:  # the store failed: the data read below says so
                    signed_out = False
                if signed_out:
                    yield b"event: signout\ndata: {}\n\n"
                    return
                try:
                    value = await read()
                except CorralError as exc:
                    value = {"error": str(exc)}

        headers = {**HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
