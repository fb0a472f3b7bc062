"""``corral guardian``: run, list, request, mode, revive, pause, reload, watch, graph."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from corral import wire
from corral.cli.common import AsJson, Ca, Creds, Nats, Wait, configure, err, fail, print_table, run
from corral.config import Config
from corral.errors import CorralError, UsageError
from corral.guardian.client import GuardianClient
from corral.guardian.core import Mode
from corral.guardian.graph import Graph, StateInfo
from corral.guardian.views import as_seen

__all__ = ["guardian_app", "register"]

out = Console(emoji=False)
guardian_app = typer.Typer(
    help="Guardians: state machines walked to requested states (LIGO Guardian style).",
    no_args_is_help=True,
)

_STATUS_STYLE = {
    "OK": "green",
    "ERROR": "bold red",
    "NOTIFICATION": "yellow",
    "STALLED": "magenta",
    "CONNECTION_ERROR": "bold red",
}

NameArg = Annotated[str, typer.Argument(help="The guardian's name.")]
NatsOpt = Nats
CredsOpt = Creds
CaOpt = Ca


def bus_config(nats: str | None, creds: str | None, ca: str | None) -> Config:
    config, _ = configure(nats_url=nats, creds=creds, ca=ca)
    return config


def _status(view: wire.GuardianView, config: Config, *, past: bool = False) -> str:
    """The status a viewer should show: CONNECTION_ERROR for a silent or stopped guardian
    (``past``: a view from the stored history, shown as it was)."""
    if past:
        return "CONNECTION_ERROR" if not view.alive else view.status
    return as_seen(view, config.down_after).status


def _ok(view: wire.GuardianView, config: Config) -> str:
    ok = as_seen(view, config.down_after).ok
    return "[green]OK[/]" if ok else "[red]not OK[/]"


def _styled(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _line(view: wire.GuardianView, config: Config, *, past: bool = False) -> str:
    status = _status(view, config, past=past)
    text = (
        f"{view.name}: {view.state} -> {view.request}  {view.mode}"
        + (f" by {view.manager}" if view.manager else "")
        + f"  {_styled(status)}"
        + ("  arrived" if view.arrived else "")
        + ("  PAUSED" if view.paused else "")
        + (f"  path: {' -> '.join(view.path)}" if view.path else "")
        + (f"  nominal {view.nominal}" if view.nominal else "")
        + ("" if past else f"  ({_ok(view, config)})")
    )
    for note in view.notifications:
        text += f"\n  notification: {note}"
    if not past:
        for line in view.log:
            text += f"\n  log: {line}"
    if view.error:
        text += "\n  error:\n    " + view.error.replace("\n", "\n    ")
    if view.load_error:
        text += "\n  reload failed (previous code running):\n    " + view.load_error.replace(
            "\n", "\n    "
        )
    return text


def print_view(view: wire.GuardianView, config: Config) -> None:
    out.print(_line(view, config), highlight=False, soft_wrap=True)


@guardian_app.command("run")
def run_cmd(
    system: Annotated[Path, typer.Argument(help="The system module (a .py file).")],
    name: Annotated[str, typer.Option(help="The guardian's name on the bus.")],
    mode: Annotated[str, typer.Option(help="Starting mode: AUTO, MANAGED or MANUAL.")] = "AUTO",
    cycle: Annotated[float, typer.Option(help="Seconds between run() calls in a state.")] = (
        1 / 16
    ),
    nats: NatsOpt = None,
    creds: Annotated[
        str | None,
        typer.Option(
            "--creds",
            help="This guardian's credentials file (`corral guardian enroll NAME`).",
            rich_help_panel="Connection",
        ),
    ] = None,
    ca: CaOpt = None,
) -> None:
    """Run a guardian: load SYSTEM, take requests, walk to them, until Ctrl-C."""
    from corral.cli.running import until_signalled
    from corral.guardian.runtime import Guardian

    config, _ = configure(daemon=True, nats_url=nats, creds=creds, ca=ca)
    try:
        start_mode = Mode(mode.upper())
    except ValueError:
        raise typer.BadParameter(f"--mode takes AUTO, MANAGED or MANUAL, not {mode!r}") from None

    async def main() -> None:
        guardian = Guardian(system, name, config=config, mode=start_mode, cycle=cycle)
        err.print(
            f"guardian {name} running {guardian.system.path} "
            f"(state {guardian.core.state}, request {guardian.core.request})",
            highlight=False,
        )
        await until_signalled(asyncio.create_task(guardian.serve_forever()))

    run(main())


@guardian_app.command("list")
def list_cmd(
    as_json: AsJson = False, nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None
) -> None:
    """Every guardian's state, request, mode and status."""
    config = bus_config(nats, creds, ca)

    async def main() -> list[wire.GuardianView]:
        async with await GuardianClient.connect(config) as client:
            return await client.list()

    views = run(main())
    if as_json:
        seen = [{**msgspec.to_builtins(v), "seen_status": _status(v, config)} for v in views]
        print(json.dumps(seen, indent=2))
        return
    table = Table(
        "name", "state", "request", "nominal", "mode", "status", "OK", "notifications", "host/pid"
    )
    for column in table.columns[:7]:
        column.no_wrap = True  # names and statuses are grepped; let notifications wrap
    for v in views:
        mode = v.mode + (f" ({v.manager})" if v.manager else "")
        state = v.state + (" *" if v.arrived else "")
        table.add_row(
            v.name,
            state,
            v.request,
            v.nominal or "-",
            mode,
            _styled(_status(v, config)),
            _ok(v, config),
            "; ".join(v.notifications),
            f"{v.host}/{v.pid}",
        )
    print_table(out, table)
    out.print("* arrived at its request", style="dim")


