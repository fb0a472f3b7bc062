"""Commands (SEER) on :class:`corral.Client`: the bus's :meth:`command` family, whose handle
follows outcomes as they happen, and the API's ``send_command`` and friends (either transport).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from corral import bus, subjects, wire
from corral.config import Config
from corral.errors import AuthError, ControllerUnavailable, Timeout, UsageError
from corral.outcomes import CommandHandle

__all__ = ["Commands"]

T = TypeVar("T")


class Commands:
    """Command methods (mixed into :class:`corral.Client`)."""

    config: Config
    timeout: float
    identity: str
    actor: str

    async def _bus_connection(self, method: str) -> bus.NATS:
        raise NotImplementedError  # provided by the client

    async def _get(
        self, function: str, reply: type[T], call_timeout: float | None = None, /, **kwargs: Any
    ) -> T:
        raise NotImplementedError  # provided by the client

    async def command(
        self,
        targets: str | Sequence[str],
        kind: str = "command",
        name: str = "",
        *,
        args: dict[str, Any] | None = None,
        data: bytes = b"",
        timeout: float = 60.0,
        retire_after: float | None = None,
        follow: bool = True,
        idempotency_key: str | None = None,
    ) -> CommandHandle:
        """Send a command of any kind; the general form behind :meth:`send` and friends.

        The command carries an idempotency key (a new uuid4 unless given): if the controller
        does not answer, the same request is sent again with the same key, and the
        controller answers a repeat with the command it recorded the first time, so a
        retry never sends a command twice.

        Args:
            targets: a name, a shell glob (``web*``, ``rack[1-3]-*``), ``label:L``, ``has:X``
                (the node so named or controlling interface X), ``attr:K`` or ``attr:K=V``
                (nodes that announced attribute K, or K equal to V), ``sinks``, ``*`` (every
                node), or a list of these (or one string of them separated by commas).
            kind: ``command``, ``shell``, ``get``, ``set``, ``put``, ``execute`` or a message
                type the nodes registered.
            name: the command, parameter or path.
            args: keyword arguments of the command.
            data: bytes carried with it (PUT file, EXECUTE script).
            timeout: seconds each node may take to run it.
            retire_after: seconds after which a node that has not received it (it was away)
                skips it and reports ``expired`` (default: the ``retire_after`` setting).
            follow: start following outcome updates now.
            idempotency_key: the key (default: a new uuid4 for this call); the same key
                within the controller's ``idempotency_window`` answers the first command.

        Returns:
            A handle with the serial, the resolved nodes, the unknown targets and outcomes.

        Raises:
            UsageError: a malformed target, kind or limit.
            Refused: no node matched, or the controller refused the command.
            AuthError: EXECUTE with a credential that lacks the execute role.
            ControllerUnavailable, Timeout: no controller answered.
        """
        if isinstance(targets, str):
            targets = [t for t in targets.split(",") if t.strip()]
        if kind == "execute" and self.identity not in ("admin", "controller"):
            raise AuthError(
                f"credential {self.identity!r} lacks the execute role: send EXECUTE with the "
                "admin credential (<data_dir>/auth/admin.creds)"
            )
        limit = self.config.max_command_bytes
        if len(data) > limit:
            raise UsageError(
                f"payload of {len(data)} bytes exceeds max_command_bytes ({limit}): send a "
                "smaller file, or raise max_command_bytes on the controller and the client"
            )
        request = wire.CommandRequest(
            targets=list(targets),
            kind=kind,
            name=name,
            args=args or {},
            data=data,
            timeout=timeout,
            retire_after=retire_after,  # None: the controller's retire_after setting
            actor=self.actor,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        verb = "execute" if kind == "execute" else "send"
        nc = await self._bus_connection("command")
        accepted = await self._submit(nc, subjects.ctl_as(verb, self.identity), request)
        handle = CommandHandle(nc, accepted, self.timeout)
        if follow:
            await handle.follow()
        return handle

    async def _submit(
        self, nc: bus.NATS, subject: str, request: wire.CommandRequest
    ) -> wire.CommandAccepted:
        """Send a keyed request; while no controller answers, send it again with the same
        key (with backoff, for up to three times the client's timeout)."""
        deadline = time.monotonic() + 3 * self.timeout
        delay = 0.1
        while True:
            try:
                accepted: wire.CommandAccepted = await bus.request(
                    nc, subject, request, wire.CommandAccepted, timeout=self.timeout
                )
                return accepted
            except (ControllerUnavailable, Timeout):
                if time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def send(
        self, targets: str | Sequence[str], command: str, /, **args: Any
    ) -> CommandHandle:
        """COMMAND: run the handler registered as ``command`` on the targets with ``args``."""
        return await self.command(targets, "command", command, args=args)

    async def shell(
        self, targets: str | Sequence[str], cmd: str, *, timeout: float = 60.0
    ) -> CommandHandle:
        """Run a shell command on nodes started with ``--allow-shell``."""
        return await self.command(targets, "shell", args={"cmd": cmd}, timeout=timeout)

    async def get(self, targets: str | Sequence[str], param: str = "") -> CommandHandle:
        """GET a node parameter (every parameter when ``param`` is empty)."""
        return await self.command(targets, "get", param)

    async def set(self, targets: str | Sequence[str], param: str, value: Any) -> CommandHandle:
        """SET a node parameter (converted to its declared type by the node)."""
        return await self.command(targets, "set", param, args={"value": value})

    async def put(
        self, targets: str | Sequence[str], path: str, data: bytes, mode: int | None = None
    ) -> CommandHandle:
        """PUT ``data`` into ``path`` inside each node's work directory."""
        args = {} if mode is None else {"mode": mode}
        return await self.command(targets, "put", path, args=args, data=data)

    async def execute(
        self,
        targets: str | Sequence[str],
        source: bytes,
        argv: Sequence[str] = (),
        *,
        timeout: float = 60.0,
    ) -> CommandHandle:
        """EXECUTE: run a Python file as its own process on nodes that allow it."""
        return await self.command(
            targets, "execute", args={"argv": list(argv)}, data=source, timeout=timeout
        )

    # --- the API's command functions (either transport) --------------------------------

    async def send_command(
        self,
        targets: Sequence[str],
        kind: str = "command",
        name: str = "",
        args: dict[str, Any] | None = None,
        data: bytes = b"",
        timeout: float = 60.0,
        retire_after: float | None = None,
        idempotency_key: str | None = None,
    ) -> wire.CommandAccepted:
        """Send an addressed command; answers once it is on disk, with its serial and nodes.

        Raises:
            Refused: no node matched, or the controller refused it.
            Forbidden: the caller's role may not send commands.
        """
        return await self._get(
            "send_command",
            wire.CommandAccepted,
            targets=list(targets),
            kind=kind,
            name=name,
            args=args or {},
            data=data,
            timeout=timeout,
            retire_after=retire_after,
            idempotency_key=idempotency_key,
        )

    async def execute_command(
        self,
        targets: Sequence[str],
        data: bytes,
        args: dict[str, Any] | None = None,
        timeout: float = 60.0,
        idempotency_key: str | None = None,
    ) -> wire.CommandAccepted:
        """EXECUTE: run ``data`` (a Python file) on nodes that allow it (execute role).

        Raises:
            Forbidden: the caller lacks the execute role.
            Refused: no node matched, or the controller refused it.
        """
        return await self._get(
            "execute_command",
            wire.CommandAccepted,
            targets=list(targets),
            kind="execute",
            args=args or {},
            data=data,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    async def command_detail(self, serial: int) -> wire.CommandView:
        """One command with every node's outcome.

        Raises:
            NotFound: no command has that serial.
        """
        return await self._get("command_detail", wire.CommandView, serial=serial)

    async def list_commands(
        self, limit: int = 50, before: int | None = None
    ) -> list[wire.CommandView]:
        """Recent commands, newest first, with per-state counts (``before``: next page)."""
        return await self._get("list_commands", list[wire.CommandView], limit=limit, before=before)

    async def commands(self, limit: int = 50, before: int | None = None) -> list[wire.CommandView]:
        """The CLI's spelling of :meth:`list_commands`."""
        return await self.list_commands(limit, before)
