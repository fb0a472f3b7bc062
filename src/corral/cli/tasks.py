"""Task commands over the HTTP API: tasks, queue, cancel, queue-list, running, history, show.

Each connects with :class:`corral.AsyncController` to ``--api`` (default ``api_url`` of the
configuration) with ``--token`` (default ``CORRAL_API_TOKEN``, ``api_token``, or the admin
token file ``corral up`` writes): the shared connection options of :mod:`corral.cli.common`,
given before or after the command. Every listing takes ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from corral import api_models as m
from corral.api_client import AsyncController
from corral.cli.common import (
    GLOBALS,
    Api,
    AsJson,
    Token,
    configure,
    connects,
    optional_value,
    print_table,
    run,
    waiting,
)
from corral.core.text import check_keys, check_name, check_names

# Api, AsJson and Token stay importable from here for modules built on api_call (fleet, status).
__all__ = ["QUEUE_WAIT", "Api", "AsJson", "Token", "register"]

T = TypeVar("T")
out = Console(emoji=False, highlight=False)

#: How long ``queue --wait`` without a number waits, in seconds.
QUEUE_WAIT = 3600.0
PageOpt = Annotated[int, typer.Option("--page", min=1, help="Page number, from 1.")]


def api_call(
    api: str | None, token: str | None, use: Callable[[AsyncController], Awaitable[T]]
) -> T:
    """Run ``use`` with a client of the API (``api``/``token``, else the shared options)."""
    config, _ = configure()

    async def main() -> T:
        url, key = api or GLOBALS.api, token or GLOBALS.token
        async with AsyncController(url, key, config=config) as client:
            return await use(client)

    return run(main())


def _dump(value: Any) -> None:
    print(json.dumps(msgspec.to_builtins(value), indent=2))


def _when(at: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) if at else "-"


def _instances_table(page: m.TaskPage, title: str) -> Table:
    table = Table(title=f"{title} — page {page.page}/{page.pages}, {page.total} in all")
    for column in ("id", "key", "status", "node", "attempts", "queued", "progress", "error"):
        table.add_column(column, overflow="fold")
    for v in page.items:
        table.add_row(
            str(v.id),
            v.key,
            v.status,
            v.node or "-",
            f"{v.attempts}/{v.max_attempts}",
            _when(v.queued_at),
            f"{v.progress:.0f}%",
            (v.error or "")[:60],
        )
    return table


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"arguments are KEY=VALUE, got {pair!r}")
        try:
            args[key] = json.loads(raw)  # numbers, true/false, null, lists, objects
        except json.JSONDecodeError:
            args[key] = raw  # anything else is a string
    return args


def tasks(
    all_: Annotated[bool, typer.Option("--all", help="Include subtasks.")] = False,
    as_json: AsJson = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """List the tasks the cluster can run, and the nodes offering each."""
    views = api_call(api, token, lambda c: c.list_tasks(toplevel=not all_))
    if as_json:
        _dump(views)
        return
    table = Table(title="tasks")
    for column in ("key", "nodes", "slots", "subtask"):
        table.add_column(column)
    for v in views:
        table.add_row(v.key, ", ".join(v.nodes), str(v.slots), "" if v.toplevel else "yes")
    print_table(out, table)


def queue(
    key: Annotated[str, typer.Argument(help="The task key (see `corral tasks`).")],
    args: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE arguments; VALUE is JSON or a string.")
    ] = None,
    priority: Annotated[int, typer.Option(min=0, max=9, help="Lower runs first.")] = 5,
    label: Annotated[list[str] | None, typer.Option(help="A label the node must carry.")] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            min=0,
            metavar="[SECONDS]",
            help="Wait up to SECONDS (alone: an hour) and print the result.",
        ),
    ] = None,
    api: Api = None,
    token: Token = None,
) -> None:
    """Queue task KEY with arguments; prints the instance id (or, with --wait, the result).

    `--wait` takes seconds (`--wait 30`); given alone, as the last option or before another
    option, it waits up to an hour. Exits 1 if the task failed or did not finish in time.
    """
    values = _parse_args(args or [])

    async def use(c: AsyncController) -> Any:
        check_name(key, "task key")
        check_names(label or (), "label")
        check_keys(values, "argument name")
        ident = await c.queue_task(key, values, priority=priority, labels=label or ())
        if not wait:
            return ident
        with waiting(f"task {ident} ({key}) queued: waiting up to {wait:g} s for its result"):
            return await c.wait(ident, wait)

    result = api_call(api, token, use)
    if isinstance(result, m.TaskView):
        _dump(result.result if result.status == "complete" else result)
        if result.status != "complete":
            raise typer.Exit(1)
    else:
        print(result)


def cancel(
    ident: Annotated[int, typer.Argument(metavar="ID", help="Task instance id.")],
    force: Annotated[
        bool, typer.Option("--force", help="Kill the worker if it has not stopped after the grace.")
    ] = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Cancel a task instance: dequeue it, or ask it to stop (--force: then kill it)."""
    view = api_call(api, token, lambda c: c.cancel_task(ident, force=force))
    out.print(f"task {view.id} ({view.key}): {view.status}")


