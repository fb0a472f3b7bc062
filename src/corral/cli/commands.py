"""Commands to nodes from the shell: ``corral send / run / get / set / put / execute``, the
command history, and report watching.

Every sending command shows a live table of per-node outcomes and exits with status 1 if any
node failed, expired or did not answer in time, or a named target was unknown.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from corral import subjects, wire
from corral.cli.common import AsJson, Wait, configure, connects, err, print_table, run, waiting
from corral.client import Client
from corral.config import Config
from corral.core.text import check_command_text
from corral.errors import Timeout, UsageError
from corral.outcomes import CommandHandle
from corral.states import CommandState

__all__ = ["register"]

out = Console()
_STYLE: dict[str, str] = {
    CommandState.PENDING: "dim",
    CommandState.DELIVERED: "cyan",
    CommandState.RUNNING: "yellow",
    CommandState.DONE: "green",
    CommandState.FAILED: "bold red",
    CommandState.EXPIRED: "magenta",
}

Targets = Annotated[
    str,
    typer.Argument(
        help="Who: a name, a glob (`web*`, `rack[1-3]-*`), `label:L`, `has:X`, "
        "`attr:KEY` or `attr:KEY=VALUE` (announced attributes), `sinks`, `*` (every node), "
        "or several separated by commas (`web1,db*`).",
        show_default=False,
    ),
]
Timeout_ = Annotated[float, typer.Option("--timeout", help="Seconds each node may take.")]
Retire = Annotated[
    float | None,
    typer.Option(help="Seconds after which a node that was away skips it (default 120)."),
]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare word is a string


def _kwargs(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"bad argument {pair!r}: write KEY=VALUE (VALUE is JSON or a word)")
        args[key] = _value(value)
    return args


def outcomes_table(handle: CommandHandle) -> Table:
    """Per-node outcomes of a command as a Rich table."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(handle.counts().items()))
    table = Table(title=f"command #{handle.serial}: {counts}", title_justify="left")
    for col in ("node", "state", "exit", "result / error"):
        table.add_column(col, overflow="fold")
    for name in sorted(handle.outcomes):
        o = handle.outcomes[name]
        style = _STYLE.get(o.state, "")
        detail = o.error if o.state in (CommandState.FAILED, CommandState.EXPIRED) else ""
        if o.state == CommandState.DONE:
            detail = json.dumps(o.result, default=repr) if o.result is not None else ""
        text = (o.stdout + o.stderr).strip()
        if text:
            detail = (detail + "\n" if detail else "") + text[-400:]
        table.add_row(
            name,
            f"[{style}]{o.state}[/]",
            "" if o.exit_code is None else str(o.exit_code),
            escape(detail),
        )
    for name in handle.unknown:
        table.add_row(name, "[bold red]unknown[/]", "", "no such node")
    return table


async def _send(
    config: Config,
    wait: float,
    as_json: bool,
    targets: str,
    kind: str,
    name: str = "",
    **kwargs: Any,
) -> int:
    check_command_text((targets,), kind, name, kwargs.get("args") or {})
    async with await Client.connect(config) as client:
        handle = await client.command(targets, kind, name, follow=wait > 0, **kwargs)
        if wait <= 0:
            print(handle.serial)
            return 0
        try:
            if as_json or not out.is_terminal:
                what = f"command #{handle.serial}: waiting up to {wait:g} s for "
                with waiting(what + f"{len(handle.nodes)} node(s)"):
                    await _quiet_wait(handle, wait)
            else:
                with Live(outcomes_table(handle), console=out, refresh_per_second=8) as live:
                    async for _ in handle.updates(wait):
                        live.update(outcomes_table(handle))
        finally:
            await handle.close()
        if as_json:
            print(json.dumps(_handle_json(handle), indent=2, default=repr))
        elif not out.is_terminal:
            print_table(out, outcomes_table(handle))
        if not handle.settled:
            err.print(f"[yellow]not every node answered within {wait:g} s[/]: {handle.counts()}")
        return 0 if handle.ok else 1


async def _quiet_wait(handle: CommandHandle, wait: float) -> None:
    try:
        await handle.wait(wait)
    except Timeout:
        pass


