"""`corral status`: the controller, bus, store, nodes, task queue and recent failures on one
screen, from the controller's ``GET /status`` (a read token), or from ``/healthz`` and
``/readyz`` alone when no token is at hand. Exits 1 when the controller is not ready.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from corral.cli.common import configure, fail
from corral.cli.tasks import Api, AsJson, Token
from corral.config import Config
from corral.errors import ControllerUnavailable, CorralError, RemoteError

__all__ = ["register"]

out = Console(emoji=False, highlight=False)

_NODE_STYLE = {"UP": "green", "DOWN": "red", "LEFT": "dim", "REVOKED": "magenta"}


def _token(given: str | None, config: Config) -> str | None:
    """The API token as the other API commands find it, or None (no error: optional here)."""
    from corral.tokens import load_token, read_token

    if given:
        return load_token(given, "the token given (--token)")
    if env := os.environ.get("CORRAL_API_TOKEN"):
        return load_token(env, "CORRAL_API_TOKEN")
    return read_token(config)


def fetch(url: str, token: str | None, timeout: float = 10.0) -> dict[str, Any]:
    """What the controller at ``url`` says of itself: ``/status`` with a token, else what
    ``/healthz`` and ``/readyz`` say (``partial`` is then True).

    Raises:
        ControllerUnavailable: nothing answers at ``url``.
        RemoteError: the controller refused the token, or answered something unexpected.
    """
    import httpx  # here: every `corral` command (`corral node` too) would pay ~30 ms for it

    try:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            ready = http.get("/readyz")
            if token:
                reply = http.get("/status", headers={"authorization": f"Bearer {token}"})
                if reply.status_code != 200:
                    error = reply.json().get("error", reply.text) if reply.content else ""
                    raise RemoteError(f"{url}/status: {error or reply.status_code}", 400)
                return dict(reply.json())
            health = http.get("/healthz").json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ControllerUnavailable(
            f"no controller API answers at {url} ({type(exc).__name__}: {exc}); is the "
            "controller running (`corral up`)? Pass --api URL if it listens elsewhere"
        ) from None
    return {"controllers": [health], "ready": ready.json(), "partial": True}


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _when(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def show(status: dict[str, Any]) -> None:
    """Print ``status`` (as :func:`fetch` returns it) for a person."""
    ready = status.get("ready", {})
    verdict = "[green]ready[/]" if ready.get("status") == "ready" else "[red]NOT READY[/]"
    for i, c in enumerate(status.get("controllers", [])):
        who = str(c.get("controller") or c.get("id", "?"))[:8]
        where = f"  {c['address']}" if c.get("address") else ""
        role = f"{c.get('role', '?')} (epoch {c.get('epoch', 0)})"
        if i == 0:  # the one that answered: its live view
            out.print(
                f"[bold]controller[/] {who}  {role}{where}  v{c.get('version', '?')}  "
                f"up {_age(float(c.get('uptime', 0)))}  "
                f"loop lag {float(c.get('loop_lag', 0)) * 1000:.1f} ms "
                f"(max {float(c.get('loop_lag_max', 0)) * 1000:.1f} ms)  {verdict}"
            )
        else:  # another, as it last recorded itself in the store
            out.print(
                f"[bold]controller[/] {who}  {role}{where}  host {c.get('host', '?')} "
                f"pid {c.get('pid', '?')}  last seen {_age(float(c.get('ago', 0)))} ago"
            )
    bus = status.get("bus", {})
    out.print(f"[bold]bus[/]        {bus.get('url', '')}  {ready.get('bus', '?')}")
    store = status.get("store", {})
    out.print(f"[bold]store[/]      {store.get('backend', '')}  {ready.get('store', '?')}")
    if status.get("partial"):
        out.print("[dim]no API token: nodes, tasks and failures need one (--token)[/]")
        return
    nodes = status.get("nodes", {})
    shown = "  ".join(
        f"[{_NODE_STYLE.get(k, '')}]{k} {v}[/]" if v else f"{k} {v}" for k, v in nodes.items()
    )
    out.print(f"[bold]nodes[/]      {shown}")
    tasks = status.get("tasks", {})
    out.print(
        f"[bold]tasks[/]      queued {tasks.get('queued', 0)}  assigned {tasks.get('assigned', 0)}"
        f"  running {tasks.get('running', 0)}  cancelling {tasks.get('cancel-requested', 0)}"
    )
    failures = status.get("failures", {})
    failed_tasks, failed_commands = failures.get("tasks", []), failures.get("commands", [])
    if not failed_tasks and not failed_commands:
        out.print("[bold]failures[/]   [green]none recently[/]")
        return
    table = Table(title="recent failures", title_justify="left")
    for column in ("at", "what", "node", "error"):
        table.add_column(column)
    for t in failed_tasks:
        table.add_row(_when(t["at"]), f"task {t['id']} {t['key']}", t["node"], t["error"])
    for c in failed_commands:
        for n in c["nodes"]:
            table.add_row(_when(c["at"]), f"command #{c['serial']}", n["node"], n["error"])
    out.print(table)


def status(api: Api = None, token: Token = None, as_json: AsJson = False) -> None:
    """One screen: controller(s), bus, store, nodes by status, task queue, recent failures.

    Reads the controller's /status (a read token), or only /healthz and /readyz without one.
    Exits 1 when the controller is not ready (bus or store unreachable) or does not answer.
    """
    config, _ = configure()
    url = (api or config.api_url).rstrip("/")
    try:
        found = fetch(url, _token(token, config))
    except CorralError as exc:
        fail(exc)
    if as_json:
        print(json.dumps(found, indent=2))
    else:
        show(found)
    if found.get("ready", {}).get("status") != "ready":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``status`` to ``app``."""
    app.command()(status)
