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
import inspect
import logging
import os
import random
import socket
import time
import uuid
import weakref
from collections.abc import Callable
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
    UsageError,
)
from corral.node.commands import CommandRunner
from corral.node.epochs import EpochFilter
from corral.node.handlers import Handlers
from corral.node.stats import HostStats
from corral.node.streams import NodeStream, StreamHub
from corral.security import credential_name

if TYPE_CHECKING:
    from corral.node.workers import WorkerPool

__all__ = ["Node"]

log = logging.getLogger("corral.node")

#: Nodes of one process (one event loop) that connect and set up at once. A process hosting
#: hundreds of nodes would otherwise run every one's TLS handshake and set-up in each turn of
#: its loop, and its joined nodes' heartbeats waited behind them for seconds: they were
#: declared DOWN while alive (issue #14). A few at once keep the loop's turns short.
STARTING_AT_ONCE = 8
#: report topics whose latest value a node keeps to send again after a join (the oldest go)
MAX_REPORT_TOPICS = 1000
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


#: Each event loop's heartbeat phase: when in the interval its nodes beat (see _until_beat).
_phases: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, float] = weakref.WeakKeyDictionary()


def _until_beat(interval: float) -> float:
    """Seconds until this loop's next heartbeat instant: every node of one process beats at
    the same instants (a random phase per process, so processes stay spread over the interval).

    A process hosting hundreds of nodes then wakes once per interval instead of once per node,
    and its nodes' beats reach nats-server and the controller together, read in a few socket
    reads instead of one wake-up per beat (issue #14). Each beat still goes on its node's own
    connection, under its own credential. A beat whose instant is less than a tenth of an
    interval away waits for the next one (a timer may fire a little early: no double beat).
    """
    loop = asyncio.get_running_loop()
    phase = _phases.get(loop)
    if phase is None:
        phase = _phases[loop] = random.uniform(0.0, interval)
    return beat_delay(loop.time(), phase, interval)


def beat_delay(now: float, phase: float, interval: float) -> float:
    """Seconds from ``now`` until the next instant ``phase + k * interval``, at least a tenth
    of an interval away (the instant just passed or about to pass was this beat's)."""
    delay = interval - (now - phase) % interval
    return delay + interval if delay < interval / 10 else delay