def queue_list(
    page: PageOpt = 1, as_json: AsJson = False, api: Api = None, token: Token = None
) -> None:
    """List queued task instances, oldest first."""
    result = api_call(api, token, lambda c: c.list_queue(page))
    _dump(result) if as_json else print_table(out, _instances_table(result, "queue"))


def _bars(statuses: list[m.TaskStatusView]) -> Progress:
    progress = Progress(
        TextColumn("{task.fields[ident]:>6} {task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[where]} {task.fields[message]}"),
    )
    for s in statuses:
        progress.add_task(
            s.key,
            total=100,
            completed=int(s.progress),
            ident=s.id,
            where=s.node,
            message=s.message,
            start=True,
        )
    return progress


def running(
    as_json: AsJson = False,
    once: Annotated[bool, typer.Option("--once", help="Print once instead of live.")] = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Show running tasks with live progress bars (Ctrl-C to stop watching)."""
    if as_json or once:
        statuses = api_call(api, token, lambda c: c.task_statuses())
        if as_json:
            _dump(statuses)
        else:
            out.print(_bars(statuses) if statuses else "no task is running")
        return

    async def watch(c: AsyncController) -> None:
        with Live(console=out, refresh_per_second=4) as live:
            while True:
                statuses = await c.task_statuses()
                live.update(_bars(statuses) if statuses else "no task is running")
                await asyncio.sleep(0.25)

    api_call(api, token, watch)


def history(
    key: Annotated[str, typer.Argument(help="The task key.")],
    page: PageOpt = 1,
    as_json: AsJson = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """List the instances of task KEY, newest first, 10 a page."""
    result = api_call(api, token, lambda c: c.task_history(key, page))
    _dump(result) if as_json else print_table(out, _instances_table(result, f"history of {key}"))


def show(
    ident: Annotated[int, typer.Argument(metavar="ID", help="Task instance id.")],
    as_json: AsJson = False,
    api: Api = None,
    token: Token = None,
) -> None:
    """Show one task instance: arguments, attempts, result or error with its traceback."""
    view = api_call(api, token, lambda c: c.task_history_detail(ident))
    if as_json:
        _dump(view)
        return
    out.print(f"[bold]task {view.id}[/] {view.key}  [bold]{view.status}[/]")
    out.print(f"  arguments  {json.dumps(msgspec.to_builtins(view.args))}")
    out.print(f"  queued     {_when(view.queued_at)}   finished {_when(view.finished_at)}")
    out.print(f"  attempts   {view.attempts}/{view.max_attempts}   progress {view.progress:.0f}%")
    for h in view.history:
        out.print(
            f"    #{h['attempt']} on {h['node']} from {_when(h.get('started'))}: "
            f"{h.get('outcome', 'running')} {h.get('error', '')}"
        )
    if view.status == "complete":
        out.print(f"  result     {json.dumps(msgspec.to_builtins(view.result))}")
    if view.error:
        out.print(f"  error      {view.error}")
    if view.traceback:
        out.print(view.traceback, markup=False)


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    app.command()(connects(tasks))
    app.command()(connects(optional_value("--wait", QUEUE_WAIT)(queue)))
    app.command()(connects(cancel))
    app.command(name="queue-list")(connects(queue_list))
    app.command()(connects(running))
    app.command()(connects(history))
    app.command()(connects(show))
