"""The ``corral`` command: global options, error handling, and the command families."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from corral._version import __version__
from corral.config import Config, load_config
from corral.errors import CorralError, UsageError
from corral.log import setup_logging

__all__ = ["app", "main"]

T = TypeVar("T")

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
err = Console(stderr=True)


class Globals:
    """Options given before the command (``corral --data-dir D nodes``)."""

    def __init__(self) -> None:
        self.config_file: str | None = None
        self.flags: dict[str, Any] = {}


_globals = Globals()


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


def configure(**flags: Any) -> tuple[Config, dict[str, str]]:
    """Effective configuration from file, environment, global and command flags."""
    cfg, sources = load_config({**_globals.flags, **flags}, config_file=_globals.config_file)
    setup_logging(cfg.log_format, cfg.log_level)
    return cfg, sources


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning corral errors into a message and exit status 1."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except CorralError as exc:
        fail(exc)


def fail(exc: CorralError) -> NoReturn:
    """Print ``exc`` as an error line and exit (2 for usage errors, else 1)."""
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(2 if isinstance(exc, UsageError) else 1)


@app.command()
def version() -> None:
    """Print corral's version."""
    print(__version__)


def _register() -> None:
    from corral.cli import admin, running

    admin.register(app)
    running.register(app)


_register()


def main() -> None:
    """Entry point of the ``corral`` script."""
    try:
        app()
    except CorralError as exc:  # raised while parsing configuration, before run()
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
