"""What every command shares: one set of option definitions, configuration, error handling,
waiting, tables.

The options an operator expects everywhere are defined once here:

* global options (``--config``, ``--data-dir``, ``--log-format``, ``--log-level``), accepted
  before the command (``corral --data-dir D nodes``) and after it (``corral nodes --data-dir D``);
* connection options (``--api``, ``--nats``, ``--creds``, ``--ca``, ``--token``), accepted before
  the command and after every command marked with :func:`connects`;
* ``--json`` (:data:`AsJson`) and ``--wait SECONDS`` (:data:`Wait`) for each command to declare.

:class:`CorralGroup` adds the global and connection options to every command of the app (a
new command module gets them by registering its commands, nothing else); a command that
declares an option of the same name keeps its own.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import typer.main
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

from corral import loops
from corral.config import Config, load_config
from corral.errors import CorralError, UsageError
from corral.log import setup_logging
from corral.records import AuditEntry

__all__ = [
    "LOCAL_ROLE",
    "Api",
    "AsJson",
    "Ca",
    "ConfigFile",
    "CorralGroup",
    "Creds",
    "DataDir",
    "LogFormat",
    "LogLevel",
    "Nats",
    "Token",
    "Wait",
    "at_least",
    "configure",
    "connects",
    "err",
    "fail",
    "local_audit",
    "optional_value",
    "print_table",
    "run",
    "waiting",
]

#: The role of an actor who wrote the store with the CLI, without a controller in between.
LOCAL_ROLE = "local"

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
err = Console(stderr=True)

_GLOBAL = "Global options"
_CONNECTION = "Connection"

ConfigFile = Annotated[
    str | None, typer.Option("--config", help="TOML configuration file.", rich_help_panel=_GLOBAL)
]
DataDir = Annotated[
    str | None,
    typer.Option(
        "--data-dir",
        help="Data directory (keys, store, logs). Default ~/.local/share/corral.",
        rich_help_panel=_GLOBAL,
    ),
]
LogFormat = Annotated[
    str | None,
    typer.Option(
        "--log-format",
        help="auto (text on a TTY, else JSON), text or json.",
        rich_help_panel=_GLOBAL,
    ),
]
LogLevel = Annotated[
    str | None,
    typer.Option("--log-level", help="debug, info, warning, error.", rich_help_panel=_GLOBAL),
]
Api = Annotated[
    str | None,
    typer.Option(
        "--api",
        help="Controller HTTP API URL, or each controller's, comma-separated: calls go to "
        "the leader (default: api_urls, else api_host:api_port).",
        rich_help_panel=_CONNECTION,
    ),
]
Nats = Annotated[
    str | None,
    typer.Option(
        "--nats",
        help="Bus URL, or the servers of a NATS cluster, comma-separated (default: "
        "nats_url, else the embedded server).",
        rich_help_panel=_CONNECTION,
    ),
]
Creds = Annotated[
    str | None,
    typer.Option(
        "--creds",
        help="Bus credentials file (default: the admin credential).",
        rich_help_panel=_CONNECTION,
    ),
]
Ca = Annotated[
    str | None,
    typer.Option("--ca", help="CA file to verify the bus (TLS).", rich_help_panel=_CONNECTION),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token or a file holding one (default: CORRAL_API_TOKEN or the admin file).",
        rich_help_panel=_CONNECTION,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON for scripts.")]
Wait = Annotated[
    float,
    typer.Option(
        "--wait", min=0, metavar="SECONDS", help="Seconds to wait for the outcome (0: don't wait)."
    ),
]

_FLAG_OF = {"nats": "nats_url"}  # option name -> configuration field, where they differ
_CONFIG_FIELDS = {"data_dir", "log_format", "log_level", "nats", "creds", "ca"}


class Globals:
    """Global and connection options given before or after the command."""

    def __init__(self) -> None:
        self.config_file: str | None = None
        self.flags: dict[str, Any] = {}
        self.api: str | None = None
        self.token: str | None = None

    def reset(self) -> None:
        """Forget every option (a new invocation)."""
        self.config_file, self.flags, self.api, self.token = None, {}, None, None

    def merge(self, given: dict[str, Any]) -> None:
        """Take the options given (``None``: not given, the earlier value stays)."""
        for name, value in given.items():
            if value is None:
                continue
            if name == "config":
                self.config_file = value
            elif name in ("api", "token"):
                setattr(self, name, value)
            elif name in _CONFIG_FIELDS:
                self.flags[_FLAG_OF.get(name, name)] = value


GLOBALS = Globals()


def _shared(
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
    """The shared options, as Typer builds them: a template whose parameters are copied to
    commands (never run)."""


_GLOBAL_NAMES = ("config", "data_dir", "log_format", "log_level")
_CONNECTION_NAMES = ("api", "nats", "creds", "ca", "token")


@functools.cache
def _shared_params() -> dict[str, Any]:
    template = typer.Typer()
    template.command()(_shared)
    return {p.name: p for p in typer.main.get_command(template).params if p.name}


def connects(command: F) -> F:
    """Mark ``command`` as talking to the controller: it takes the connection options too."""
    command.__corral_connects__ = True  # type: ignore[attr-defined]
    return command


def optional_value(option: str, default: float) -> Callable[[F], F]:
    """Let ``option`` of the decorated command be given without its number, meaning
    ``default`` (``corral queue KEY --wait`` waits an hour; ``--wait 30`` half a minute)."""

    def mark(command: F) -> F:
        marks = getattr(command, "__corral_optional__", {})
        command.__corral_optional__ = {**marks, option: str(default)}  # type: ignore[attr-defined]
        return command

    return mark


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fill(args: list[str], defaults: dict[str, str]) -> list[str]:
    """``args`` with the default inserted after each optional-value option given alone."""
    filled: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            return filled + args[i:]
        filled.append(arg)
        if arg in defaults and (i + 1 == len(args) or not _is_number(args[i + 1])):
            filled.append(defaults[arg])
    return filled


def _add_shared(command: Any) -> None:
    """Give ``command`` the global options (and the connection ones if marked) it lacks."""
    if getattr(command, "__corral_shared__", False) or command.callback is None:
        return
    command.__corral_shared__ = True
    names = list(_GLOBAL_NAMES)
    if getattr(command.callback, "__corral_connects__", False):
        names += _CONNECTION_NAMES
    own = {p.name for p in command.params}
    added = [n for n in names if n not in own]
    params = _shared_params()
    command.params.extend(params[n] for n in added)
    original = command.callback

    @functools.wraps(original)
    def callback(**kwargs: Any) -> Any:
        GLOBALS.merge({n: kwargs.pop(n, None) for n in added})
        return original(**kwargs)

    command.callback = callback
    defaults = getattr(original, "__corral_optional__", None)
    if defaults:
        parse = command.parse_args
        command.parse_args = lambda ctx, args: parse(ctx, _fill(list(args), defaults))


class CorralGroup(TyperGroup):
    """The app's command group: every command (nested ones too) gets the shared options."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        pending = list(self.commands.values())
        while pending:
            command = pending.pop()
            if isinstance(command, TyperGroup):
                pending.extend(command.commands.values())
            else:
                _add_shared(command)


