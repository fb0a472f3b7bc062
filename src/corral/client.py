"""``corral.Client``: an operator's connection to the controller over the bus.

>>> async with await Client.connect(config) as client:      # doctest: +SKIP
...     for node in await client.nodes():
...         print(node.name, node.status)
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from corral import bus, subjects, wire
from corral.config import Config
from corral.errors import AuthError, ConfigError, ControllerUnavailable, Timeout, UsageError
from corral.outcomes import CommandHandle
from corral.security import ADMIN_INBOX, credential_name
from corral.streams import StreamReader

__all__ = ["Client"]


class Client:
    """Requests to the controller, authenticated with the admin credential.

    Create with :meth:`connect`; use as an async context manager or call :meth:`close`.
    """

    def __init__(
        self, nc: bus.NATS, config: Config, timeout: float = 5.0, identity: str = "admin"
    ) -> None:
        self.nc = nc
        self.config = config
        self.timeout = timeout
        #: the credential's role (``admin``, ``operator``): who the audit log names
        self.identity = identity
        self.actor = f"{getpass.getuser()}@{socket.gethostname()} ({identity})"

    def __repr__(self) -> str:
        state = "connected" if self.nc.is_connected else "closed"
        return f"<Client {self.config.bus_url} {state}>"

    @classmethod
    async def connect(
        cls, config: Config, *, creds: Path | None = None, wait: float = 0.0
    ) -> Client:
        """Connect to the bus as the admin role.

        Args:
            config: where the bus is and how to trust it.
            creds: the admin credentials file (default ``<data_dir>/auth/admin.creds``).
            wait: seconds to keep trying while the bus is unreachable.

        Raises:
            ConfigError: no credentials file.
            AuthError: the credential was refused.
            BusUnavailable: the bus could not be reached.
        """
        path = creds or config.creds_path("admin")
        nc = await bus.connect(
            config, "admin", creds=creds, inbox_prefix=ADMIN_INBOX, wait=wait, name="corral-cli"
        )
        try:
            identity = credential_name(path.read_text())
        except (OSError, ConfigError):
            identity = "admin"
        return cls(nc, config, identity=identity)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        if not self.nc.is_closed:
            await self.nc.close()

    async def nodes(self) -> list[wire.NodeView]:
        """Every node in the registry, ordered by name.

        Raises:
            ControllerUnavailable: no controller is running.
            Timeout: the controller did not answer in time.
        """
        reply: wire.NodesReply = await bus.request(
            self.nc,
            subjects.ctl("nodes"),
            wire.NodesRequest(),
            wire.NodesReply,
            timeout=self.timeout,
        )
        return reply.nodes

    async def stats(self) -> wire.StatsReply:
        """The controller's counters (messages handled, rejected by reason).

        Raises:
            ControllerUnavailable: no controller is running.
            Timeout: the controller did not answer in time.
        """
        reply: wire.StatsReply = await bus.request(
            self.nc,
            subjects.ctl("stats"),
            wire.StatsRequest(),
            wire.StatsReply,
            timeout=self.timeout,
        )
        return reply

    async def agents(self, wait: float = 0.5) -> list[wire.AgentInfo]:
        """Every live agent, as each describes itself, ordered by name.

        Agents answer a broadcast; those that answer within ``wait`` seconds are listed.
        """
        return await bus.gather_agents(self.nc, wait)

    async def auth_event(self, event: wire.AuthEvent) -> None:
        """Tell the controller about an enrollment or revocation (audit log, registry).

        Raises:
            ControllerUnavailable: no controller is running.
        """
        subject = subjects.ctl_as("auth", self.identity)
        await bus.request(self.nc, subject, event, wire.Ok, timeout=self.timeout)

    async def wait_for(
        self, predicate: Callable[[list[wire.NodeView]], bool], timeout: float
    ) -> list[wire.NodeView]:
        """Wait until ``predicate(nodes)`` holds for the registry.

        The registry is read now and again each time the controller publishes a node
        transition, so the wait ends as soon as the condition becomes true.

        Raises:
            Timeout: it did not become true within ``timeout`` seconds.
        """
        changed = asyncio.Event()

        async def on_event(_: object) -> None:
            changed.set()

        sub = await self.nc.subscribe(subjects.node_events(), cb=on_event)
        nodes: list[wire.NodeView] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    try:
                        nodes = await self.nodes()
                    except ControllerUnavailable:
                        nodes = []
                    if predicate(nodes):
                        return nodes
                    # Re-read at least every second: a controller that was down publishes
                    # nothing about the time it was away.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 1.0)
        except TimeoutError:
            raise Timeout(
                f"condition not met within {timeout}s; last registry: {nodes!r}"
            ) from None
        finally:
            await sub.unsubscribe()

    async def events(self) -> AsyncIterator[wire.NodeEvent]:
        """Node status transitions as they happen (an endless async iterator)."""
        sub = await self.nc.subscribe(subjects.node_events())
        try:
            async for msg in sub.messages:
                yield wire.decode(msg.data, wire.NodeEvent, msg.headers)
        finally:
            if not self.nc.is_closed:
                await sub.unsubscribe()

    # --- commands (SEER) ----------------------------------------------------------------

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
            retire_after=self.config.retire_after if retire_after is None else retire_after,
            actor=self.actor,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
        )
        verb = "execute" if kind == "execute" else "send"
        accepted = await self._submit(subjects.ctl_as(verb, self.identity), request)
        handle = CommandHandle(self.nc, accepted, self.timeout)
        if follow:
            await handle.follow()
        return handle

    async def _submit(self, subject: str, request: wire.CommandRequest) -> wire.CommandAccepted:
        """Send a keyed request; while no controller answers, send it again with the same
        key (with backoff, for up to three times the client's timeout)."""
        deadline = time.monotonic() + 3 * self.timeout
        delay = 0.1
        while True:
            try:
                accepted: wire.CommandAccepted = await bus.request(
                    self.nc, subject, request, wire.CommandAccepted, timeout=self.timeout
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

    async def command_detail(self, serial: int) -> wire.CommandView:
        """One command with every node's outcome.

        Raises:
            Refused: no command has that serial.
        """
        view: wire.CommandView = await bus.request(
            self.nc,
            subjects.ctl("command"),
            wire.CommandQuery(serial=serial),
            wire.CommandView,
            timeout=self.timeout,
        )
        return view

    async def commands(self, limit: int = 50, before: int | None = None) -> list[wire.CommandView]:
        """Recent commands, newest first, with per-state counts (``before``: next page)."""
        reply: wire.CommandsReply = await bus.request(
            self.nc,
            subjects.ctl("commands"),
            wire.CommandsQuery(limit=limit, before=before),
            wire.CommandsReply,
            timeout=self.timeout,
        )
        return reply.commands

    async def reports(self, topic: str = "") -> wire.ReportUpdate:
        """The latest report of every node (on ``topic``, if given), with the aggregates."""
        reply: wire.ReportUpdate = await bus.request(
            self.nc,
            subjects.ctl("reports"),
            wire.ReportsQuery(topic=topic),
            wire.ReportUpdate,
            timeout=self.timeout,
        )
        return reply

    def stream(self, node: str, stream: str, window: int = 100) -> StreamReader:
        """Read ``node``'s data stream ``stream`` with flow control (``async with`` it).

        Raises:
            InvalidName: a bad node or stream name.
            UsageError: ``window`` is less than 1.
        """
        return StreamReader(self.nc, node, stream, window)
