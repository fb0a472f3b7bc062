"""The controller's probes over HTTP: ``/healthz``, ``/readyz``, ``/metrics`` and ``/status``.

Theory of operation: :func:`mount_monitoring` adds four ``GET`` routes to the controller's
FastAPI app and starts a :class:`~corral.controller.monitoring.Monitor` over the controller's
parts. ``/healthz`` says the process serves and who it is; ``/readyz`` checks that the bus is
connected and that the store answers a read and took its last write; ``/metrics`` renders
the monitor's registry in Prometheus's text format; ``/status`` is what ``corral status``
shows, all from memory.

Access: ``/healthz`` and ``/readyz`` answer anyone (probes carry no token and learn nothing
secret). ``/metrics`` answers loopback without a token and anyone else with a token of role
``read`` or higher, unless the ``metrics_public`` setting opens it to all (a private scrape
network). ``/status`` always needs a ``read`` token: it names nodes, tasks and errors.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from corral._version import __version__
from corral.controller.monitoring import RECENT, Monitor, Watched
from corral.core.commands import CommandState
from corral.errors import CorralError, http_error
from corral.tokens import Role, TokenChecker

__all__ = ["health", "mount_monitoring", "needs_token", "readiness", "summary"]

#: seconds ``/readyz`` waits for the store to answer
READY_TIMEOUT = 2.0

_JSON = "application/json"
_encode = msgspec.json.Encoder().encode


def needs_token(host: str | None, public: bool) -> bool:
    """Whether a ``/metrics`` request from ``host`` must carry a token.

    Args:
        host: The client's address (None when unknown, e.g. a Unix socket).
        public: The ``metrics_public`` setting.

    Returns:
        False when metrics are public or the client is on loopback, else True.
    """
    if public:
        return False
    try:
        return not (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return True  # a name, not an address: not provably local


def health(monitor: Monitor) -> dict[str, Any]:
    """What ``/healthz`` answers: alive, and who this controller is (issue #13 adds
    standby controllers: ``role``, ``epoch`` and ``leader`` say which one leads)."""
    ctl = monitor.ctl
    role: dict[str, Any] = {"role": "leader", "epoch": 0, "leader": ctl.id}
    if ctl.leadership is not None:
        role = ctl.leadership.health()
    return {
        "status": "ok",
        **role,
        "controller": ctl.id,
        "version": __version__,
        "started": ctl.started,
        "uptime": max(0.0, ctl.clock() - ctl.started),
        "loop_lag": round(monitor.last_lag, 6),
        "loop_lag_max": round(monitor.max_lag, 6),
    }


def _controllers(monitor: Monitor) -> list[dict[str, Any]]:
    """Every controller recently seen (from the store's ``controllers`` table, as this one
    last read it), this one first with its live role."""
    mine = health(monitor)
    leadership = monitor.ctl.leadership
    others = (
        [] if leadership is None else [c for c in leadership.known if c["id"] != mine["controller"]]
    )
    me = {**mine, "id": mine["controller"]}
    if leadership is not None:
        me["address"] = leadership.address
    return [me, *others]


async def readiness(monitor: Monitor) -> tuple[bool, dict[str, Any]]:
    """Whether the controller can serve: the bus connected, the store answering and
    taking writes. Returns ``(ready, body)``; the body says what is wrong."""
    ctl = monitor.ctl
    checks: dict[str, str] = {}
    nc = ctl.nc
    checks["bus"] = "ok" if nc is not None and nc.is_connected else "not connected"
    store = ctl.store
    if store is None:
        checks["store"] = "not open"
    elif failures := monitor.store_failures():
        checks["store"] = f"{failures} write(s) failed in a row"
    else:
        try:
            await asyncio.wait_for(store.get_meta("readyz"), READY_TIMEOUT)
        except (CorralError, TimeoutError) as exc:
            checks["store"] = f"no answer: {exc or 'timed out'}"
        else:
            checks["store"] = "ok"
    ready = all(v == "ok" for v in checks.values())
    return ready, {"status": "ready" if ready else "not ready", **checks}


def summary(monitor: Monitor) -> dict[str, Any]:
    """What ``corral status`` shows: everything on one screen, from memory."""
    ctl = monitor.ctl
    failed_commands = []
    for serial in sorted(ctl.commands.book.commands, reverse=True):
        command = ctl.commands.book.commands[serial]
        tally = command.tally()
        if tally[CommandState.FAILED] or tally[CommandState.EXPIRED]:
            bad = [
                {"node": o.node, "state": str(o.state), "error": o.error[:200]}
                for o in command.outcomes.values()
                if o.state in (CommandState.FAILED, CommandState.EXPIRED)
            ]
            failed_commands.append({"serial": serial, "at": command.created, "nodes": bad[:5]})
        if len(failed_commands) >= RECENT:
            break
    return {
        "controllers": _controllers(monitor),
        "bus": {"url": ctl.config.bus_url, "connected": bool(ctl.nc and ctl.nc.is_connected)},
        "store": {
            "backend": getattr(ctl.store, "backend", ""),
            "failures": monitor.store_failures(),
        },
        "nodes": monitor.node_counts(),
        "tasks": monitor.task_counts(),
        "failures": {
            "tasks": [
                {"at": at, "id": i, "key": k, "node": n, "error": e}
                for at, i, k, n, e in reversed(monitor.failures)
            ],
            "commands": failed_commands,
        },
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status, media_type=_JSON)


def _refusal(exc: Exception) -> Response:
    status, body = http_error(exc)
    return _json(body, status)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def mount_monitoring(app: FastAPI, ctl: Watched, checker: TokenChecker) -> Monitor:
    """Add ``GET /metrics``, ``/healthz``, ``/readyz`` and ``/status`` to ``app``; start the
    controller's :class:`Monitor` (stop it with :meth:`Monitor.stop`).

    Args:
        app: The controller's FastAPI application.
        ctl: The controller's parts to watch.
        checker: The API's token checker (for ``/metrics`` off loopback, and ``/status``).

    Returns:
        The started monitor.
    """
    monitor = Monitor(ctl)

    async def metrics(request: Request) -> Response:
        host = request.client.host if request.client is not None else None
        if needs_token(host, ctl.config.metrics_public):
            try:
                await checker.check(_bearer(request), Role.READ)
            except CorralError as exc:
                return _refusal(exc)
        return Response(generate_latest(monitor.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz() -> Response:
        return _json(health(monitor))

    async def readyz() -> Response:
        ready, body = await readiness(monitor)
        return _json(body, 200 if ready else 503)

    async def status(request: Request) -> Response:
        try:
            await checker.check(_bearer(request), Role.READ)
        except CorralError as exc:
            return _refusal(exc)
        body = summary(monitor)
        body["ready"] = (await readiness(monitor))[1]
        return _json(body)

    for path, endpoint, what in (
        ("/metrics", metrics, "Prometheus metrics (docs/operations.md, Monitoring)"),
        ("/healthz", healthz, "Alive: this controller and its role (no token)"),
        ("/readyz", readyz, "Ready: bus connected and store answering (503 if not; no token)"),
        ("/status", status, "Everything `corral status` shows (read token)"),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], summary=what, tags=["monitoring"])
    monitor.start()
    return monitor
