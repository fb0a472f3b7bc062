"""The command router: addressed commands with serials, outcomes, catch-up (SEER controller).

Theory of operation: an operator's :class:`~corral.wire.CommandRequest` is resolved against
the registry (:mod:`corral.core.addressing`), given the next serial by the
:class:`~corral.core.commands.CommandBook`, and written to the store in the controller's next
group commit. Only then is the sender answered and the command published live, by core
NATS (:mod:`corral.controller.command_stream`): once on ``corral.live.cmd``, which the server
fans out to every node, with the body when it goes to many nodes (with the resolved list
unless it is ``*``, so each node keeps what is addressed to it), as a mark naming its targets
when it goes to a few (the body then goes to each one's own subject). Each live message names
the serial published before it: a node that sees a gap asks for its commands in it on
``corral.in.<node>.catchup`` (:meth:`CommandService.catch_up`, paged, only its own). The
command then goes into the JetStream stream ``CORRAL_CMDS``, the durable log; the stream drops
a second copy with the same serial (its message id), and nodes skip serials they applied, so
re-publishing the open commands after a controller crash runs nothing twice.

Nodes report each command's progress on ``corral.in.<node>.out``; the book moves the outcome,
the next commit persists it, and the change is published on ``corral.events.cmd.<serial>``.
Once a final report is on disk the node is told so (until then it re-sends the report now and
then), in batches (:mod:`corral.core.confirmations`): the serial of a command every target of
which has reported rides on the next live message, and the rest go in one
:class:`~corral.wire.ReportAck` per node every :data:`CONFIRM_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from corral import bus, subjects, wire
from corral.config import Config
from corral.controller.command_stream import DEDUP, KEEP, CommandStream
from corral.core.addressing import NodeFacts, attribute_text, resolve
from corral.core.commands import CommandBook, CommandState, Outcome, TrackedCommand
from corral.core.confirmations import Confirmations
from corral.core.registry import NodeStatus, Registry
from corral.core.text import check_command_text
from corral.errors import CorralError, IllegalTransition, Refused, UsageError
from corral.records import AuditEntry, CommandRow, IdempotencyRow, OutcomeRow

if TYPE_CHECKING:
    from corral.controller.idempotency import Stamp

__all__ = ["BUILTIN_KINDS", "CONFIRM_EVERY", "CommandService", "counts"]

log = logging.getLogger("corral.controller.commands")

#: Message types every node understands; anything else must be a handler the node registered.
BUILTIN_KINDS = frozenset({"command", "shell", "get", "set", "put", "execute"})
#: Commands addressed to at most this many nodes go to each node's own subject; larger
#: sets go once to every node with the list (one publish the server fans out).
_DIRECT_MAX = 4
#: Seconds a stopping controller waits for committed commands to be published (the next
#: start re-publishes any left).
_DRAIN = 2.0
#: The highest applied serial a node may claim (a larger one is refused as bogus): serials
#: stay exact in every JSON client and far from the store's 64-bit limit.
MAX_SERIAL = 2**53
#: Heartbeat intervals a controller whose command stream is empty waits before it issues
#: its first serial: every live node says in that time which serial it applied.
SETTLE_BEATS = 2.5
#: Most seconds between prunings of expired idempotency keys (half the window if shorter).
_PRUNE_EVERY = 60.0
#: Seconds between rounds of confirmations of final reports on disk (settled commands to
#: every node if no live command carried them, the others one message per node; nodes
#: re-send a report unconfirmed after two seconds).
CONFIRM_EVERY = 0.2


def _view(serial: int, o: Outcome) -> wire.OutcomeView:
    # Field by field: dataclasses.asdict deep-copies, a quarter of the controller's CPU in a
    # broadcast to 1,000 nodes (results are never changed in place: sharing them is safe).
    return wire.OutcomeView(
        node=o.node,
        state=o.state,
        at=o.at,
        result=o.result,
        error=o.error,
        exit_code=o.exit_code,
        stdout=o.stdout,
        stderr=o.stderr,
    )


def _row(serial: int, o: Outcome) -> OutcomeRow:
    return OutcomeRow(
        serial=serial,
        node=o.node,
        state=o.state.value,
        at=o.at,
        result=o.result,
        error=o.error,
        exit_code=o.exit_code,
        stdout=o.stdout,
        stderr=o.stderr,
    )


def counts(outcomes: list[wire.OutcomeView]) -> dict[str, int]:
    """How many outcomes are in each state."""
    out: dict[str, int] = {}
    for o in outcomes:
        state = str(o.state)  # the plain word: these counts are printed and sent as JSON
        out[state] = out.get(state, 0) + 1
    return out


@dataclass
class Batch:
    """What one group commit writes for commands, and what is sent once it is durable."""

    commands: list[CommandRow] = field(default_factory=list)
    outcomes: list[tuple[int, Outcome]] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    #: serial -> (reply subject, accepted message) to answer senders with
    replies: dict[int, tuple[str, bytes]] = field(default_factory=dict)
    #: serial -> in-process sender (the HTTP API) waiting for its command to be on disk
    waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    #: idempotency keys of the commands, written in the same transaction
    keys: list[IdempotencyRow] = field(default_factory=list)
    #: (node, serial) of final reports to confirm once this batch is durable
    confirms: list[tuple[str, int]] = field(default_factory=list)
    #: also prune idempotency keys older than this (epoch seconds)
    prune_keys_before: float | None = None

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
        #: what the book follows, as stored (without bodies): detail views need no store read
        self.rows: dict[int, CommandRow] = {}
        self.nc: bus.NATS | None = None
        self.counters: dict[str, int] = {}
        self._batch = Batch()
        self._pruned = clock()
        #: the publisher: live, then the durable stream
        self.stream = CommandStream(config, clock)
        #: the fencing epoch carried by live commands (set by the high-availability layer)
        self.epoch = 0
        #: final reports on disk, not yet confirmed to their nodes
        self.confirmations = Confirmations(self._targets)
        self._confirmer: asyncio.Task[None] | None = None
        self.store: Any = None
        #: each node's addressing facts, with what they were made from (see :meth:`facts`)
        self._facts: dict[str, tuple[tuple[object, ...], NodeFacts]] = {}
        #: the store's highest serial at start (a node ahead of it means a restored store)
        self.stored_serial = 0
        #: the leader's fencing epoch (set when this controller takes the lease, issue #13)
        self.epoch = 0
        #: set once serials may be issued: nothing a node applied can be above them
        self.settled = asyncio.Event()
        #: when serials may be issued at the latest (set at start)
        self._settle_at = 0.0

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
        self.store = store
        await self.stream.open(nc)
        self.stored_serial = self.book.last_serial = await store.last_command_serial()
        logged = await self.stream.last_serial()
        self.applied("", logged)
        self._settle_at = self.clock() + SETTLE_BEATS * self.config.heartbeat_interval
        if logged:
            # The log bounds what any node applied: serials may be issued at once.
            self.settled.set()
        now = self.clock()
        # Live serials continue after the stream's last; if it cannot say, after the store's
        # (open commands below it are then not re-published live: the announcements name
        # the last serial, and nodes that missed them fetch them).
        self.stream.start(logged or self.stored_serial)
        # Follow every unsettled command the stream may still hold (the next tick expires
        # the overdue); re-publish those the stream would drop a second copy of.
        for row, outcomes in await store.open_commands(now - KEEP):
            command = TrackedCommand(row.serial, row.created, row.retire_after)
            for o in outcomes:
                fields = msgspec.structs.asdict(o)
                del fields["serial"]
                fields["state"] = CommandState(o.state)
                command.outcomes[o.node] = Outcome(**fields)
            self.book.track(command)
            self.rows[row.serial] = msgspec.structs.replace(row, body=b"")
            # Those below the stream's last serial are in it (published in serial order).
            if now - row.created < DEDUP and row.serial >= logged:
                await self.stream.send(row, self.epoch)
        await self.stream.forget_consumers()
        self._confirmer = asyncio.create_task(self._confirm_loop(), name="report-confirms")

    async def stop(self) -> None:
        """Publish what is committed (for a moment at most), confirm what is on disk."""
        await self.stream.stop(_DRAIN)
        if self._confirmer is not None:
            self._confirmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._confirmer
            await self._confirm()

    # --- serials after a restore -------------------------------------------------------

    def applied(self, node: str, serial: int) -> None:
        """Node ``node`` (``""``: the command stream) has applied up to ``serial``.

        Serials continue above it. A serial above the store's highest means the store was
        restored from a backup or replaced: logged loudly, and counted. A claim above
        :data:`MAX_SERIAL` is bogus: ignored, logged and counted.

        Args:
            node: the node that said so in its join or heartbeat (from the subject, so from
                its credential), or ``""`` for the last command in the command stream.
            serial: the highest serial it applied.
        """
        if serial > MAX_SERIAL:
            self._count("serials.refused-claim")
            log.warning(
                "node %s claims it applied serial %d, above any serial corral issues (%d): ignored",
                node,
                serial,
                MAX_SERIAL,
            )
            return
        if not self.book.continue_above(serial):
            return
        self._count("serials.ahead-of-store")
        if node:
            what = f"node {node} has applied serial {serial}"
        else:
            what = f"the command stream holds serial {serial}"
        log.warning(
            "%s but the store's highest is %d: the store was restored or replaced; serials "
            "continue from %d",
            what,
            self.stored_serial,
            serial + 1,
            extra={"node": node, "serial": serial, "stored": self.stored_serial},
        )

    async def wait_settled(self) -> None:
        """Return once serials may be issued: at once, except just after a start on an
        empty command stream, when every live node's next heartbeat says what it applied."""
        if self.settled.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), max(0.0, self._settle_at - self.clock()))
        self.settled.set()

    # --- sending ------------------------------------------------------------------------

    def facts(self) -> dict[str, NodeFacts]:
        """What addressing needs of each node that can still receive commands.

        A node's facts are made again only when its record's labels, interfaces, attributes
        or status changed (a join or an edit assigns new objects; nothing mutates them in
        place): rebuilding a thousand of them for every command was 15 % of the controller's
        CPU in a burst of broadcasts.
        """
        out = {}
        cache = self._facts
        for name, r in self.registry.nodes.items():
            if r.status == NodeStatus.REVOKED:
                continue
            cached = cache.get(name)
            if cached is not None:
                (labels, interfaces, attributes, status), known = cached
                if (
                    labels is r.labels
                    and interfaces is r.interfaces
                    and attributes is r.attributes
                    and status == r.status
                ):
                    out[name] = known
                    continue
            facts = NodeFacts(
                labels=tuple(r.labels),
                interfaces=tuple(r.interfaces),
                sink=bool(r.attributes.get("sink")),
                attributes={k: attribute_text(v) for k, v in r.attributes.items()},
                left=r.status == NodeStatus.LEFT,
            )
            cache[name] = ((r.labels, r.interfaces, r.attributes, r.status), facts)
            out[name] = facts
        if len(cache) > len(out):
            for name in cache.keys() - out.keys():
                del cache[name]
        return out

    async def accept_durably(
        self,
        request: wire.CommandRequest,
        via_execute: bool,
        *,
        role: str = "",
        claimed: str = "",
        stamp: Stamp | None = None,
    ) -> wire.CommandAccepted:
        """:meth:`accept`, then wait until the command is on disk (for in-process senders).

        Args:
            request: The command, its ``actor`` set by the controller.
            via_execute: It came the EXECUTE way (the execute role was checked).
            role: The actor's role, for the audit log.
            claimed: An actor the client named itself (kept apart, labelled as claimed).
            stamp: An idempotency :class:`~corral.controller.idempotency.Stamp`: its row,
                with the answer, is written in the same transaction as the command.

        Raises:
            UsageError, Refused: as :meth:`accept`.
        """
        await self.wait_settled()
        accepted = self.accept(request, "", via_execute, role=role, claimed=claimed)
        if stamp is not None:
            self._batch.keys.append(stamp.row(accepted))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.waiters[accepted.serial] = waiter
        self.wake()
        await waiter
        return accepted

    def accept(
        self,
        request: wire.CommandRequest,
        reply: str,
        via_execute: bool,
        *,
        role: str = "",
        claimed: str = "",
    ) -> wire.CommandAccepted:
        """Resolve, number and queue a command for the next commit.

        ``request.actor`` is who the audit log names: the caller sets it from the credential,
        token or session that made the call. ``role`` is that actor's role; ``claimed`` an
        actor the client named itself, recorded only as ``on_behalf_of``.

        Returns:
            What ``reply`` is sent once the command is on disk (its serial and nodes).

        Raises:
            UsageError: a malformed target or a bad kind or limit (nothing is recorded).
            Refused: no node matched, or EXECUTE came without the execute role.
        """
        request = self.check(request, via_execute)
        resolution = resolve(request.targets, self.facts())
        if not resolution.nodes:
            missing = ", ".join(resolution.unknown) or ", ".join(request.targets)
            raise Refused(
                f"no node matches {missing}: check the names with `corral nodes` "
                "(revoked nodes cannot be addressed)"
            )
        now = self.clock()
        retire_after = request.retire_after
        assert retire_after is not None  # check() filled it in
        command = self.book.issue(resolution.nodes, now, retire_after)
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
            retire_after=retire_after,
            body=body,
        )
        self._batch.commands.append(row)
        self.rows[row.serial] = msgspec.structs.replace(row, body=b"")
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
            if claimed:
                detail["on_behalf_of"] = claimed  # what the client said: not verified
            self._batch.audit.append(
                AuditEntry(
                    at=now,
                    actor=request.actor or "unknown",
                    action=request.kind,
                    target=",".join(request.targets),
                    detail=detail,
                    role=role,
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
            self._batch.replies[command.serial] = (reply, wire.encode(accepted))
        self.counters["commands"] = self.counters.get("commands", 0) + 1
        self.wake()
        return accepted

    def check(self, request: wire.CommandRequest, via_execute: bool) -> wire.CommandRequest:
        """Refuse a malformed command, whichever way it came (bus, HTTP, dashboard).

        Args:
            request: the command as sent.
            via_execute: it came the EXECUTE way (the execute role was checked).

        Returns:
            ``request`` with what it left out filled in: ``retire_after`` from the
            controller's ``retire_after`` setting.

        Raises:
            UsageError: no targets, a malformed one, a bad kind, timeout or retire window,
                or data over ``max_command_bytes``.
            Refused: EXECUTE came without the execute role.
        """
        if request.kind == "execute" and not via_execute:
            raise Refused(
                "EXECUTE must be sent on corral.ctl.execute (the admin credential may, "
                "operator.creds may not), with execute_command over HTTP or from the "
                "dashboard, and only with the execute role"
            )
        if not request.targets:
            raise UsageError(
                "say which nodes: a name, a glob like web-*, label:NAME, attr:KEY=VALUE or *"
            )
        limit = self.config.max_command_bytes
        if len(request.data) > limit:
            raise UsageError(
                f"data of {len(request.data)} bytes exceeds max_command_bytes ({limit}): "
                "send less, or raise max_command_bytes in the controller's configuration"
            )
        check_command_text(request.targets, request.kind, request.name, request.args)
        if not subjects_ok(request.kind):
            raise UsageError(
                f"bad command kind {request.kind!r}: use command, shell, get, set, put, "
                "execute, or the name of a message type the nodes registered"
            )
        if request.timeout <= 0:
            raise UsageError(f"timeout must be more than 0 seconds, got {request.timeout}")
        if request.retire_after is None:
            return msgspec.structs.replace(request, retire_after=self.config.retire_after)
        if request.retire_after < 0:
            raise UsageError(f"retire_after must be 0 or more seconds, got {request.retire_after}")
        return request

    def _body(
        self,
        request: wire.CommandRequest,
        command: TrackedCommand,
        nodes: list[str],
        broadcast: bool,
    ) -> bytes:
        # Sent once to every node (live), the resolved list says who it is for: nodes
        # that left, or joined since, skip it. A file or script goes only to its targets.
        to_all = (broadcast or len(nodes) > _DIRECT_MAX) and not request.data
        # Every node, '*': no list (a thousand names decoded by a thousand nodes is a
        # million strings); a node that joined since knows it from its first serial.
        only = tuple(nodes) if to_all and not broadcast else ()
        # '*' passed over the nodes that left: one that comes back skips it.
        skip = tuple(
            sorted(n for n, r in self.registry.nodes.items() if r.status == NodeStatus.LEFT)
            if to_all and broadcast
            else ()
        )
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
                skip=skip,
            )
        )

    # --- reports from nodes -------------------------------------------------------------

    def report(self, node: str, report: wire.CommandReport) -> None:
        """Apply a node's report on one of its commands; a final one is confirmed to the
        node once it is on disk (by the next :data:`CONFIRM_EVERY`)."""
        state = report.state  # a state that does not exist was refused when decoded
        if state.last_word:
            # Confirmed once the batch it joins is durable, whatever follows: the node
            # stops re-sending it.
            self._batch.confirms.append((node, report.serial))
            self.wake()
        if self.book.stranger(report.serial, node):
            self._count("rejected.not-target")
            targets = sorted(self.book.commands[report.serial].outcomes)
            log.warning(
                "command report refused: node %s reported %s on command #%d, which was sent "
                "to %s only",
                node,
                state,
                report.serial,
                ", ".join(targets[:10]) + (" ..." if len(targets) > 10 else ""),
                extra={"node": node, "serial": report.serial},
            )
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
        except IllegalTransition as exc:
            command = self.book.commands[report.serial]
            if command.outcomes[node].state == state:
                self._count("resent")  # a final report sent again before its confirmation
                return
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
        if not self.settled.is_set() and now >= self._settle_at:
            self.settled.set()
        nodes = self.registry.nodes
        if self.book.expire(now, lambda n: n in nodes and nodes[n].status == NodeStatus.UP):
            self.wake()
        forgotten = self.book.forget(now, keep=300.0)
        for serial in forgotten:
            self.rows.pop(serial, None)
        self.confirmations.forget(forgotten)
        if now - self._pruned >= min(_PRUNE_EVERY, self.config.idempotency_window / 2):
            # Expired idempotency keys go with the next group commit.
            self._pruned = now
            self._batch.prune_keys_before = now - self.config.idempotency_window
            self.wake()

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
        self._batch.replies = {**batch.replies, **self._batch.replies}
        self._batch.waiters = {**batch.waiters, **self._batch.waiters}
        self._batch.keys[:0] = batch.keys
        self._batch.confirms[:0] = batch.confirms
        if batch.prune_keys_before is not None and self._batch.prune_keys_before is None:
            self._batch.prune_keys_before = batch.prune_keys_before
        self.book.restore_changes(batch.outcomes)

    async def refuse(self, batch: Batch, refused: dict[int, CorralError]) -> None:
        """Drop commands of ``batch`` that will not be stored, and tell their senders why.

        The serials stay used (serials never go back); nothing is published.

        Args:
            batch: The batch that holds them (its rows, audit entries, replies, waiters).
            refused: serial -> the error to answer its sender with.
        """
        if not refused:
            return
        batch.commands = [row for row in batch.commands if row.serial not in refused]
        batch.audit = [a for a in batch.audit if a.detail.get("serial") not in refused]
        for serial, error in refused.items():
            log.error("command #%d not stored: %s", serial, error)
            self._count("refused.store")
            self.rows.pop(serial, None)
            self.book.commands.pop(serial, None)
            waiter = batch.waiters.pop(serial, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
            reply = batch.replies.pop(serial, None)
            if reply is not None and self.nc is not None:
                answer = wire.error_reply(error)
                await self.nc.publish(reply[0], wire.encode(answer), headers=wire.HEADERS)

    async def committed(self, batch: Batch) -> None:
        """The batch is durable: answer senders, queue its commands, announce outcomes."""
        assert self.nc is not None
        for subject, data in batch.replies.values():
            await self.nc.publish(subject, data, headers=wire.HEADERS)
        for waiter in batch.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self.confirmations.durable(batch.confirms, batch.outcomes)
        for row in batch.commands:
            settled = self.confirmations.settled()
            if not await self.stream.send(row, self.epoch, settled):
                self.confirmations.settled_again(settled)
        by_serial: dict[int, list[wire.OutcomeView]] = {}
        for serial, outcome in batch.outcomes:
            by_serial.setdefault(serial, []).append(_view(serial, outcome))
        for serial, views in by_serial.items():
            update = wire.encode(wire.CommandUpdate(serial=serial, outcomes=views))
            await self.nc.publish(subjects.command_events(serial), update, headers=wire.HEADERS)

    async def _confirm_loop(self) -> None:
        while True:
            await asyncio.sleep(CONFIRM_EVERY)
            try:
                await self._confirm()
            except Exception:  # a bus hiccup: the nodes re-send, the next round confirms
                log.exception("confirming reports failed")

    async def _confirm(self) -> None:
        """Tell the nodes which final reports are on disk: the settled commands to every
        node at once, the others one message per node."""
        if self.nc is None:
            return
        if settled := self.confirmations.settled():
            ack = wire.encode(wire.ReportAck(serials=settled, epoch=self.epoch))
            await self.nc.publish(subjects.LIVE_COMMANDS, ack)
        for node, serials in self.confirmations.due().items():
            ack = wire.encode(wire.ReportAck(serials=serials, epoch=self.epoch))
            await self.nc.publish(subjects.report_acks(node), ack)

    def _targets(self, serial: int) -> int | None:
        command = self.book.commands.get(serial)
        return None if command is None else len(command.outcomes)

    # --- catch-up -----------------------------------------------------------------------

    async def catch_up(self, node: str, ask: wire.CatchUp) -> wire.CatchUpReply:
        """Node ``node``'s commands with serials in ``(ask.after, ask.upto]`` (one page;
        see :meth:`CommandStream.catch_up`), counted.

        Raises:
            Refused: the range is empty, negative or beyond the last serial published.
            StoreError: the store could not be read.
        """
        try:
            reply = await self.stream.catch_up(node, ask, self.store)
        except Refused:
            self._count("catchup.refused")
            raise
        self._count("catchup")
        return reply

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