def _handle_json(handle: CommandHandle) -> dict[str, Any]:
    return {
        "serial": handle.serial,
        "nodes": handle.nodes,
        "unknown": handle.unknown,
        "settled": handle.settled,
        "outcomes": msgspec.to_builtins(list(handle.outcomes.values())),
    }


def _go(
    targets: str,
    kind: str,
    name: str = "",
    *,
    wait: float,
    as_json: bool,
    **kwargs: Any,
) -> NoReturn:
    """Configure, send, show the outcomes and exit with the verdict (0 only if all done)."""
    config, _ = configure()
    raise typer.Exit(run(_send(config, wait, as_json, targets, kind, name, **kwargs)))


def send(
    targets: Targets,
    command: Annotated[str, typer.Argument(help="The command handler's name.")],
    args: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE arguments (VALUE: JSON or a word).")
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--type", help="A message type of your own (@corral.message_type) instead of COMMAND."
        ),
    ] = "command",
    wait: Wait = 60.0,
    timeout: Timeout_ = 60.0,
    retire: Retire = None,
    as_json: AsJson = False,
) -> None:
    """COMMAND: run a handler registered on the nodes, and show each node's outcome live.

    Examples: `corral send 'web*' restart service=nginx`, `corral send label:gpu calibrate`,
    `corral send 'attr:role=db' ping`,
    `corral send '*' ping`, `corral send 'cam*' dark --type CALIBRATE seconds=5`.
    Exits 1 if any node failed, expired or did not answer.
    """
    _go(
        targets,
        kind,
        command,
        args=_kwargs(args or []),
        timeout=timeout,
        retire_after=retire,
        wait=wait,
        as_json=as_json,
    )


def run_shell(
    targets: Targets,
    cmd: Annotated[list[str], typer.Argument(help="The shell command (after --).")],
    wait: Wait = 60.0,
    timeout: Timeout_ = 60.0,
    retire: Retire = None,
    as_json: AsJson = False,
) -> None:
    """Run a shell command on nodes started with --allow-shell; show output and exit codes.

    Example: `corral run 'rack1-*' -- df -h /data`.
    """
    _go(
        targets,
        "shell",
        args={"cmd": " ".join(cmd)},
        timeout=timeout,
        retire_after=retire,
        wait=wait,
        as_json=as_json,
    )


def get(
    targets: Targets,
    param: Annotated[str, typer.Argument(help="Parameter name; omit for all.")] = "",
    wait: Wait = 30.0,
    as_json: AsJson = False,
) -> None:
    """GET a node parameter from each target (`corral get 'web*' gain`)."""
    _go(targets, "get", param, wait=wait, as_json=as_json)


def set_(
    targets: Targets,
    assignment: Annotated[str, typer.Argument(help="PARAM=VALUE (VALUE: JSON or a word).")],
    wait: Wait = 30.0,
    retire: Retire = None,
    as_json: AsJson = False,
) -> None:
    """SET a node parameter on each target (`corral set 'web*' gain=2.5`)."""
    ((param, value),) = _kwargs([assignment]).items()
    _go(
        targets,
        "set",
        param,
        args={"value": value},
        retire_after=retire,
        wait=wait,
        as_json=as_json,
    )


def put(
    targets: Targets,
    source: Annotated[Path, typer.Argument(help="Local file to send.", exists=True)],
    dest: Annotated[
        str | None, typer.Argument(help="Path in the node's work directory (default: name).")
    ] = None,
    wait: Wait = 60.0,
    retire: Retire = None,
    as_json: AsJson = False,
) -> None:
    """PUT a file into each target's work directory (`corral put 'web*' app.ini conf/app.ini`).

    A destination that leaves the work directory is refused by the node.
    """
    _go(
        targets,
        "put",
        dest or source.name,
        args={"mode": source.stat().st_mode & 0o777},
        data=source.read_bytes(),
        retire_after=retire,
        wait=wait,
        as_json=as_json,
    )


