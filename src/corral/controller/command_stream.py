"""The command stream: JetStream's side of addressed commands (the durable log, per-node
consumers, publishing in serial order).

Theory of operation: every command lives in the stream ``CORRAL_CMDS`` (file storage, kept a
week). Each node has a durable push consumer (``node-<name>``) on its own subject and
``corral.cmd.all`` that delivers one command at a time to ``corral.node.<name>.cmd``; a node
that was away finds what it missed waiting there. Consumers keep their state in the server's
memory (a file consumer fsyncs on every acknowledgement); an audit remakes any the server lost
in a restart, starting at the oldest command the node has not answered. Committed commands
are published by one task, in serial order, each with its serial as message id, so a second
copy (a re-publish after a controller crash) is dropped by the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from corral import bus, subjects, wire
from corral.config import Config
from corral.core.commands import CommandBook, CommandState
from corral.core.registry import Registry
from corral.errors import CorralError
from corral.records import CommandRow

__all__ = ["CommandStream", "DEDUP", "KEEP"]

log = logging.getLogger("corral.controller.commands")

#: How long the stream keeps commands, and how far back a restarted controller looks.
KEEP = 7 * 86_400.0
#: Window in which the stream drops a re-published command (same serial).
DEDUP = 3600.0
#: Seconds between checks that the server still holds every node's consumer.
_AUDIT_EVERY = 5.0


class CommandStream:
    """The stream, the nodes' consumers and the publisher, for the command service.

    Args:
        config: limits (``max_command_bytes``) and the default retire window.
        registry: when nodes joined (where a new consumer starts).
        book: which commands each node has not answered (where a re-made consumer starts).
        clock: wall clock (seconds since the epoch).
    """

    def __init__(
        self,
        config: Config,
        registry: Registry,
        book: CommandBook,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.registry = registry
        self.book = book
        self.clock = clock
        self.js: Any = None
        self._consumers: set[str] = set()
        self._consumer_queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        #: committed commands waiting to be published, in serial order
        self._outgoing: asyncio.Queue[CommandRow] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None
        #: seconds between checks that the server still holds every node's consumer
        self.audit_every = _AUDIT_EVERY

    def __repr__(self) -> str:
        return f"<CommandStream consumers={len(self._consumers)} outgoing={self._outgoing.qsize()}>"

    async def open(self, nc: bus.NATS) -> None:
        """Make sure the stream exists with today's settings.

        Raises:
            BusUnavailable: JetStream did not answer.
        """
        self.js = nc.jetstream(timeout=10.0)
        await self._ensure_stream()

    async def last_serial(self) -> int:
        """The serial of the last command in the stream (0 if it holds none or cannot say).

        Commands are published in serial order, so the last one has the highest serial the
        stream ever carried: no node can have applied a higher one from this stream.

        Returns:
            That serial.
        """
        try:
            info = await self.js.stream_info(subjects.COMMAND_STREAM)
            if not info.state.messages:
                return 0
            msg = await self.js.get_msg(subjects.COMMAND_STREAM, seq=info.state.last_seq)
            return msgspec.msgpack.decode(msg.data or b"", type=wire.NodeCommand).serial
        except Exception as exc:  # the nodes' reports are the other source: wait for them
            log.warning("could not read the last command in the command stream: %s", exc)
            return 0

    def start(self) -> None:
        """Start the consumer keeper and the publisher."""
        self._worker = asyncio.create_task(self._consumer_loop(), name="consumers")
        self._publisher = asyncio.create_task(self._publish_loop(), name="publisher")

    async def stop(self, drain: float) -> None:
        """Publish what is committed (for ``drain`` seconds at most), then stop."""
        if self._publisher is not None:
            try:
                await asyncio.wait_for(self._outgoing.join(), drain)
            except TimeoutError:
                pass
        for task in (self._publisher, self._worker):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    def publish_later(self, row: CommandRow) -> None:
        """Queue a committed command for the publisher (serial order is kept)."""
        self._outgoing.put_nowait(row)

    async def _ensure_stream(self) -> None:
        config = StreamConfig(
            name=subjects.COMMAND_STREAM,
            subjects=[subjects.COMMANDS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=KEEP,
            max_bytes=1 << 30,
            duplicate_window=DEDUP,
            max_msg_size=self.config.max_command_bytes + 64 * 1024,
            num_replicas=self.config.jetstream_replicas,
        )
        try:
            await self.js.stream_info(subjects.COMMAND_STREAM)
        except NotFoundError:
            await self.js.add_stream(config)
        else:
            await self.js.update_stream(config)

    # --- consumers: one durable per node ------------------------------------------------

    def node_joined(self, name: str) -> None:
        """Make sure node ``name`` has its durable consumer (created in the background)."""
        if name not in self._consumers:
            self._consumers.add(name)
            self._consumer_queue.put_nowait(name)

    async def _consumer_loop(self) -> None:
        while True:
            try:
                name = await asyncio.wait_for(self._consumer_queue.get(), self.audit_every)
            except TimeoutError:
                await self._audit_consumers()
                continue
            try:
                await self._ensure_consumer(name)
            except Exception as exc:  # a failing JetStream call must not stop the others
                log.warning("could not create the command consumer of %s: %s", name, exc)
                self._consumers.discard(name)
                await asyncio.sleep(1.0)
                self.node_joined(name)

    async def _audit_consumers(self) -> None:
        """Make the consumers again if the server lost them (they live in its memory)."""
        try:
            info = await self.js.stream_info(subjects.COMMAND_STREAM)
        except Exception as exc:  # the server is restarting: the next audit will tell
            log.debug("could not read the command stream's state: %s", exc)
            return
        if info.state.consumer_count >= len(self._consumers):
            return
        log.warning(
            "the command stream has %d consumers for %d nodes (the server restarted?): "
            "making the missing ones again",
            info.state.consumer_count,
            len(self._consumers),
        )
        for name in sorted(self._consumers):
            self._consumer_queue.put_nowait(name)

    def _start_time(self, name: str) -> float:
        """Where a new consumer of node ``name`` starts in the stream (epoch seconds).

        From when the node joined, for a new node. A consumer made again (the server
        restarted) starts at the oldest command the node has not answered, or a retire
        window ago: the node skips what it applied already, but replaying days of history
        to every node would flood the bus.
        """
        now = self.clock()
        record = self.registry.nodes.get(name)
        joined = record.joined_at if record is not None else now
        since = now - self.config.retire_after
        for command in self.book.commands.values():
            if command.created < since and command.waiting:
                outcome = command.outcomes.get(name)
                if outcome is not None and outcome.state in (
                    CommandState.PENDING,
                    CommandState.DELIVERED,
                ):
                    since = command.created
        return max(joined, since) - 1.0

    async def _ensure_consumer(self, name: str) -> None:
        durable = subjects.command_consumer(name)
        try:
            await self.js.consumer_info(subjects.COMMAND_STREAM, durable)
            return
        except NotFoundError:
            pass
        config = ConsumerConfig(
            durable_name=durable,
            deliver_subject=subjects.node_out(name, "cmd"),
            filter_subjects=[subjects.commands_for(name), subjects.COMMANDS_ALL],
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(self._start_time(name), tz=UTC),
            # One at a time, so order survives a delivery lost in a network cut (it is sent
            # again before anything later); nodes acknowledge on receipt, so this is one
            # round trip per command, not one execution.
            ack_wait=2.0,
            max_ack_pending=1,
            # Its state in the server's memory, not on disk: with `sync_interval: always` a
            # file consumer writes and fsyncs a state file (twice, with a rename) on every
            # acknowledgement, 70 % of the server's CPU in a broadcast to 1,000 nodes. Losing
            # that state costs nothing: the commands are on disk in the stream, a node skips
            # any serial it has applied, and a server restart is healed by the audit.
            mem_storage=True,
        )
        await self.js.add_consumer(subjects.COMMAND_STREAM, config)

    async def node_removed(self, name: str) -> None:
        """Delete a revoked node's consumer: a new credential starts a new history."""
        self._consumers.discard(name)
        try:
            await self.js.delete_consumer(subjects.COMMAND_STREAM, subjects.command_consumer(name))
        except NotFoundError:
            pass

    async def _publish_loop(self) -> None:
        """Publish committed commands in serial order, each once the stream has the previous.

        Apart from the commit loop, so that waiting for the stream (it writes each command to
        disk before it answers) does not hold up the next commit, its replies and outcomes.
        """
        while True:
            row = await self._outgoing.get()
            try:
                await self._publish(row)
            except Exception:  # not the bus: a bug; the next start re-publishes it
                log.exception("publishing command #%s failed", row.serial)
            finally:
                self._outgoing.task_done()

    async def _publish(self, row: CommandRow) -> None:
        body = msgspec.msgpack.decode(row.body, type=wire.NodeCommand)
        if body.to_all:
            await self._publish_to(subjects.COMMANDS_ALL, row, str(row.serial))
            return
        for node in row.nodes:
            await self._publish_to(subjects.commands_for(node), row, f"{row.serial}.{node}")

    async def _publish_to(self, subject: str, row: CommandRow, msg_id: str) -> None:
        headers = {**wire.HEADERS, "Nats-Msg-Id": msg_id}
        while True:
            try:
                await self.js.publish(subject, row.body, headers=headers)
                return
            except CorralError:
                raise
            except Exception as exc:  # JetStream busy or restarting: the command is on disk
                log.warning("publishing command #%s failed (%s); retrying", row.serial, exc)
                await asyncio.sleep(0.5)
