"""The command router: addressed commands with serials, outcomes, catch-up (SEER controller).

Theory of operation: an operator's :class:`~corral.wire.CommandRequest` is resolved against
the registry (:mod:`corral.core.addressing`), given the next serial by the
:class:`~corral.core.commands.CommandBook`, and written to the store in the controller's next
group commit. Only then is the sender answered and the command published to the JetStream
stream ``CORRAL_CMDS`` — on ``corral.cmd.node.<name>`` for one node, else once on
``corral.cmd.all`` with the resolved list, so the server fans it out and each node keeps what
is addressed to it. Every node has a durable consumer on that stream that pushes to its own
subject; a node that was away finds every command it missed waiting, in serial order. The
consumers keep their state in the server's memory (the commands themselves are on disk), and
an audit makes them again if the server restarts. The stream drops a second copy with the
same serial (its message id), so re-publishing the open commands after a controller crash
delivers nothing twice.

Nodes report each command's progress on ``corral.in.<node>.out``; the book moves the outcome,
the next commit persists it, and the change is published on ``corral.events.cmd.<serial>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from corral.core.addressing import NodeFacts, resolve
from corral.core.commands import CommandBook, CommandState, IllegalOutcome, Outcome, TrackedCommand
from corral.core.registry import NodeStatus, Registry
from corral.errors import CorralError, Refused, UsageError
from corral.records import AuditEntry, CommandRow, OutcomeRow

__all__ = ["BUILTIN_KINDS", "CommandService", "counts"]

log = logging.getLogger("corral.controller.commands")

#: Message types every node understands; anything else must be a handler the node registered.
BUILTIN_KINDS = frozenset({"command", "shell", "get", "set", "put", "execute"})
#: Commands addressed to at most this many nodes go to each node's own subject; larger
#: sets go once to every node with the list (one publish the server fans out).
_DIRECT_MAX = 4
#: How long the stream keeps commands, and how far back a restarted controller looks.
_KEEP = 7 * 86_400.0
#: Window in which the stream drops a re-published command (same serial).
_DEDUP = 3600.0
#: Seconds between checks that the server still holds every node's consumer.
_AUDIT_EVERY = 5.0
#: Seconds a stopping controller waits for committed commands to be published (the next
#: start re-publishes any left).
_DRAIN = 2.0


def _fields(o: Outcome) -> dict[str, Any]:
    fields = dataclasses.asdict(o)
    fields["state"] = o.state.value
    return fields


def _view(serial: int, o: Outcome) -> wire.OutcomeView:
    return wire.OutcomeView(**_fields(o))


def _row(serial: int, o: Outcome) -> OutcomeRow:
    return OutcomeRow(serial=serial, **_fields(o))


def counts(outcomes: list[wire.OutcomeView]) -> dict[str, int]:
    """How many outcomes are in each state."""
    out: dict[str, int] = {}
    for o in outcomes:
        out[o.state] = out.get(o.state, 0) + 1
    return out


@dataclass
class Batch:
    """What one group commit writes for commands, and what is sent once it is durable."""

    commands: list[CommandRow] = field(default_factory=list)
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    #: (reply subject, accepted message) to answer senders with
    replies: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def outcome_rows(self) -> list[OutcomeRow]:
        """The changed outcomes as store rows."""
        return [_row(serial, o) for serial, o in self.outcomes]


class CommandService:
    """Routes commands to nodes and follows their outcomes, inside the controller.

    Args:
        config: limits and defaults (``max_command_bytes``, ``retire_after``, ``output_limit``).
        registry: the node registry, to resolve targets against.
        clock: wall clock (seconds since the epoch).
        wake: called when something waits for the next group commit.
    """

    def __init__(
        self,
        config: Config,
        registry: Registry,
        clock: Callable[[], float] = time.time,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock
        self.wake = wake
        self.book = CommandBook(output_limit=config.output_limit)
        self.nc: bus.NATS | None = None
        self.js: Any = None
        self.counters: dict[str, int] = {}
        self._batch = Batch()
        self._consumers: set[str] = set()
        self._consumer_queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        #: committed commands waiting to be published, in serial order
        self._outgoing: asyncio.Queue[CommandRow] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None
        #: seconds between checks that the server still holds every node's consumer
        self.audit_every = _AUDIT_EVERY

    def __repr__(self) -> str:
        return f"<CommandService {self.book!r}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, nc: bus.NATS, store: Any) -> None:
        """Make sure the stream exists, pick up serials and open commands from the store.

        Open commands are re-published (in serial order) before anything new is accepted.

        Raises:
            StoreError: the store could not be read.
            BusUnavailable: JetStream did not answer.
        """
        self.nc = nc
        self.js = nc.jetstream(timeout=10.0)
        await self._ensure_stream()
        self.book.last_serial = await store.last_command_serial()
        now = self.clock()
        # Follow every unsettled command the stream may still hold (the next tick expires
        # the overdue); re-publish those the stream would drop a second copy of.
        for row, outcomes in await store.open_commands(now - _KEEP):
            command = TrackedCommand(row.serial, row.created, row.retire_after)
            for o in outcomes:
                fields = msgspec.structs.asdict(o)
                del fields["serial"]
                fields["state"] = CommandState(o.state)
                command.outcomes[o.node] = Outcome(**fields)
            self.book.track(command)
            if now - row.created < _DEDUP:
                await self._publish(row)
        self._worker = asyncio.create_task(self._consumer_loop(), name="consumers")
        self._publisher = asyncio.create_task(self._publish_loop(), name="publisher")
        for name, record in self.registry.nodes.items():
            if record.status in (NodeStatus.UP, NodeStatus.DOWN, NodeStatus.LEFT):
                self.node_joined(name)

    async def stop(self) -> None:
        """Publish what is committed (for a moment at most), stop creating consumers."""
        if self._publisher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outgoing.join(), _DRAIN)
        for task in (self._publisher, self._worker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _ensure_stream(self) -> None:
        config = StreamConfig(
            name=subjects.COMMAND_STREAM,
            subjects=[subjects.COMMANDS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=_KEEP,
            max_bytes=1 << 30,
            duplicate_window=_DEDUP,
            max_msg_size=self.config.max_command_bytes + 64 * 1024,
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

    # --- sending ------------------------------------------------------------------------

    def facts(self) -> dict[str, NodeFacts]:
        """What addressing needs of each node that can still receive commands."""
        out = {}
        for name, r in self.registry.nodes.items():
            if r.status == NodeStatus.REVOKED:
                continue
            out[name] = NodeFacts(
                labels=tuple(r.labels),
                interfaces=tuple(r.interfaces),
                sink=bool(r.attributes.get("sink")),
            )
        return out

    def accept(
        self, request: wire.CommandRequest, reply: str, via_execute: bool
    ) -> wire.CommandAccepted:
        """Resolve, number and queue a command for the next commit.

        Returns:
            What ``reply`` is sent once the command is on disk (its serial and nodes).

        Raises:
            UsageError: a malformed target or a bad kind or limit (nothing is recorded).
            Refused: no node matched, or EXECUTE came without the execute role.
        """
        self._check(request, via_execute)
        resolution = resolve(request.targets, self.facts())
        if not resolution.nodes:
            missing = ", ".join(resolution.unknown) or ", ".join(request.targets)
            raise Refused(
                f"no node matches {missing}: check the names with `corral nodes` "
                "(revoked nodes cannot be addressed)"
            )
        now = self.clock()
        command = self.book.issue(resolution.nodes, now, request.retire_after)
        body = self._body(request, command, resolution.nodes, resolution.broadcast)
        row = CommandRow(
            serial=command.serial,
            created=now,
            actor=request.actor,
            kind=request.kind,
            name=request.name,
            targets=list(request.targets),
            nodes=resolution.nodes,
            unknown=resolution.unknown,
            retire_after=request.retire_after,
            body=body,
        )
        self._batch.commands.append(row)
        if request.kind != "get":
            detail: dict[str, Any] = {
                "serial": command.serial,
                "kind": request.kind,
                "name": request.name,
                "nodes": resolution.nodes,
            }
            if request.kind == "shell":
                detail["cmd"] = request.args.get("cmd", "")
            if request.data:
                detail["bytes"] = len(request.data)
            self._batch.audit.append(
                AuditEntry(
                    at=now,
                    actor=request.actor or "unknown",
                    action=request.kind,
                    target=",".join(request.targets),
                    detail=detail,
                )
            )
        accepted = wire.CommandAccepted(
            serial=command.serial,
            created=now,
            nodes=resolution.nodes,
            unknown=resolution.unknown,
            broadcast=resolution.broadcast,
        )
        if reply:
            self._batch.replies.append((reply, wire.encode(accepted)))
        self.counters["commands"] = self.counters.get("commands", 0) + 1
        self.wake()
        return accepted

    def _check(self, request: wire.CommandRequest, via_execute: bool) -> None:
        if request.kind == "execute" and not via_execute:
            raise Refused(
                "EXECUTE must be sent on corral.ctl.execute, which only credentials with the "
                "execute role may use (the admin credential has it, operator.creds does not)"
            )
        if not subjects_ok(request.kind):
            raise UsageError(
                f"bad command kind {request.kind!r}: use command, shell, get, set, put, "
                "execute, or the name of a message type the nodes registered"
            )
        if request.timeout <= 0:
            raise UsageError(f"timeout must be more than 0 seconds, got {request.timeout}")
        if request.retire_after < 0:
            raise UsageError(f"retire_after must be 0 or more seconds, got {request.retire_after}")

    def _body(
        self,
        request: wire.CommandRequest,
        command: TrackedCommand,
        nodes: list[str],
        broadcast: bool,
    ) -> bytes:
        # Sent once to every node's consumer, the resolved list says who it is for: nodes
        # that left, or joined since, skip it. A file or script goes only to its targets.
        to_all = (broadcast or len(nodes) > _DIRECT_MAX) and not request.data
        only = tuple(nodes) if to_all else ()
        return wire.encode(
            wire.NodeCommand(
                serial=command.serial,
                kind=request.kind,
                name=request.name,
                args=request.args,
                data=request.data,
                timeout=request.timeout,
                created=command.created,
                retire_after=command.retire_after,
                actor=request.actor,
                to_all=to_all,
                only=only,
            )
        )

    # --- reports from nodes -------------------------------------------------------------

    def report(self, node: str, report: wire.CommandReport) -> None:
        """Apply a node's report on one of its commands."""
        try:
            state = CommandState(report.state)
        except ValueError:
            self._count("rejected.bad-state")
            log.warning("node %s reported unknown state %r", node, report.state)
            return
        try:
            outcome = self.book.report(
                report.serial,
                node,
                state,
                self.clock(),
                result=report.result,
                error=report.error,
                exit_code=report.exit_code,
                stdout=report.stdout,
                stderr=report.stderr,
            )
        except IllegalOutcome as exc:
            self._count("rejected.stale-outcome")
            log.debug("%s", exc)
            return
        if outcome is None:
            self._count("rejected.unknown-command")
            return
        self.wake()

    def tick(self) -> None:
        """Expire overdue outcomes and stop following old settled commands."""
        now = self.clock()
        nodes = self.registry.nodes
        if self.book.expire(now, lambda n: n in nodes and nodes[n].status == NodeStatus.UP):
            self.wake()
        self.book.forget(now, keep=300.0)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # --- group commit -------------------------------------------------------------------

    def take_batch(self) -> Batch:
        """Everything to write in the next transaction (call :meth:`restore` if it fails)."""
        batch, self._batch = self._batch, Batch()
        batch.outcomes = self.book.take_changes()
        return batch

    def restore(self, batch: Batch) -> None:
        """Put back a batch whose transaction failed, for the next attempt."""
        self._batch.commands[:0] = batch.commands
        self._batch.audit[:0] = batch.audit
        self._batch.replies[:0] = batch.replies
        self.book.restore_changes(batch.outcomes)

    async def committed(self, batch: Batch) -> None:
        """The batch is durable: answer senders, queue its commands, announce outcomes."""
        assert self.nc is not None
        for subject, data in batch.replies:
            await self.nc.publish(subject, data, headers=wire.HEADERS)
        for row in batch.commands:
            self._outgoing.put_nowait(row)
        by_serial: dict[int, list[wire.OutcomeView]] = {}
        for serial, outcome in batch.outcomes:
            by_serial.setdefault(serial, []).append(_view(serial, outcome))
        for serial, views in by_serial.items():
            update = wire.encode(wire.CommandUpdate(serial=serial, outcomes=views))
            await self.nc.publish(subjects.command_events(serial), update, headers=wire.HEADERS)

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

    # --- queries ------------------------------------------------------------------------

    def live_outcomes(self, serial: int) -> list[wire.OutcomeView] | None:
        """Outcomes of ``serial`` as the book has them now (fresher than the store)."""
        command = self.book.commands.get(serial)
        if command is None:
            return None
        return [_view(serial, o) for o in sorted(command.outcomes.values(), key=lambda o: o.node)]


def subjects_ok(kind: str) -> bool:
    """True if ``kind`` is a built-in kind or a name a node could register."""
    if kind in BUILTIN_KINDS:
        return True
    try:
        subjects.check_name(kind, "message type")
    except CorralError:
        return False
    return True
