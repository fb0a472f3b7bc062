"""The controller's handlers of node and control messages on the bus: joins, heartbeats,
leaves, the node list, counters, agents and credential events.

Theory of operation: :meth:`NodeMessages.handler` wraps each handler: it parses the subject
(the sending node's name for ``corral.in.<node>.<verb>``), decodes and validates the body, and
answers anything malformed, oversized or of another protocol version with a coded error
before the handler sees it; a handler's own failure is answered too, and logged. Handlers
change the registry in memory and queue their replies on the registry's group commit
(:mod:`corral.controller.registry_commits`): a join is acknowledged only once its record is on
disk, so an accepted node survives ``kill -9`` of the controller.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from corral import bus, subjects, wire
from corral.config import Config
from corral.controller.command_api import bus_caller
from corral.controller.commands import CommandService
from corral.controller.leadership import Leadership
from corral.controller.registry_commits import RegistryCommits
from corral.core.registry import Refusal, Registry
from corral.core.text import check_join_text
from corral.errors import CorralError, Refused
from corral.records import AuditEntry, NodeRecord
from corral.states import NodeStatus

__all__ = ["Handler", "NodeMessages"]

log = logging.getLogger("corral.controller")

#: A handler: the message, the sending node's name (or ""), the decoded body.
Handler = Callable[[Any, str, Any], Awaitable[None]]


def _view(record: NodeRecord, behind: int = 0) -> wire.NodeView:
    fields = msgspec.structs.asdict(record)
    del fields["instance"]
    return wire.NodeView(**fields, behind=behind)


class NodeMessages:
    """What the leading controller answers on the bus about nodes.

    Args:
        config: Limits and timings (message size, heartbeat interval).
        registry: The node registry the handlers change.
        commands: The command service (serials nodes have applied, the leader's epoch).
        commits: The registry's group commit (transitions, audit entries, replies).
        counters: The controller's message counters.
        clock: Wall-clock source (seconds since the epoch).
        identity: The controller's id (in join replies and the node list).
        started: When the controller started (in its counters' reply).
    """

    def __init__(
        self,
        *,
        config: Config,
        registry: Registry,
        commands: CommandService,
        commits: RegistryCommits,
        counters: Counter[str],
        clock: Callable[[], float],
        identity: str,
        started: float,
    ) -> None:
        self.config = config
        self.registry = registry
        self.commands = commands
        self.commits = commits
        self.counters = counters
        self.clock = clock
        self.identity = identity
        self.started = started
        #: the bus, and which controller leads, once the controller has them
        self.nc: bus.NATS | None = None
        self.leadership: Leadership | None = None

    def __repr__(self) -> str:
        return f"<NodeMessages {self.identity[:8]}>"

    def subscriptions(self) -> dict[str, tuple[type[Any], Handler]]:
        """Each subject the leader serves, with its body's type and its handler."""
        return {
            subjects.node_in_wildcard("join"): (wire.Join, self.on_join),
            subjects.node_in_wildcard("hb"): (wire.Heartbeat, self.on_heartbeat),
            subjects.node_in_wildcard("leave"): (wire.Leave, self.on_leave),
            subjects.ctl("nodes"): (wire.NodesRequest, self.on_nodes),
            subjects.ctl("stats"): (wire.StatsRequest, self.on_stats),
            subjects.ctl("auth"): (wire.AuthEvent, self.on_auth),  # refused: no sender
            subjects.ctl_as("auth", "*"): (wire.AuthEvent, self.on_auth),
            subjects.ctl("agents"): (wire.AgentsRequest, self.on_agents),
        }

    async def reply(self, msg: Any, payload: msgspec.Struct) -> None:
        """Answer ``msg`` with ``payload`` (nothing if it wants no answer)."""
        if msg.reply:
            assert self.nc is not None
            await self.nc.publish(msg.reply, wire.encode(payload), headers=wire.HEADERS)

    async def reject(self, msg: Any, exc: CorralError) -> None:
        """Answer ``msg`` with ``exc`` as a coded error, count it and log it."""
        reply = wire.error_reply(exc)
        self.counters[f"rejected.{reply.code}"] += 1
        log.warning("message rejected", extra={"subject": msg.subject, "error": str(exc)})
        await self.reply(msg, reply)

    def handler(
        self,
        kind: type[Any],
        handle: Callable[[Any, str, Any], Awaitable[None]],
        limit: int | None = None,
    ) -> Callable[[Any], Awaitable[None]]:
        """Wrap ``handle(msg, node, body)``: parse the subject, decode and validate the body.

        Anything malformed, oversized or of another protocol version is answered with an
        error reply and counted before ``handle`` sees it. ``node`` is the sending node's
        name for ``corral.in.<node>.<verb>`` subjects, else empty.
        """

        async def receive(msg: Any) -> None:
            try:
                node = ""
                if subjects.is_node_in(msg.subject):
                    node = subjects.parse_node_in(msg.subject)[0]
                body = wire.decode(
                    msg.data, kind, msg.headers, limit=limit or self.config.max_message_bytes
                )
            except CorralError as exc:
                await self.reject(msg, exc)
                return
            try:
                await handle(msg, node, body)
            except CorralError as exc:
                await self.reject(msg, exc)
            except Exception as exc:  # a bug: answer, log it whole, keep serving
                log.exception("handler failed", extra={"subject": msg.subject})
                await self.reject(msg, Refused(f"internal error in the controller: {exc!r}"))

        return receive

    async def on_join(self, msg: Any, name: str, join: wire.Join) -> None:
        """A node joins (or joins again): check its text, record it, and acknowledge once
        its record is on disk, with the serials it must catch up from."""
        self.counters["join"] += 1
        check_join_text(
            join.labels, join.interfaces, join.attributes, join.host, join.version, join.instance
        )
        self.commands.applied(name, join.last_serial)  # before first_serial is computed
        if join.epoch > self.commands.epoch:
            self._behind(name, join.epoch)
        known = name in self.registry.nodes
        outcome = self.registry.join(name, join, self.clock())
        if isinstance(outcome, Refusal):
            self.counters[f"rejected.{outcome.code}"] += 1
            log.warning("join refused", extra={"node": name, "reason": outcome.reason})
            error = wire.ErrorReply(
                code=outcome.code, error=outcome.reason, retry_after=outcome.retry_after
            )
            await self.reply(msg, error)
            return
        self.commits.record(outcome)
        if msg.reply:
            # Acknowledge only once persisted: an accepted node survives kill -9.
            reply = wire.JoinReply(
                controller=self.identity,
                heartbeat_interval=self.config.heartbeat_interval,
                now=self.clock(),
                # Every command numbered from here on was resolved knowing this node.
                first_serial=0 if known else self.commands.book.last_serial + 1,
                last_serial=self.commands.stream.last_live,
                epoch=self.commands.epoch,
                report_batch=wire.MAX_BATCHED_REPORTS,
            )
            self.commits.after_commit(msg.reply, reply, node=name)

    def _behind(self, node: str, seen: int) -> None:
        """``node`` has seen a higher leader epoch (a restored store): see
        :meth:`Leadership.behind`, with a majority of the nodes up as the quorum."""
        if self.leadership is not None:
            up = sum(r.status == NodeStatus.UP for r in self.registry.nodes.values())
            self.leadership.behind(node, seen, up // 2 + 1)

    async def on_heartbeat(self, msg: Any, name: str, hb: wire.Heartbeat) -> None:
        """A node is alive: note the serial it applied and its host stats; a node instance
        this controller does not know is told to join again."""
        self.counters["heartbeat"] += 1
        self.commands.applied(name, hb.last_serial)
        if hb.epoch > self.commands.epoch:
            self._behind(name, hb.epoch)
        stats = msgspec.structs.asdict(hb.stats) if hb.stats is not None else None
        outcome = self.registry.heartbeat(name, hb.instance, hb.last_serial, self.clock(), stats)
        if outcome is None:
            assert self.nc is not None
            rejoin = wire.Rejoin(
                reason="controller does not know this node instance", epoch=self.commands.epoch
            )
            await self.nc.publish(
                subjects.node_out(name, "ctl"), wire.encode(rejoin), headers=wire.HEADERS
            )
        elif outcome:
            self.commits.record(outcome)

    async def on_leave(self, msg: Any, name: str, leave: wire.Leave) -> None:
        """A node leaves on purpose (LEFT), acknowledged once recorded."""
        self.commits.record(self.registry.leave(name, leave.instance, self.clock(), leave.reason))
        if msg.reply:
            self.commits.after_commit(msg.reply, wire.Ok(), node=name)

    async def on_nodes(self, msg: Any, _: str, __: wire.NodesRequest) -> None:
        """The node list, with how many commands each node is behind on."""
        behind = self.commands.book.behind()
        left = NodeStatus.LEFT  # a node that left on purpose is behind on nothing
        views = [_view(r, behind.get(r.name, 0) * (r.status != left)) for r in self.registry.all()]
        await self.reply(msg, wire.NodesReply(nodes=views, controller=self.identity))

    async def on_stats(self, msg: Any, _: str, __: wire.StatsRequest) -> None:
        """The controller's message counters and the command service's."""
        counters = dict(self.counters)
        for key, value in self.commands.counters.items():
            counters[f"commands.{key}"] = value
        reply = wire.StatsReply(controller=self.identity, started=self.started, counters=counters)
        await self.reply(msg, reply)

    async def on_agents(self, msg: Any, _: str, request: wire.AgentsRequest) -> None:
        """The live agents, for API clients (the controller gathers them from the bus)."""
        assert self.nc is not None
        found = await bus.gather_agents(self.nc, min(max(request.wait, 0.05), 5.0))
        await self.reply(msg, wire.AgentsReply(agents=found))

    async def on_auth(self, msg: Any, _: str, event: wire.AuthEvent) -> None:
        """An operator enrolled or revoked a node: audit it, and mark a revoked node.

        The actor is the credential the subject names; the ``actor`` the CLI reported
        (``$USER@host``) is kept as ``on_behalf_of``, labelled as claimed.
        """
        _, actor, role = bus_caller(msg.subject)
        now = self.clock()
        if event.action == "revoke":
            self.commits.record(self.registry.revoke(event.name, now))
        detail = {
            "keys": list(event.keys),
            "host": event.host,
            "pid": event.pid,
            "on_behalf_of": event.actor,  # what the CLI said: not verified
        }
        self.commits.audit(
            AuditEntry(
                at=now,
                actor=actor,
                action=event.action,
                target=event.name,
                detail=detail,
                role=role,
            )
        )
        if msg.reply:
            self.commits.after_commit(msg.reply, wire.Ok())
