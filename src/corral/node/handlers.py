"""What a node can do when a command arrives: its handlers, parameters and built-in kinds.

A user registers handlers in a module loaded with ``corral node --handlers pkg.module`` (or the
``corral.handlers`` entry-point group)::

    from corral import command, message_type, param

    param("gain", float, 1.0, "amplifier gain")       # GET / SET gain

    @command                                            # COMMAND restart
    def restart(service: str = "all") -> str:
        ...
        return "restarted"

    @message_type("CALIBRATE")                          # a message type of your own
    async def calibrate(args: dict, data: bytes) -> dict:
        ...

Handlers may be plain functions (run in a worker thread) or coroutines. Their return value
must be msgpack-able data (it is the command's result); an exception fails the command at
that node with its message, and the node keeps serving.

A handler may not shadow a built-in: ``@command`` named ``ping`` and ``@message_type`` of a
built-in kind (``command``, ``shell``, ``get``, ``set``, ``put``, ``execute``) are refused when
the module is imported, so loading it fails with an error naming the module, the handler and
the built-in, instead of silently replacing (or never reaching) it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec

from corral.errors import ConfigError, Refusal, ShadowsBuiltin, UsageError

__all__ = [
    "Handlers",
    "Param",
    "Refusal",
    "ShadowsBuiltin",
    "command",
    "load_handlers",
    "message_type",
    "on_reports",
    "param",
]

F = TypeVar("F", bound=Callable[..., Any])
#: Output sink for a running process: (stdout chunk, stderr chunk).
OutputSink = Callable[[str, str], Awaitable[None]]

# Registrations made by decorators at import time, collected by load_handlers().
_COMMANDS: dict[str, Callable[..., Any]] = {}
_TYPES: dict[str, Callable[..., Any]] = {}
_PARAMS: dict[str, Param] = {}
_REPORT_HOOKS: list[Callable[..., Any]] = []


def ping() -> dict[str, Any]:
    """The built-in COMMAND ``ping``: this node's host and process, to check it answers."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "python": sys.version.split()[0]}


#: COMMAND names and message kinds the node handles itself.
BUILTIN_COMMANDS = frozenset({"ping"})
BUILTIN_KINDS = frozenset({"command", "shell", "get", "set", "put", "execute"})


def _where(f: Callable[..., Any]) -> str:
    module = getattr(f, "__module__", None) or "?"
    return f"{getattr(f, '__qualname__', repr(f))} in module {module!r}"


@dataclass
class Param:
    """A named, typed node parameter (SEER GET / SET)."""

    name: str
    type: Any
    value: Any
    doc: str = ""

    def set(self, raw: Any) -> Any:
        """Convert ``raw`` to the parameter's type and store it.

        Raises:
            UsageError: ``raw`` is not a valid value of that type.
        """
        try:
            self.value = msgspec.convert(raw, self.type, strict=False)
        except msgspec.ValidationError as exc:
            type_name = getattr(self.type, "__name__", str(self.type))
            raise UsageError(
                f"bad value {raw!r} for parameter {self.name} ({type_name}): {exc}"
            ) from None
        return self.value


@overload
def command(fn: F, *, name: str | None = None) -> F: ...


