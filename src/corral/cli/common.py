"""What every command shares: global options, configuration, error handling."""

from __future__ import annotations

import asyncio
import getpass
import socket
import time
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console

from corral.config import Config, load_config
from corral.errors import CorralError, UsageError
from corral.log import setup_logging
from corral.records import AuditEntry

__all__ = ["LOCAL_ROLE", "configure", "err", "fail", "local_audit", "run"]

#: The role of an actor who wrote the store with the CLI, without a controller in between.
LOCAL_ROLE = "local"

T = TypeVar("T")
err = Console(stderr=True)


class Globals:
    """Options given before the command (``corral --data-dir D nodes``)."""

    def __init__(self) -> None:
        self.config_file: str | None = None
        self.flags: dict[str, Any] = {}


_globals = Globals()


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
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(exc, UsageError) else 1)


def local_audit(action: str, target: str, **detail: Any) -> AuditEntry:
    """An audit entry for a CLI command that writes the store itself (no controller).

    The actor is the OS user running it, on this host, with the role ``local``: whoever
    can open the store can write it, so that is all that can be said of them.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return AuditEntry(
        at=time.time(),
        actor=f"{user}@{socket.gethostname()}",
        action=action,
        target=target,
        detail=detail,
        role=LOCAL_ROLE,
    )
