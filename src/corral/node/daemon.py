"""The node daemon: join the controller, heartbeat, re-attach after a controller restart.

Theory of operation: the node connects to the bus (waiting for it if need be) and listens to
two subjects: the controller's announcements and its own control subject. It asks to join;
if no controller answers yet it waits for the next announcement (SEER's ``pingExperiment``) and
asks again. Once joined it publishes a heartbeat every interval whether or not anyone listens,
so a restarted controller that loaded the registry from its store sees the node alive at once.
An announcement from a *different* controller, or a :class:`~corral.wire.Rejoin`, makes it
join again. If the bus closes the connection for good (its credential was revoked) the node
stops with an :class:`~corral.errors.AuthError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral import bus, subjects, wire
from corral._version import __version__
from corral.config import Config
from corral.errors import (
    AuthError,
    ConfigError,
    ControllerUnavailable,
    CorralError,
    Refused,
    RetryLater,
    Timeout,
)
from corral.security import credential_name

if TYPE_CHECKING:
    from corral.node.workers import WorkerPool

__all__ = ["Node"]

log = logging.getLogger("corral.node")


class Node:
    """One node process.

    Args:
        config: bus settings (URL, CA) and the heartbeat interval.
        name: the node's unique name; its credential must be for this name.
        labels: labels it carries (``gpu``, ``rack1``).
        interfaces: interfaces it controls (SEER ``sendToNodeThatHas``).
        attributes: free-form attributes; ``sink: True`` makes it a sink.
        slots: task worker slots it offers.
        creds: its credentials file (default ``<data_dir>/auth/node-<name>.creds``).
        tasks: task modules to load into ``slots`` worker processes (``corral.tasks``).
    """

    def __init__(
        self,
        config: Config,
        name: str,
        *,
        labels: tuple[str, ...] = (),
        interfaces: tuple[str, ...] = (),
        attributes: dict[str, Any] | None = None,
        slots: int = 1,
        creds: Path | None = None,
        tasks: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.name = subjects.check_name(name)
        self.labels = labels
        self.interfaces = interfaces
        self.attributes = dict(attributes or {})
        self.slots = slots
        self.creds = creds
        self.instance = uuid.uuid4().hex
        self.controller: str | None = None
        self.last_serial = 0
        #: seconds between heartbeats; the controller's value once joined
        self.heartbeat_interval = config.heartbeat_interval
        self.joined = asyncio.Event()
        self._join_changed = asyncio.Condition()
        self.nc: bus.NATS | None = None
        self._need_join = asyncio.Event()
        self._failure: CorralError | None = None
        self._done = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        #: task modules its workers load (``--tasks``), the worker pool, and joins so far
        self.task_modules = tasks
        self.workers: WorkerPool | None = None
        self.joins = 0

    def __repr__(self) -> str:
        state = "joined" if self.joined.is_set() else "joining"
        return f"<Node {self.name!r} {state} controller={(self.controller or '-')[:8]}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, wait_for_bus: float = float("inf")) -> None:
        """Connect and start joining; returns once connected (not necessarily joined).

        Raises:
            ConfigError: the credential is missing or belongs to another node.
            AuthError: the credential was refused.
            BusUnavailable: the bus did not answer within ``wait_for_bus``.
        """
        self._check_credential()
        self.nc = await bus.connect(
            self.config,
            f"node-{self.name}",
            creds=self.creds,
            inbox_prefix=subjects.inbox_prefix(self.name),
            wait=wait_for_bus,
            closed_cb=self._on_closed,
            name=f"corral-node-{self.name}",
        )
        await self.nc.subscribe(subjects.ANNOUNCE, cb=self._on_announce)
        await self.nc.subscribe(subjects.node_out(self.name, "ctl"), cb=self._on_ctl)
        from corral.node.workers import WorkerPool, task_modules

        if modules := task_modules(self.task_modules):
            self.workers = WorkerPool(self, modules, self.slots)
            await self.workers.start()
        self._need_join.set()
        self._tasks = [
            asyncio.create_task(self._join_loop(), name="join"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]

    def _check_credential(self) -> None:
        path = self.creds or self.config.creds_path(f"node-{self.name}")
        try:
            text = path.read_text()
        except OSError:
            return  # bus.connect names the missing file and the fix
        holder = credential_name(text)
        if holder != f"node:{self.name}":
            raise ConfigError(
                f"credential {path} is for {holder!r}, not node {self.name!r}: the bus would "
                f"refuse everything it sends. Use the file `corral enroll {self.name}` wrote"
            )

    async def run(self) -> None:
        """Start and run until :meth:`stop` or a fatal error.

        Raises:
            AuthError: the credential was refused or revoked.
            DuplicateName: a live node holds this name (a :class:`Refused`).
        """
        await self.start()
        await self._done.wait()
        await self.stop()
        if self._failure is not None:
            raise self._failure

    async def stop(self, reason: str = "stopped") -> None:
        """Tell the controller we leave (best effort), then close the connection."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.workers is not None:
            await self.workers.stop()
        nc, self.nc = self.nc, None
        if nc is not None and nc.is_connected:
            if self.joined.is_set():
                with contextlib.suppress(CorralError):
                    await bus.request(
                        nc,
                        subjects.node_in(self.name, "leave"),
                        wire.Leave(instance=self.instance, reason=reason),
                        wire.Ok,
                        timeout=1.0,
                    )
            with contextlib.suppress(Exception):
                await nc.drain()
        self._done.set()

    def _fail(self, error: CorralError) -> None:
        self._failure = error
        self._done.set()

    # --- joining ------------------------------------------------------------------------

    def _join_message(self) -> wire.Join:
        return wire.Join(
            instance=self.instance,
            labels=self.labels,
            interfaces=self.interfaces,
            attributes=self.attributes,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            slots=self.slots,
            last_serial=self.last_serial,
        )

    async def _join_loop(self) -> None:
        assert self.nc is not None
        waiting_logged = False
        while True:
            await self._need_join.wait()
            self._need_join.clear()
            try:
                reply: wire.JoinReply = await bus.request(
                    self.nc,
                    subjects.node_in(self.name, "join"),
                    self._join_message(),
                    wire.JoinReply,
                    timeout=5.0,
                )
            except (ControllerUnavailable, Timeout):
                if not waiting_logged:
                    log.info("waiting for the controller", extra={"node": self.name})
                    waiting_logged = True
                self.joined.clear()
                continue  # the next announcement sets _need_join again
            except RetryLater as exc:
                log.info("join deferred: %s", exc, extra={"node": self.name})
                await asyncio.sleep(exc.retry_after)
                self._need_join.set()
                continue
            except Refused as exc:
                log.error("join refused: %s", exc, extra={"node": self.name})
                self._fail(exc)
                return
            self.controller = reply.controller
            self.heartbeat_interval = reply.heartbeat_interval  # the controller's rhythm
            waiting_logged = False
            self.joined.set()
            self.joins += 1
            async with self._join_changed:
                self._join_changed.notify_all()
            log.info("joined", extra={"node": self.name, "controller": reply.controller[:8]})

    async def wait_joined(self, controller: str | None = None) -> str:
        """Wait until joined (to the controller with id ``controller``, if given).

        Returns:
            The id of the controller joined.
        """
        async with self._join_changed:
            await self._join_changed.wait_for(
                lambda: self.joined.is_set() and controller in (None, self.controller)
            )
        assert self.controller is not None
        return self.controller

    async def _heartbeat_loop(self) -> None:
        assert self.nc is not None
        subject = subjects.node_in(self.name, "hb")
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            if self.nc.is_connected:
                beat = wire.Heartbeat(instance=self.instance, last_serial=self.last_serial)
                await self.nc.publish(subject, wire.encode(beat), headers=wire.HEADERS)

    # --- bus callbacks ------------------------------------------------------------------

    async def _on_announce(self, msg: Any) -> None:
        try:
            ann = wire.decode(msg.data, wire.Announce, msg.headers)
        except CorralError as exc:
            log.warning("bad announcement ignored: %s", exc)
            return
        if ann.controller != self.controller or not self.joined.is_set():
            self._need_join.set()

    async def _on_ctl(self, msg: Any) -> None:
        try:
            ctl = wire.decode(msg.data, wire.Rejoin, msg.headers)
        except CorralError as exc:
            log.warning("bad control message ignored: %s", exc)
            return
        log.info("asked to join again: %s", ctl.reason, extra={"node": self.name})
        self.joined.clear()
        self._need_join.set()

    async def _on_closed(self) -> None:
        if not self._stopping:
            self._fail(
                AuthError(
                    f"node {self.name}: the bus closed the connection for good; its credential "
                    "was probably revoked. Ask the operator for a new one (`corral enroll`)"
                )
            )