def configure(*, daemon: bool = False, **flags: Any) -> tuple[Config, dict[str, str]]:
    """Effective configuration from file, environment, global and command flags.

    A command's own flags (``None``: not given) override the global ones. A one-shot command
    (not ``daemon``) logs as text, errors only, unless told otherwise (``--log-format``,
    ``--log-level``): its own messages say what went wrong, without log lines before them.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    cfg, sources = load_config({**GLOBALS.flags, **given}, config_file=GLOBALS.config_file)
    fmt, level = cfg.log_format, cfg.log_level
    if not daemon:
        fmt = "text" if fmt == "auto" else fmt
        level = level if "log_level" in sources else "error"
    setup_logging(
        fmt, level, file=cfg.log_file, max_bytes=cfg.log_max_bytes, backups=cfg.log_backups
    )
    return cfg, sources


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning corral errors into a message and exit status 1."""
    try:
        return loops.run(coro)  # on uvloop where it is installed
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except CorralError as exc:
        fail(exc)


def fail(exc: CorralError) -> NoReturn:
    """Print ``exc`` as an error line and exit (2 for usage errors, else 1)."""
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2 if isinstance(exc, UsageError) else 1)


def at_least(low: int, fix: str) -> Callable[[int], int]:
    """A Typer option callback refusing a count below ``low``; ``fix`` says what to give."""

    def check(value: int) -> int:
        if value is not None and value < low:
            raise typer.BadParameter(f"must be {low} or more, got {value}: {fix}")
        return value

    return check


@contextlib.contextmanager
def waiting(what: str) -> Iterator[None]:
    """Show that the CLI waits for ``what``: a spinner on a terminal's stderr, else one plain
    line (so a log or a pipe shows what it is waiting for)."""
    if not err.is_terminal:
        err.print(f"{what} ...", highlight=False, soft_wrap=True)
        yield
        return
    with err.status(what):
        yield


def print_table(console: Console, table: Table, *, wide: bool = False) -> None:
    """Print ``table`` without cutting a cell: in a pipe (or ``wide``) at its natural width,
    however wide; on a terminal, long cells wrap within their column."""
    for column in table.columns:
        column.overflow, column.no_wrap = "fold", False  # no_wrap would cut a long cell
    if wide or not console.is_terminal:
        natural = Measurement.get(console, console.options.update_width(100_000), table).maximum
        # print(width=) cannot exceed the console's width: a console as wide as the table.
        Console(file=console.file, width=max(natural, console.width), emoji=False).print(table)
    else:
        console.print(table)


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
