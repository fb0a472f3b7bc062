"""The ``corral`` command: global options, error handling, and the command families."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from corral._version import __version__
from corral.cli import admin, commands, fleet, launch, running, status
from corral.cli import guardian as guardian_cli
from corral.cli import tasks as task_commands
from corral.cli import token as token_commands
from corral.cli import user as user_commands
from corral.cli.common import _globals, err
from corral.errors import CorralError, UsageError

__all__ = ["app", "main"]

app = typer.Typer(
    name="corral",
    help=(
        "corral: a control plane for fleets of machines and processes.\n\n"
        "One machine, everything local:  corral up --nodes 4\n\n"
        "Several machines: `corral init` and `corral controller` on the controller host, "
        "`corral enroll NAME` there for each node, then `corral node --name NAME --nats URL "
        "--creds NAME.creds --ca ca.pem` on each node host."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    config: Annotated[
        str | None, typer.Option("--config", help="TOML configuration file.", envvar=None)
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="Data directory (keys, store, logs). Default ~/.local/share/corral."),
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="auto (text on a TTY, else JSON), text or json.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
) -> None:
    _globals.config_file = config
    _globals.flags = {"data_dir": data_dir, "log_format": log_format, "log_level": log_level}


@app.command()
def version() -> None:
    """Print corral's version."""
    print(__version__)


admin.register(app)
running.register(app)
launch.register(app)
commands.register(app)
guardian_cli.register(app)
task_commands.register(app)
token_commands.register(app)
user_commands.register(app)
fleet.register(app)
status.register(app)


def main() -> None:
    """Entry point of the ``corral`` script."""
    try:
        app()
    except CorralError as exc:  # raised while parsing configuration, before run()
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