def _start_slot() -> asyncio.Semaphore:
    """The running loop's semaphore of :data:`STARTING_AT_ONCE` starts."""
    loop = asyncio.get_running_loop()
    slot = _slots.get(loop)
    if slot is None:
        slot = _slots[loop] = asyncio.Semaphore(STARTING_AT_ONCE)
    return slot


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
        handlers: what it does with commands (default: every handler registered with
            :func:`corral.command` and friends, nothing dangerous allowed).
        work_dir: where PUT writes, EXECUTE and shell commands run, and the last applied
            serial is kept (default ``<data_dir>/nodes/<name>``).
        on_reports: for a sink, called with every :class:`~corral.wire.ReportUpdate`.
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
        handlers: Handlers | None = None,
        work_dir: Path | None = None,
        on_reports: Callable[[wire.ReportUpdate], Any] | None = None,
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
        #: notified whenever this node joins (and by the worker pool, for a hello)
        self.join_changed = asyncio.Condition()
        self.nc: bus.NATS | None = None
        self._need_join = asyncio.Event()
        self._failure: CorralError | None = None
        self._done = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.work_dir = work_dir or (
            handlers.work_dir if handlers else config.data_path / "nodes" / self.name
        )
        self.handlers = handlers or Handlers.collect(
            self.work_dir, output_limit=config.output_limit
        )
        #: the controller's clock minus ours, learned at join
        self.clock_offset = 0.0
        self.commands = CommandRunner(
            self.name,
            self.handlers,
            self.work_dir / ".corral-applied",
            clock_offset=lambda: self.clock_offset,
            on_applied=self._applied,
            max_report_bytes=config.max_command_bytes,
        )
        self.on_reports = on_reports
        #: the latest report sent per topic, sent again after every join: a restarted or new
        #: leader has each node's latest values before their next report (issue #13)
        self._reports: dict[str, wire.Report] = {}
        self.streams = StreamHub(self.name)
        #: task modules its workers load (``--tasks``), the worker pool, and joins so far
        self.task_modules = tasks
        self.workers: WorkerPool | None = None
        self.joins = 0
        #: the highest leader epoch seen: messages of a lower one are ignored (issue #13)
        self.epochs = EpochFilter(self.name)
        self.commands.epochs = self.epochs

    def _applied(self, serial: int) -> None:
        self.last_serial = serial

    def __repr__(self) -> str:
        state = "joined" if self.joined.is_set() else "joining"
        return f"<Node {self.name!r} {state} controller={(self.controller or '-')[:8]}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, wait_for_bus: float = float("inf")) -> None:
        """Connect and start joining; returns once connected (not necessarily joined).

        At most :data:`STARTING_AT_ONCE` nodes of one event loop connect and set up at once;
        the others wait their turn (``wait_for_bus`` counts from it).

        Raises:
            ConfigError: the credential is missing or belongs to another node.
            AuthError: the credential was refused.
            BusUnavailable: the bus did not answer within ``wait_for_bus``.
        """
        self._check_credential()
        async with _start_slot():
            await self._start(wait_for_bus)

    async def _start(self, wait_for_bus: float) -> None:
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
        await self.nc.subscribe(subjects.node_out(self.name, "reports"), cb=self._on_reports)
        await self.commands.start(self.nc)
        await self.streams.start(self.nc)
        from corral.node.workers import WorkerPool, task_modules

        if modules := task_modules(self.task_modules):
            self.workers = WorkerPool(
                name=self.name,
                instance=self.instance,
                labels=self.labels,
                nc=self.nc,
                task_log_limit=self.config.task_log_limit,
                joined=self.joined,
                joins=lambda: self.joins,
                join_changed=self.join_changed,
                epochs=self.epochs,
                modules=modules,
                slots=self.slots,
            )
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
        await self.commands.stop()
        await self.streams.stop()
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
        if nc is not None and not nc.is_closed:
            # Closed by the server (revoked) or still reconnecting: release its sockets.
            with contextlib.suppress(Exception):
                await nc.close()
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
            epoch=self.epochs.highest,
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
            if not self.epochs.accept(reply.epoch, "join reply"):
                continue  # a deposed leader answered: the leader's announcement comes
            self.controller = reply.controller
            if reply.now:
                self.clock_offset = reply.now - time.time()
            await self.commands.join(reply.first_serial, reply.last_serial, reply.report_batch)
            self.heartbeat_interval = reply.heartbeat_interval  # the controller's rhythm
            waiting_logged = False
            self.joined.set()
            self.joins += 1
            async with self.join_changed:
                self.join_changed.notify_all()
            await self._resend_reports()
            log.info("joined", extra={"node": self.name, "controller": reply.controller[:8]})

    async def wait_joined(self, controller: str | None = None) -> str:
        """Wait until joined (to the controller with id ``controller``, if given).

        Returns:
            The id of the controller joined.
        """
        async with self.join_changed:
            await self.join_changed.wait_for(
                lambda: self.joined.is_set() and controller in (None, self.controller)
            )
        assert self.controller is not None
        return self.controller

    async def _heartbeat_loop(self) -> None:
        assert self.nc is not None
        subject = subjects.node_in(self.name, "hb")
        host = HostStats.shared(Path(self.work_dir))
        while True:
            await asyncio.sleep(_until_beat(self.heartbeat_interval))
            # Not before the first join: the controller would only answer "join again", and
            # that second join would double a slow join's cost (issue #14).
            if self.nc.is_connected and self.joins:
                beat = wire.Heartbeat(
                    instance=self.instance,
                    last_serial=self.last_serial,
                    stats=host.current(),
                    epoch=self.epochs.highest,
                )
                await self.nc.publish(subject, wire.encode(beat), headers=wire.HEADERS)

    # --- bus callbacks ------------------------------------------------------------------

    async def _on_announce(self, msg: Any) -> None:
        try:
            ann = wire.decode(msg.data, wire.Announce, msg.headers)
        except CorralError as exc:
            log.warning("bad announcement ignored: %s", exc)
            return
        if not self.epochs.accept(ann.epoch, "announcement"):
            return
        if ann.controller != self.controller or not self.joined.is_set():
            self._need_join.set()
        else:
            await self.commands.announced(ann.last_serial)

    async def _on_ctl(self, msg: Any) -> None:
        try:
            ctl = wire.decode(msg.data, wire.Rejoin, msg.headers)
        except CorralError as exc:
            log.warning("bad control message ignored: %s", exc)
            return
        if not self.epochs.accept(max(ctl.epoch, wire.epoch_of(msg.headers)), "rejoin"):
            return
        log.info("asked to join again: %s", ctl.reason, extra={"node": self.name})
        self.joined.clear()
        self._need_join.set()

    async def report(self, topic: str, value: Any) -> None:
        """Send a data report on ``topic`` (SEER REPORT); the controller keeps the latest.

        Raises:
            InvalidName: ``topic`` is not a valid name.
            UsageError: the node is not started.
        """
        subjects.check_name(topic, "report topic")
        if self.nc is None:
            raise UsageError("start the node before sending reports")
        report = wire.Report(topic=topic, value=value, at=time.time() + self.clock_offset)
        self._reports.pop(topic, None)  # the newest last: the oldest goes past the bound
        self._reports[topic] = report
        if len(self._reports) > MAX_REPORT_TOPICS:
            del self._reports[next(iter(self._reports))]
        await self._send_report(report)

    async def _send_report(self, report: wire.Report) -> None:
        assert self.nc is not None
        await self.nc.publish(
            subjects.node_in(self.name, "report"), wire.encode(report), headers=wire.HEADERS
        )

    async def _resend_reports(self) -> None:
        """Send every topic's latest report again (after a join: the controller may be a new
        leader, or restarted, with none of them); each keeps the time it was taken."""
        for report in list(self._reports.values()):
            try:
                await self._send_report(report)
            except Exception as exc:  # the bus closed: the next join sends them again
                log.info("reports not sent again: %s", exc, extra={"node": self.name})
                return

    def stream(self, name: str, buffer: int = 1000) -> NodeStream:
        """A data stream subscribers read with flow control (SEER STREAM).

        ``write`` items to it; each subscriber gets them as fast as it reads, and at most
        ``buffer`` wait for a slow one (the oldest are dropped and counted).

        Raises:
            InvalidName: ``name`` is not a valid name.
        """
        return self.streams.stream(name, buffer)

    async def _on_reports(self, msg: Any) -> None:
        try:
            update = wire.decode(msg.data, wire.ReportUpdate, msg.headers)
        except CorralError as exc:
            log.warning("bad report update ignored: %s", exc)
            return
        if not self.epochs.accept(wire.epoch_of(msg.headers), "report update"):
            return
        hooks = [self.on_reports] if self.on_reports is not None else []
        for hook in [*hooks, *self.handlers.report_hooks]:
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(update)
                elif hook is self.on_reports:
                    result = hook(update)
                    if asyncio.iscoroutine(result):
                        await result
                else:
                    await asyncio.to_thread(hook, update)
            except Exception:
                log.exception("a report hook failed", extra={"node": self.name})

    async def _on_closed(self) -> None:
        if not self._stopping:
            self._fail(
                AuthError(
                    f"node {self.name}: the bus closed the connection for good; its credential "
                    "was probably revoked. Ask the operator for a new one (`corral enroll`)"
                )
            )
