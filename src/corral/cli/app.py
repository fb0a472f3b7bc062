"""The ``corral`` command: global options, error handling, and the command families."""

from __future__ import annotations

import json
import sys

import typer

import corral.cli.guardian_top  # noqa: F401 - adds `guardian show` and `guardian top`
from corral._version import __version__
from corral.cli import admin, commands, fleet, launch, running, status
from corral.cli import guardian as guardian_cli
from corral.cli import tasks as task_commands
from corral.cli import token as token_commands
from corral.cli import user as user_commands
from corral.cli.common import (
    GLOBALS,
    Api,
    AsJson,
    Ca,
    ConfigFile,
    CorralGroup,
    Creds,
    DataDir,
    LogFormat,
    LogLevel,
    Nats,
    Token,
    err,
)
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
    cls=CorralGroup,
)


@app.callback()
def _root(
    config: ConfigFile = None,
    data_dir: DataDir = None,
    log_format: LogFormat = None,
    log_level: LogLevel = None,
    api: Api = None,
    nats: Nats = None,
    creds: Creds = None,
    ca: Ca = None,
    token: Token = None,
) -> None:
    """Global and connection options, also accepted after the command."""
    GLOBALS.reset()
    GLOBALS.merge(locals())


@app.command()
def version(as_json: AsJson = False) -> None:
    """Print corral's version."""
    print(json.dumps({"version": __version__}) if as_json else __version__)


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