@guardian_app.command()
def request(
    name: NameArg,
    state: Annotated[str, typer.Argument(help="The state to walk to.")],
    wait: Wait = 0.0,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """Ask guardian NAME to walk to STATE."""
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianView:
        async with await GuardianClient.connect(config) as client:
            if wait <= 0:
                return await client.request(name, state)
            return await _until_arrived(client, name, state, wait)

    print_view(run(main()), config)


def _walked(view: wire.GuardianView, seen: int) -> list[str]:
    """The states ``view`` entered after the ``seen``-th (its trail keeps the last few)."""
    new = max(0, view.entered - seen)
    return list(view.trail[-new:]) if new else []


async def _until_arrived(
    client: GuardianClient, name: str, state: str, wait: float
) -> wire.GuardianView:
    """Request ``state`` and print each state the guardian enters on the way, as it happens."""

    def show(states: list[str]) -> None:
        for s in states:
            stamp = time.strftime("%H:%M:%S")
            out.print(f"[dim]{stamp}[/] {name}: {s}", highlight=False)

    async def walk() -> wire.GuardianView:
        async with contextlib.aclosing(client.watch(name, history=False)) as views:
            before: wire.GuardianView | None = None
            async for stored in views:  # the latest stored view, then None: watching live
                if stored is None:
                    break
                before = stored
            view = await client.request(name, state)
            # From the state it was in when asked (the reply may already be further on).
            start = before.entered if before and before.instance == view.instance else 0
            seen = max(0, min(start, view.entered) - 1)
            show(_walked(view, seen))
            seen = view.entered
            if view.arrived:
                return view
            async for update in views:
                if update is None or update.instance != view.instance:
                    continue
                show(_walked(update, seen))
                seen = max(seen, update.entered)
                if update.request == state and (update.arrived or update.error):
                    return update
        raise UsageError(f"guardian {name} stopped publishing")

    try:
        return await asyncio.wait_for(walk(), wait)
    except TimeoutError:
        from corral.errors import Timeout

        raise Timeout(
            f"guardian {name} did not arrive at {state} within {wait}s: "
            f"`corral guardian watch {name}` shows where it is"
        ) from None


@guardian_app.command()
def mode(
    name: NameArg,
    new_mode: Annotated[str, typer.Argument(metavar="MODE", help="AUTO, MANAGED or MANUAL.")],
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """Set guardian NAME's mode (a person may always take a node back from its manager)."""
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianView:
        async with await GuardianClient.connect(config) as client:
            return await client.set_mode(name, new_mode)

    print_view(run(main()), config)


@guardian_app.command()
def revive(name: NameArg, nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None) -> None:
    """Re-request guardian NAME's last request (clears a stall or an error)."""
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianView:
        async with await GuardianClient.connect(config) as client:
            return await client.revive(name)

    print_view(run(main()), config)


@guardian_app.command()
def pause(
    name: NameArg,
    resume: Annotated[bool, typer.Option("--resume", help="Resume instead.")] = False,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """Pause guardian NAME (no state code runs; requests are still taken), or --resume it."""
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianView:
        async with await GuardianClient.connect(config) as client:
            return await client.pause(name, not resume)

    print_view(run(main()), config)


@guardian_app.command()
def reload(name: NameArg, nats: NatsOpt = None, creds: CredsOpt = None, ca: CaOpt = None) -> None:
    """Load guardian NAME's system module again, keeping its state, request and mode.

    A module that fails to import leaves the old one running; the error is printed and shown
    in the guardian's view.
    """
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianView:
        async with await GuardianClient.connect(config) as client:
            return await client.reload(name)

    print_view(run(main()), config)


@guardian_app.command()
def watch(
    name: Annotated[str, typer.Argument(help="The guardian's name (default: every guardian).")] = (
        ">"
    ),
    history: Annotated[bool, typer.Option(help="Replay the stored recent views first.")] = True,
    count: Annotated[int, typer.Option(help="Stop after this many changes (0: never).")] = 0,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """Print guardian NAME's views as they change (heartbeats alone are not printed)."""
    config = bus_config(nats, creds, ca)

    async def main() -> None:
        shown = 0
        live = False
        last: dict[str, tuple[str, int, bool]] = {}
        async with await GuardianClient.connect(config) as client:
            async for view in client.watch(name, history=history):
                if view is None:
                    live = True
                    out.print("-- live --", style="dim")
                    continue
                key = (view.instance, view.seq, view.alive)
                if last.get(view.name) == key:
                    continue  # a heartbeat
                last[view.name] = key
                stamp = time.strftime("%H:%M:%S", time.localtime(view.beat))
                out.print(f"[dim]{stamp}[/] " + _line(view, config, past=not live), highlight=False)
                shown += 1
                if count and shown >= count:
                    return

    run(main())


@guardian_app.command()
def graph(
    name: NameArg,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Also render to FILE.svg or FILE.png (needs `dot`)."),
    ] = None,
    nats: NatsOpt = None,
    creds: CredsOpt = None,
    ca: CaOpt = None,
) -> None:
    """Print guardian NAME's state graph as Graphviz DOT, current state and path highlighted."""
    config = bus_config(nats, creds, ca)

    async def main() -> wire.GuardianGraph:
        async with await GuardianClient.connect(config) as client:
            return await client.graph(name)

    reply = run(main())
    g = Graph.build(
        (StateInfo(s.name, s.goto, s.request, s.index) for s in reply.states), reply.edges
    )
    dot = g.dot(name, reply.view.state, reply.view.path)
    print(dot, end="")
    if output is not None:
        render(dot, output)
        err.print(f"wrote {output}")


@guardian_app.command()
def enroll(
    name: NameArg,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Where to write it (default NAME.creds).")
    ] = None,
) -> None:
    """Issue a credential for guardian NAME: it may answer only its own subjects and write
    only its own key of the guardian bucket. Give it to `corral guardian run --creds`."""
    from corral.security import Authority, write_secret

    config, _ = configure()
    try:
        text = Authority.load(config.data_path).enroll_guardian(name)
    except CorralError as exc:
        fail(exc)
    path = out_file or Path(f"{name}.creds")
    write_secret(path, text)
    err.print(f"wrote {path} (keep it secret; revoke with `corral revoke guardian:{name}`)")


def render(dot: str, output: Path) -> None:
    """Render DOT text to ``output`` (format from its suffix: .svg, .png, .pdf).

    Raises:
        UsageError: Graphviz's ``dot`` is not installed, or it failed.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(
            "rendering needs Graphviz's `dot` (e.g. `apt-get install graphviz`); the DOT text "
            "above can be rendered elsewhere"
        )
    fmt = output.suffix.lstrip(".") or "svg"
    result = subprocess.run(
        [exe, f"-T{fmt}", "-o", str(output)], input=dot.encode(), capture_output=True, check=False
    )
    if result.returncode != 0:
        raise UsageError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")


def register(app: typer.Typer) -> None:
    """Add ``corral guardian ...`` to ``app`` (import :mod:`corral.cli.guardian_top` first:
    it adds ``show`` and ``top``)."""
    app.add_typer(guardian_app, name="guardian")
