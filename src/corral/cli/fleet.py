"""Fleet hygiene and task logs over the HTTP API: kill-worker, forget, logs (Pydra's kill a
worker, delete a node, task logs). Each is an audited (or read-only) API call, like
``corral cancel``."""

from __future__ import annotations

import json
from typing import Annotated

import msgspec
import typer
from rich.console import Console

from corral.cli.common import Api, AsJson, Token, connects
from corral.cli.tasks import api_call

__all__ = ["register"]

out = Console(emoji=False, highlight=False)


def kill_worker(
    node: Annotated[str, typer.Argument(help="The node whose worker to kill.")],
    slot: Annotated[int, typer.Argument(min=0, help="The worker slot (`corral node NAME`).")] = 0,
    api: Api = None,
    token: Token = None,
) -> None:
    """Kill worker SLOT of NODE: its task fails as with a crashed worker; the slot restarts."""
    killed = api_call(api, token, lambda c: c.kill_worker(node, slot))
    doing = f"task {killed.task} ({killed.key})" if killed.task is not None else "nothing"
    out.print(f"[yellow]killing[/] worker {killed.slot} of {killed.node} (was running {doing})")


def forget(
    name: Annotated[str, typer.Argument(help="The node to forget (it must not be UP).")],
    api: Api = None,
    token: Token = None,
) -> None:
    """Forget node NAME: remove it from the registry and the store, revoke its credentials.

    Refused for a node that is UP: stop it first. `corral enroll NAME` lets it back later.
    """
    gone = api_call(api, token, lambda c: c.node_delete(name))
    out.print(
        f"[green]forgot[/] {gone.name} (was {gone.status}; "
        f"{gone.revoked} credential(s) revoked now)"
    )
    if gone.note:
        out.print(f"[yellow]note:[/] {gone.note}")


def logs(
    ident: Annotated[int, typer.Argument(metavar="ID", help="Task instance id.")],
    as_json: AsJson = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Print what task instance ID printed (stdout, stderr) and logged with ctx.log."""
    view = api_call(api, token, lambda c: c.task_logs(ident))
    if as_json:
        print(json.dumps(msgspec.to_builtins(view), indent=2))
        return
    if not view.logs:
        out.print(f"[dim]task {view.id} ({view.key}, {view.status}) has no logs[/]")
        return
    print(view.logs, end="" if view.logs.endswith("\n") else "\n")


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    app.command(name="kill-worker")(connects(kill_worker))
    app.command()(connects(forget))
    app.command()(connects(logs))
