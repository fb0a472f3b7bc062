"""The controller's HTTP API: FastAPI in the controller's own event loop, one auth gate.

Theory of operation: every function of :class:`~corral.controller.api_calls.ApiCalls` is a
``POST /<function>`` taking a JSON object of its keyword arguments, or Pydra's own body
``{"args": [...], "kwargs": {...}}`` (the positional ``args`` fill the function's fields in
order), so the Python client calls it like a local method. Each call goes through
:func:`_endpoint`: the token is checked first (no token: 401 and nothing happens), then the
body is decoded into the function's msgspec struct (invalid: 422), then the function runs.
Errors come back as ``{"code": <Pydra code>, "error": "...", "kind": "<class>"}`` (plus
``"fields"``, one message per argument, when arguments do not fit) with the HTTP status of
the error's class: :func:`corral.errors.http_error` makes the reply from the code and status
each class of the one error tree carries, and the client raises the class ``kind`` names, as
a bus client does for the same failure:

=====  ===========  ============================================================
code   HTTP         meaning
=====  ===========  ============================================================
-1     401 / 403    authentication failure: token refused / role too low
-2     503          disconnection: the controller lost its store or bus
-3     400 404 409  error in the remote function: refused, no such id, conflict
       413 422 429  body or arguments too large, arguments that do not fit, too many calls
       504          a ``wait`` ran out of time
-4     401          no key: no token was sent
-5     500          unknown error
-6     404 / 405    remote function not found
=====  ===========  ============================================================

The OpenAPI schema (``/openapi.json``, browsable at ``/docs``) is generated from the same
structs. uvicorn serves on a socket bound here, so ``api_port = 0`` picks a free port.
In front of everything (API and dashboard) sits
:class:`~corral.controller.http_limits.EntryLimits`: the body limit (413, checked before the
body is read) and the per-token rate and in-flight limits (429 with ``Retry-After``); the
JSON depth limit (422) is checked here, before decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral import api_models as m
from corral import wire
from corral._version import __version__
from corral.controller.api_calls import ApiCalls, Caller
from corral.controller.api_docs import add_docs
from corral.controller.http_limits import EntryLimits
from corral.controller.monitoring import Monitor, Watched
from corral.controller.probes import mount_monitoring
from corral.core.limits import CallLimiter, json_depth_error
from corral.errors import (
    ConfigError,
    CorralError,
    FunctionNotFound,
    InvalidArguments,
    UnknownError,
    http_error,
)
from corral.tokens import Role, TokenChecker

if TYPE_CHECKING:
    from corral.controller.service import Controller
    from corral.dashboard.routes import Dashboard

__all__ = ["ApiServer", "FUNCTIONS", "build_app"]

log = logging.getLogger("corral.api")

Handler = Callable[..., Awaitable[Any]]

#: name -> (request struct or None, reply type, role needed, summary)
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
#: Functions that change state: they get the caller the token stands for, and are audited
#: with it (never with a name the client sent).
_WITH_CALLER = frozenset(
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
KEYED = m.KEYED  # submissions that take an ``Idempotency-Key`` header

_JSON = "application/json"
_encode = msgspec.json.Encoder().encode


def error_response(exc: Exception) -> Response:
    """The HTTP reply for an exception raised by an API function or the gate: the status and
    body :func:`corral.errors.http_error` gives it."""
    if not isinstance(exc, CorralError):
        log.error("API function failed", exc_info=exc)
    status, body = http_error(exc)
    return Response(_encode(body), status, media_type=_JSON)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


_generic = msgspec.json.Decoder()


def _pydra_form(body: bytes, kind: type[Any], decoder: msgspec.json.Decoder[Any]) -> Any:
    """Pydra's body, ``{"args": [...], "kwargs": {...}}``, as the function's request struct.

    The positional ``args`` fill the struct's fields in order, ``kwargs`` the rest. Tried
    only when the body is not today's object of keyword arguments.

    Returns:
        The request, or ``None`` when the body is not in Pydra's form either.

    Raises:
        InvalidArguments: it is in Pydra's form, but its arguments do not fit (422).
    """
    try:
        data = _generic.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict) or not data or set(data) - {"args", "kwargs"}:
        return None
    positional, named = data.get("args", []), data.get("kwargs", {})
    if not isinstance(positional, list) or not isinstance(named, dict):
        return None
    fields = kind.__struct_fields__
    how = f"Pydra's form: args fill {', '.join(fields)} in order, kwargs the rest"
    if len(positional) > len(fields):
        raise InvalidArguments(
            f"invalid arguments: {len(positional)} positional arguments, but this function "
            f"takes at most {len(fields)} ({how})"
        )
    values = dict(zip(fields, positional, strict=False))
    twice = sorted(set(values) & set(named))
    if twice:
        raise InvalidArguments(f"invalid arguments: {', '.join(twice)} given twice ({how})")
    try:
        return decoder.decode(_encode({**values, **named}))
    except msgspec.DecodeError as exc:
        raise InvalidArguments(f"invalid arguments: {exc} ({how})") from None


def _endpoint(
    handler: Handler,
    kind: type[Any] | None,
    role: Role,
    checker: TokenChecker,
    name: str = "",
) -> Callable[[Request], Awaitable[Response]]:
    """One API function behind the gate: token, then body, then the call."""
    decoder = msgspec.json.Decoder(kind) if kind is not None else None

    async def endpoint(request: Request) -> Response:
        try:
            token = await checker.check(_bearer(request), role)
            extra: dict[str, Any] = {}
            if name in _WITH_CALLER:
                extra["caller"] = Caller.of_token(token)
            if name in KEYED:  # elsewhere a key is ignored: there is nothing to repeat
                extra["key"] = request.headers.get("idempotency-key")
            if decoder is None:
                result = await handler(**extra)
            else:
                body = await request.body()
                if (deep := json_depth_error(body)) is not None:
                    return error_response(InvalidArguments(f"invalid arguments: {deep}"))
                try:
                    args = decoder.decode(body or b"{}")
                except msgspec.DecodeError as exc:
                    assert kind is not None
                    args = _pydra_form(body, kind, decoder)
                    if args is None:
                        return error_response(InvalidArguments(f"invalid arguments: {exc}"))
                result = await handler(args, **extra)
            return Response(_encode(result), media_type=_JSON)
        except Exception as exc:  # every failure becomes a coded error reply
            return error_response(exc)

    return endpoint


def _ref(kind: Any) -> dict[str, Any]:
    (schema,), _ = msgspec.json.schema_components(
        [kind], ref_template="#/components/schemas/{name}"
    )
    return schema


def _openapi_extra(kind: type[Any] | None, reply: Any, name: str = "") -> dict[str, Any]:
    errors = {
        str(s): {"description": d, "content": {_JSON: {"schema": _ref(m.ErrorBody)}}}
        for s, d in (
            (401, "no or refused token (code -4 / -1)"),
            (403, "the token's role may not make this call (code -1)"),
            (
                422,
                "invalid arguments (task arguments that do not fit the task's signature: "
                "`fields` says what is wrong with each), JSON nested too deeply, or an "
                "Idempotency-Key sent with another request (code -3)",
            ),
            (413, "request body over max_request_bytes (code -3)"),
            (429, "too many calls for this token; see Retry-After (code -3)"),
            (400, "the function refused its arguments (code -3)"),
            (404, "no such instance, node or command; no node offers the task (code -3)"),
            (409, "the request conflicts with the current state (code -3)"),
            (503, "the controller lost its store or bus (code -2)"),
            (504, "a wait ran out of time (code -3)"),
        )
    }
    extra: dict[str, Any] = {
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "the result", "content": {_JSON: {"schema": _ref(reply)}}},
            **errors,
        },
    }
    if name in KEYED:
        extra["parameters"] = [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "a repeat with this key within idempotency_window answers the "
                "first answer (docs/api.md, Idempotency keys)",
            }
        ]
    if kind is not None:
        extra["requestBody"] = {
            "required": False,
            "content": {_JSON: {"schema": _ref(kind)}},
        }
    return extra


def build_app(calls: ApiCalls, checker: TokenChecker) -> FastAPI:
    """The FastAPI application serving ``calls`` behind ``checker``."""
    app = FastAPI(
        title="corral controller API",
        version=__version__,
        description=(
            "Pydra's Controller API: `POST /<function>` with a JSON object of keyword "
            'arguments (or Pydra\'s `{"args": [...], "kwargs": {...}}`, positional '
            "arguments in field order) and `Authorization: Bearer <token>` (`corral token "
            "create`). Errors "
            "are `{code, error}` with Pydra's codes: -1 authentication, -2 disconnection, "
            "-3 error in remote function, -4 no key, -5 unknown, -6 function not found."
        ),
        docs_url=None,  # /docs and /redoc come from the package's own assets (offline)
        redoc_url=None,
    )
    add_docs(app)
    for name, (kind, reply, role) in FUNCTIONS.items():
        handler = getattr(calls, name)
        app.add_api_route(
            f"/{name}",
            _endpoint(handler, kind, role, checker, name),
            methods=["POST"],
            name=name,
            summary=(handler.__doc__ or name).strip().splitlines()[0],
            description=f"Needs a token with role `{role.value}` or higher.",
            openapi_extra=_openapi_extra(kind, reply, name),
            response_class=Response,
        )

    @app.exception_handler(StarletteHTTPException)
    async def not_found(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code in (404, 405):
            known = ", ".join(FUNCTIONS)
            return error_response(
                FunctionNotFound(
                    f"no API function {request.method} {request.url.path}; the functions are "
                    f"POST /<name> for: {known}",
                    exc.status_code,
                )
            )
        return error_response(UnknownError(str(exc.detail), exc.status_code))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            kinds = [k for k, _, _ in FUNCTIONS.values() if k is not None]
            kinds += [r for _, r, _ in FUNCTIONS.values()] + [m.ErrorBody]
            _, components = msgspec.json.schema_components(
                kinds, ref_template="#/components/schemas/{name}"
            )
            parts = schema.setdefault("components", {})
            parts.setdefault("schemas", {}).update(components)
            parts["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the controller process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """Serves the API from inside the controller's event loop.

    Args:
        controller: The controller whose task service and registry the API exposes.
    """

    def __init__(self, controller: Controller) -> None:
        self.ctl = controller
        self.url = ""
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.dashboard: Dashboard | None = None
        self.limiter: CallLimiter | None = None
        self.monitor: Monitor | None = None

    def __repr__(self) -> str:
        return f"<ApiServer {self.url or 'stopped'}>"

    async def start(self) -> None:
        """Bind the port and start serving.

        Raises:
            ConfigError: the address cannot be bound (in use, or not ours).
        """
        config = self.ctl.config
        assert self.ctl.store is not None
        checker = TokenChecker(self.ctl.store)
        app = build_app(ApiCalls(self.ctl), checker)
        from corral.dashboard.routes import mount  # the web dashboard under /ui (issue #8)

        self.dashboard = mount(app, self.ctl, checker)
        ctl = self.ctl
        watched = Watched(
            id=ctl.id,
            started=ctl.started,
            config=config,
            clock=ctl.clock,
            registry=ctl.registry,
            commands=ctl.commands,
            tasks=ctl.tasks,
            store=ctl.store,
            nc=ctl.nc,
            counters=ctl.counters,
            backoff=ctl.backoff,
            limiter=lambda: self.limiter,
        )
        self.monitor = mount_monitoring(app, watched, checker)  # /metrics, /healthz...
        self.limiter = CallLimiter(
            config.api_rate, config.api_burst, config.api_max_in_flight, clock=time.monotonic
        )
        limited = EntryLimits(app, max_body=config.request_limit, limiter=self.limiter)
        family = socket.AF_INET6 if ":" in config.api_host else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it every reply waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.api_host, config.api_port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"the HTTP API cannot listen on {config.api_host}:{config.api_port}: {exc}. "
                "Set api_port (CORRAL_API_PORT) to a free port, 0 for any, -1 to turn it off"
            ) from None
        sock.listen(1024)
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{shown}:{port}"
        server_config = uvicorn.Config(
            limited,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(server_config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="api")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raise what stopped it
                raise ConfigError(f"the HTTP API did not start on {self.url}")
            await asyncio.sleep(0.01)
        log.info("HTTP API listening", extra={"url": self.url})

    async def stop(self) -> None:
        """Stop serving (open requests get a second to finish)."""
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, CorralError):
                await self._task
        self._server = self._task = None
