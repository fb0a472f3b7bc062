"""Publishing commands: live by core NATS, and into the durable log (JetStream).

Theory of operation: a committed command is first published live, in serial order: once on
``corral.live.cmd``, which every node subscribes to (the server fans it out), with its body
when it goes to many nodes, or as a mark naming its targets when it goes to a few (its body
then goes to each target's ``corral.node.<name>.cmd``). Each live message names the serial
published before it, so a node sees a gap and asks for what it missed (answered from the
recent bodies kept here, else from the store). Then it goes into the stream ``CORRAL_CMDS``
(file storage, kept a week), the durable log, by one task, in serial order, each with its
serial as message id so that a second copy (a re-publish after a controller crash) is
dropped. No node has a consumer: the stream is read back only for the last serial it holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from corral import bus, subjects, wire
from corral.config import Config
from corral.errors import CorralError, Refused
from corral.records import CommandRow

__all__ = ["CATCHUP_PAGE", "CommandStream", "DEDUP", "KEEP", "RECENT"]

log = logging.getLogger("corral.controller.commands")

#: How long the stream keeps commands, and how far back a restarted controller looks.
KEEP = 7 * 86_400.0
#: Window in which the stream drops a re-published command (same serial).
DEDUP = 3600.0
#: How many recent commands' bodies are kept to answer catch-ups without a store read.
RECENT = 4096
#: Most commands in one catch-up answer (the node asks again for the rest).
CATCHUP_PAGE = 100
#: Most stored commands read for one catch-up answer.
_CATCHUP_SCAN = 500


class CommandStream:
    """The live publisher, the stream, and the recent bodies, for the command service.

    Args:
        config: limits (``max_command_bytes``).
        clock: wall clock (seconds since the epoch).
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.js: Any = None
        self.nc: bus.NATS | None = None
        #: the last serial published on the live subject (every live message names it)
        self.last_live = 0
        #: serial -> (its nodes, its body) of the latest commands, oldest first
        self.recent: dict[int, tuple[frozenset[str], bytes]] = {}
        #: committed commands waiting to be written to the stream, in serial order
        self._outgoing: asyncio.Queue[CommandRow] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<CommandStream live={self.last_live} outgoing={self._outgoing.qsize()}>"

    async def open(self, nc: bus.NATS) -> None:
        """Make sure the stream exists with today's settings.

        Raises:
            BusUnavailable: JetStream did not answer.
        """
        self.nc = nc
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

    def start(self, logged: int) -> None:
        """Start the stream's publisher; live serials continue after ``logged`` (the last
        serial the stream holds)."""
        self.last_live = max(self.last_live, logged)
        self._publisher = asyncio.create_task(self._publish_loop(), name="publisher")

    async def stop(self, drain: float) -> None:
        """Write what is committed to the stream (for ``drain`` seconds at most), then stop."""
        if self._publisher is not None:
            try:
                await asyncio.wait_for(self._outgoing.join(), drain)
            except TimeoutError:
                pass
            self._publisher.cancel()
            try:
                await self._publisher
            except asyncio.CancelledError:
                pass

    async def send(self, row: CommandRow, epoch: int = 0, settled: tuple[int, ...] = ()) -> bool:
        """Publish a committed command live, then queue it for the stream (call in serial
        order). One already published live (a re-publish after a restart) goes to the
        stream only: the nodes that missed it catch up.

        Args:
            row: the command as stored, with its body.
            epoch: the controller's fencing epoch, carried by the live message.
            settled: serials of commands settled (every target's final report on disk),
                told to every node with it.

        Returns:
            Whether it went live (else ``settled`` was not sent).
        """
        self._remember(row)
        sent = row.serial > self.last_live
        if sent:
            await self._publish_live(row, epoch, settled)
        self._outgoing.put_nowait(row)
        return sent

    async def catch_up(self, node: str, ask: wire.CatchUp, store: Any) -> wire.CatchUpReply:
        """Node ``node``'s commands with serials in ``(ask.after, ask.upto]``, one page.

        Only commands addressed to ``node`` are answered (the caller takes the name from the
        subject, so from the node's credential), from the recent bodies, else from ``store``.
        ``covered`` says how far the page goes: the node asks again from there.

        Raises:
            Refused: the range is empty, negative or beyond the last serial published.
            StoreError: the store could not be read.
        """
        last = self.last_live
        if not 0 <= ask.after < ask.upto <= last:
            raise Refused(
                f"catch-up of ({ask.after}, {ask.upto}] refused: ask for serials after one "
                f"you heard, up to the last published ({last})"
            )
        budget = self.config.max_command_bytes
        out: list[bytes] = []
        complete = True  # what is scanned is every command of the range
        recent = self.recent
        if recent and ask.after + 1 >= next(iter(recent)):
            scanned = [(s, nb) for s, nb in recent.items() if ask.after < s <= ask.upto]
        else:
            rows = await store.commands_between(ask.after, ask.upto, _CATCHUP_SCAN)
            scanned = [(r.serial, (frozenset(r.nodes), r.body)) for r in rows]
            complete = len(rows) < _CATCHUP_SCAN
        covered = ask.after
        for serial, (nodes, body) in scanned:
            if node in nodes:
                if out and (len(out) >= CATCHUP_PAGE or budget < len(body)):
                    break
                out.append(body)
                budget -= len(body)
            covered = serial
        else:
            if complete:
                covered = ask.upto
        return wire.CatchUpReply(covered=covered, commands=out)

    def _remember(self, row: CommandRow) -> None:
        self.recent[row.serial] = (frozenset(row.nodes), row.body)
        while len(self.recent) > RECENT:
            del self.recent[next(iter(self.recent))]

    async def _publish_live(self, row: CommandRow, epoch: int, settled: tuple[int, ...]) -> None:
        # Without NATS headers: the epoch and the protocol version are in the payload, and a
        # thousand nodes do not each parse a header block per command (issue #14).
        assert self.nc is not None
        prev, self.last_live = self.last_live, row.serial
        to_all = msgspec.msgpack.decode(row.body, type=_ToAll).to_all
        if to_all:
            live = wire.LiveCommand(
                serial=row.serial, prev=prev, epoch=epoch, body=row.body, settled=settled
            )
            await self.nc.publish(subjects.LIVE_COMMANDS, wire.encode(live))
            return
        mark = wire.LiveCommand(
            serial=row.serial, prev=prev, epoch=epoch, nodes=tuple(row.nodes), settled=settled
        )
        body = wire.encode(wire.LiveCommand(serial=row.serial, epoch=epoch, body=row.body))
        for node in row.nodes:
            subject = subjects.live_commands_for(node)
            await self.nc.publish(subject, body)
        await self.nc.publish(subjects.LIVE_COMMANDS, wire.encode(mark))

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

    async def forget_consumers(self) -> None:
        """Delete the nodes' durable consumers an earlier version made (they would push
        commands the old way onto the nodes' own subjects)."""
        try:
            infos = await self.js.consumers_info(subjects.COMMAND_STREAM)
        except Exception as exc:  # not important enough to stop a start
            log.debug("could not list the command stream's consumers: %s", exc)
            return
        for info in infos:
            name = info.name or ""
            if name.startswith(subjects.command_consumer("")):
                try:
                    await self.js.delete_consumer(subjects.COMMAND_STREAM, name)
                except Exception as exc:
                    log.debug("could not delete consumer %s: %s", name, exc)

    async def _publish_loop(self) -> None:
        """Write committed commands to the stream in serial order, each once the stream has
        the previous.

        Apart from the commit loop and the live publish, so that waiting for the stream (it
        writes each command to disk before it answers) holds up neither the next commit nor
        the delivery.
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


class _ToAll(msgspec.Struct):
    """The one field of a command's body the publisher reads (the rest is skipped)."""

    to_all: bool = False