@overload
def command(fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...


def command(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register ``fn`` as a COMMAND handler, under its own name or ``name``.

    Use as ``@command`` or ``@command(name="restart-all")``. Keyword arguments of the command
    become the function's keyword arguments.

    Raises:
        ShadowsBuiltin: the name is a built-in command (``ping``).
    """

    def register(f: F) -> F:
        registered = name or f.__name__
        if registered in BUILTIN_COMMANDS:
            raise ShadowsBuiltin(
                f"handler {_where(f)} registers COMMAND {registered!r}, which would replace "
                f"corral's built-in {registered!r}: give it another name "
                f"(@command(name='my-{registered}'))"
            )
        _COMMANDS[registered] = f
        return f

    return register(fn) if fn is not None else register


def message_type(kind: str) -> Callable[[F], F]:
    """Register a handler for a message type of your own: ``fn(args, data) -> result``.

    Raises:
        ShadowsBuiltin: ``kind`` is a built-in kind (command, shell, get, set, put, execute).
    """

    def register(f: F) -> F:
        if kind in BUILTIN_KINDS:  # kinds are case-sensitive: SEER's "GET" is free
            raise ShadowsBuiltin(
                f"handler {_where(f)} registers message type {kind!r}, which is corral's "
                f"built-in {kind!r} kind and would never reach it: choose another "
                "type name (e.g. @message_type('CALIBRATE'))"
            )
        _TYPES[kind] = f
        return f

    return register


def on_reports(fn: F) -> F:
    """Register ``fn(update)`` to receive the report updates a sink node is sent.

    ``update`` is a :class:`~corral.wire.ReportUpdate`: the reports that changed and the
    aggregates. Plain functions run in a worker thread, coroutines in the node's loop.
    """
    _REPORT_HOOKS.append(fn)
    return fn


def param(name: str, type: Any = str, default: Any = None, doc: str = "") -> Param:
    """Declare a node parameter that GET reads and SET writes (converted to ``type``).

    Returns:
        The parameter (its ``.value`` is the current value).
    """
    p = Param(name, type, default if default is None else msgspec.convert(default, type), doc)
    _PARAMS[name] = p
    return p


def load_handlers(
    modules: Iterable[str] = (), *, entry_point_group: str = "corral.handlers"
) -> None:
    """Import handler modules (and those named by installed entry points) so they register.

    Raises:
        ConfigError: a module cannot be imported, or registers a handler that shadows a
            built-in (:class:`ShadowsBuiltin`); the message names the module and the error.
    """
    names = list(modules)
    names += [ep.value for ep in entry_points(group=entry_point_group)]
    # As `python -m` does (and Celery's -A): modules next to where you run corral are found
    # even through the console script, which does not put the working directory on the path.
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in names:
        try:
            importlib.import_module(module)
        except ShadowsBuiltin as exc:
            raise ShadowsBuiltin(f"cannot load handler module {module!r}: {exc}") from exc
        except Exception as exc:
            raise ConfigError(
                f"cannot load handler module {module!r}: {type(exc).__name__}: {exc}. "
                "Check that it is importable (on PYTHONPATH) from where the node runs"
            ) from exc


@dataclass
class Handlers:
    """One node's handlers, parameters and the switches for dangerous kinds.

    Args:
        work_dir: where PUT writes and EXECUTE runs.
        allow_shell: run ``shell`` commands (off unless the node is started with it).
        allow_execute: run EXECUTE payloads (off unless the node is started with it).
        output_limit: the most characters of stdout and of stderr reported.
    """

    work_dir: Path
    allow_shell: bool = False
    allow_execute: bool = False
    output_limit: int = 65_536
    commands: dict[str, Callable[..., Any]] = field(default_factory=dict)
    types: dict[str, Callable[..., Any]] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    report_hooks: list[Callable[..., Any]] = field(default_factory=list)

    @classmethod
    def collect(cls, work_dir: Path, **options: Any) -> Handlers:
        """Every handler and parameter registered so far (see :func:`load_handlers`), and the
        built-in ``ping``."""
        return cls(
            work_dir,
            commands={"ping": ping, **_COMMANDS},
            types=dict(_TYPES),
            params=dict(_PARAMS),
            report_hooks=list(_REPORT_HOOKS),
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"<Handlers commands={sorted(self.commands)} types={sorted(self.types)} "
            f"params={sorted(self.params)} shell={self.allow_shell} "
            f"execute={self.allow_execute}>"
        )

    async def run(
        self, kind: str, name: str, args: dict[str, Any], data: bytes, out: OutputSink
    ) -> tuple[Any, int | None]:
        """Run one command; returns ``(result, exit_code)``.

        Raises:
            UsageError: an unknown handler, parameter or type, or a refused kind or path.
            Exception: whatever the user's handler raised.
        """
        if kind == "command":
            handler = self.commands.get(name)
            if handler is None:
                known = ", ".join(sorted(self.commands)) or "none"
                raise UsageError(
                    f"no command {name!r} on this node (it has: {known}); register it with "
                    "@corral.command in a module loaded by `corral node --handlers MODULE`"
                )
            return await _call(handler, **args), None
        if kind == "get":
            return self.get(name), None
        if kind == "set":
            if "value" not in args:
                raise UsageError(f"SET {name} needs a value (args={{'value': ...}})")
            return self._param(name).set(args["value"]), None
        if kind == "put":
            return self.put(name, data, args.get("mode")), None
        if kind == "shell":
            return await self.shell(str(args.get("cmd", "")), out)
        if kind == "execute":
            return await self.execute(data, [str(a) for a in args.get("argv", [])], out)
        handler = self.types.get(kind)
        if handler is None:
            raise UsageError(
                f"unknown message type {kind!r} on this node (it handles: command, shell, get, "
                f"set, put, execute{''.join(', ' + t for t in sorted(self.types))})"
            )
        return await _call(handler, args, data), None

    def _param(self, name: str) -> Param:
        p = self.params.get(name)
        if p is None:
            known = ", ".join(sorted(self.params)) or "none"
            raise UsageError(f"no parameter {name!r} on this node (it has: {known})")
        return p

    def get(self, name: str) -> Any:
        """One parameter's value, or every parameter's (name empty or ``*``)."""
        if name in ("", "*"):
            return {n: p.value for n, p in sorted(self.params.items())}
        return self._param(name).value

    def put(self, path: str, data: bytes, mode: Any = None) -> dict[str, Any]:
        """Write ``data`` to ``path`` inside the work directory (atomically).

        Raises:
            Refusal: the path is absolute or leaves the work directory (``..``, a symlink).
        """
        root = self.work_dir.resolve()
        if not path or os.path.isabs(path):
            raise Refusal(f"PUT path {path!r} must be relative to the node's work directory")
        target = (root / path).resolve()
        if not target.is_relative_to(root) or target == root:
            raise Refusal(f"PUT path {path!r} leaves the node's work directory {root}: refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, int(mode))
        os.replace(tmp, target)
        return {"path": str(target.relative_to(root)), "bytes": len(data)}

    async def shell(self, cmd: str, out: OutputSink) -> tuple[Any, int]:
        """Run a shell command in the work directory, streaming its output.

        Raises:
            Refusal: the node was not started with shell commands allowed.
        """
        if not self.allow_shell:
            raise Refusal(
                "shell commands are off on this node; start it with `corral node --allow-shell`"
            )
        if not cmd.strip():
            raise UsageError("empty shell command: give args={'cmd': '...'}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_shell(
            cmd,
            cwd=self.work_dir,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return await self._finish(proc, out)

    async def execute(self, source: bytes, argv: list[str], out: OutputSink) -> tuple[Any, int]:
        """Run an uploaded Python file as its own process, streaming its output.

        Raises:
            Refusal: the node was not started with EXECUTE enabled.
        """
        if not self.allow_execute:
            raise Refusal(
                "EXECUTE is off on this node; start it with `corral node --allow-execute`"
            )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd, script = tempfile.mkstemp(dir=self.work_dir, prefix=".execute-", suffix=".py")
        with os.fdopen(fd, "wb") as f:
            f.write(source)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                script,
                *argv,
                cwd=self.work_dir,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            return await self._finish(proc, out)
        finally:
            os.unlink(script)

    async def _finish(self, proc: asyncio.subprocess.Process, out: OutputSink) -> tuple[Any, int]:
        """Stream a process's output to ``out`` until it exits; kill it if cancelled."""
        assert proc.stdout is not None and proc.stderr is not None
        try:
            await asyncio.gather(
                _pump(proc.stdout, lambda t: out(t, "")),
                _pump(proc.stderr, lambda t: out("", t)),
            )
            code = await proc.wait()
        except BaseException:
            # Timed out or the node is stopping: the process group goes too.
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            await proc.wait()
            raise
        return None, code


async def _pump(stream: asyncio.StreamReader, emit: Callable[[str], Awaitable[None]]) -> None:
    while chunk := await stream.read(16_384):
        await emit(chunk.decode(errors="replace"))


async def _call(handler: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if inspect.iscoroutinefunction(handler):
        return await handler(*args, **kwargs)
    return await asyncio.to_thread(handler, *args, **kwargs)