def execute(
    targets: Targets,
    script: Annotated[Path, typer.Argument(help="Python file to run on each node.", exists=True)],
    argv: Annotated[list[str] | None, typer.Argument(help="Arguments for the script.")] = None,
    wait: Wait = 120.0,
    timeout: Timeout_ = 60.0,
    retire: Retire = None,
    as_json: AsJson = False,
) -> None:
    """EXECUTE a Python file as its own process on each target, streaming its output.

    Needs nodes started with --allow-execute and a credential with the execute role (the
    admin credential). Every EXECUTE is in the audit log. Example:
    `corral execute 'lab*' collect.py -- --since 1h`.
    """
    _go(
        targets,
        "execute",
        args={"argv": list(argv or [])},
        data=script.read_bytes(),
        timeout=timeout,
        retire_after=retire,
        wait=wait,
        as_json=as_json,
    )


async def _history(config: Config, limit: int, before: int | None) -> list[wire.CommandView]:
    async with await Client.connect(config) as client:
        return await client.commands(limit, before)


def commands(
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first (1 or more).")] = 20,
    before: Annotated[int | None, typer.Option(help="Only serials below this (next page).")] = None,
    as_json: AsJson = False,
) -> None:
    """List recent commands with how many nodes are in each state."""
    config, _ = configure()
    views = run(_history(config, limit, before))
    if as_json:
        print(json.dumps(msgspec.to_builtins(views), indent=2))
        return
    table = Table(title=f"{len(views)} command(s)", title_justify="left")
    for col in ("serial", "sent", "by", "kind", "name", "targets", "outcomes"):
        table.add_column(col)
    for v in views:
        counts = ", ".join(f"[{_STYLE.get(s, '')}]{n} {s}[/]" for s, n in sorted(v.counts.items()))
        table.add_row(
            str(v.serial),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v.created)),
            escape(v.actor),
            v.kind,
            escape(v.name),
            escape(",".join(v.targets)),
            counts,
        )
    print_table(out, table)
    if views:
        out.print(f"[dim]next page: corral commands --before {views[-1].serial}[/]")


async def _detail(config: Config, serial: int) -> tuple[wire.CommandView, CommandHandle]:
    async with await Client.connect(config) as client:
        view = await client.command_detail(serial)
        accepted = wire.CommandAccepted(
            serial=view.serial, created=view.created, nodes=view.nodes, unknown=view.unknown
        )
        handle = CommandHandle(client.nc, accepted, client.timeout)
        await handle.merge(view.outcomes)
        return view, handle


def command(
    serial: Annotated[int, typer.Argument(help="The command's serial.")],
    as_json: AsJson = False,
) -> None:
    """Show one command and every node's outcome, result, error and output."""
    config, _ = configure()
    view, handle = run(_detail(config, serial))
    if as_json:
        print(json.dumps(msgspec.to_builtins(view), indent=2))
        return
    out.print(
        f"#{view.serial} {view.kind} {escape(view.name)} to {escape(','.join(view.targets))} "
        f"by {escape(view.actor)}"
    )
    print_table(out, outcomes_table(handle))


async def _watch(config: Config, topic: str, count: int) -> None:
    async with await Client.connect(config) as client:
        sub = await client.nc.subscribe(subjects.report_events(topic or "*"))
        seen = 0
        async for msg in sub.messages:
            update = wire.decode(msg.data, wire.ReportUpdate, msg.headers)
            for entry in update.reports:
                print(json.dumps(msgspec.to_builtins(entry), default=repr), flush=True)
            if update.aggregates:
                print(json.dumps({"aggregates": update.aggregates}, default=repr), flush=True)
            seen += 1
            if count and seen >= count:
                return


def watch(
    topic: Annotated[str, typer.Argument(help="Report topic ('' or omit for every topic).")] = "",
    count: Annotated[int, typer.Option(min=0, help="Stop after this many updates (0: never).")] = 0,
) -> None:
    """Print node reports on TOPIC as JSON lines, as the controller pushes them to sinks."""
    config, _ = configure()
    try:
        run(_watch(config, topic, count))
    except KeyboardInterrupt:  # pragma: no cover - interactive
        raise typer.Exit(0) from None


def register(app: typer.Typer) -> None:
    """Add the command-sending commands to ``app``."""
    for name, function in (
        ("send", send),
        ("run", run_shell),
        ("get", get),
        ("set", set_),
        ("put", put),
        ("execute", execute),
        ("commands", commands),
        ("command", command),
        ("watch", watch),
    ):
        app.command(name)(connects(function))
