"""The node registry and its liveness state machine, without I/O.

Theory of operation: the controller feeds this class events — a join, a heartbeat, a leave, a
revocation, and the passing of time (:meth:`Registry.expire`) — each with the current time, and
gets back decisions: accept or refuse, "ask that node to join again", and the status
transitions to record. Everything that affects a node's status lives here; the table
:data:`TRANSITIONS` is the whole state machine and an illegal move raises.

A node is identified by its name (from the subject it published on, which its credential
restricts) and by the *instance* id its process picked at start. Two processes with one name
are told apart by instance: while the holder is live, another instance is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from corral.errors import IllegalTransition
from corral.records import NodeRecord, Transition
from corral.states import NodeStatus
from corral.wire import Join

__all__ = ["TRANSITIONS", "IllegalTransition", "NodeStatus", "Refusal", "Registry"]

S = NodeStatus
#: Every legal (old, new) move. ``None`` is "not in the registry".
TRANSITIONS: frozenset[tuple[NodeStatus | None, NodeStatus]] = frozenset(
    {
        (None, S.UP),
        (S.UP, S.DOWN),
        (S.UP, S.LEFT),
        (S.UP, S.REVOKED),
        (S.DOWN, S.UP),
        (S.DOWN, S.REVOKED),
        (S.LEFT, S.UP),
        (S.LEFT, S.REVOKED),
        (S.REVOKED, S.UP),  # re-enrolled with a new credential
    }
)


#: What a join updates in a node's record: everything it says about itself.
_JOIN_FIELDS = tuple(f for f in Join.__struct_fields__ if f in NodeRecord.__struct_fields__)


class Refusal(msgspec.Struct, frozen=True):
    """A join the registry refused, with the reason to send back.

    ``code`` is ``duplicate-name`` (final) or ``retry`` (ask again after ``retry_after``).
    """

    code: str
    reason: str
    retry_after: float = 0.0


class Registry:
    """Every known node, its status, and the rules that move it.

    Args:
        down_after: seconds of silence after which an UP node is DOWN.
    """

    def __init__(self, down_after: float = 3.0) -> None:
        self.down_after = down_after
        self.nodes: dict[str, NodeRecord] = {}
        # Names whose record changed since the last take_dirty(): persisted in batches.
        self._dirty: set[str] = set()
        # Contested names: (newcomer instance, name) -> when it first asked. The holder keeps
        # the name only by speaking after that moment; a crashed holder cannot.
        self._contests: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        up = sum(1 for n in self.nodes.values() if n.status == S.UP)
        return f"<Registry nodes={len(self.nodes)} up={up} down_after={self.down_after}>"

    def __len__(self) -> int:
        return len(self.nodes)

    def load(self, records: Iterable[NodeRecord], now: float) -> None:
        """Adopt persisted records after a controller (re)start.

        Nodes recorded UP keep that status and get a full ``down_after`` from ``now`` to prove
        they are alive: the controller's own absence must not mark them DOWN.
        """
        for record in records:
            if record.status == S.UP:
                record.last_seen = max(record.last_seen, now)
            self.nodes[record.name] = record

    def _move(self, node: NodeRecord, new: NodeStatus, now: float, reason: str) -> Transition:
        old = NodeStatus(node.status) if node.status else None
        if (old, new) not in TRANSITIONS:
            raise IllegalTransition(f"node {node.name} cannot go from {old} to {new} (a bug)")
        node.status, node.since = new, now
        self._dirty.add(node.name)
        return Transition(node.name, old or "", new, now, reason)

    def join(self, name: str, info: Join, now: float) -> Refusal | list[Transition]:
        """A node asks to join.

        Returns:
            A :class:`Refusal` if another live instance holds the name, else the transitions
            (empty when an UP node re-joins with the same instance).
        """
        node = self.nodes.get(name)
        if node is not None and node.instance != info.instance and self._live(node, now):
            asked = self._contests.setdefault((info.instance, name), now)
            if node.last_seen <= asked:
                # The holder has not spoken since the newcomer asked: it may have crashed a
                # moment ago (a node restarted quickly) or be a record restored from the store.
                # Let it prove itself within down_after.
                wait = self.down_after - (now - node.last_seen)
                return Refusal(
                    "retry",
                    f"node name {name!r} is held by instance {node.instance[:8]} (pid "
                    f"{node.pid}), silent for {now - node.last_seen:.1f}s; waiting up to "
                    f"{wait:.1f}s for it to speak before giving the name away",
                    retry_after=max(wait, 0.0) + 0.1,
                )
            del self._contests[(info.instance, name)]
            return Refusal(
                "duplicate-name",
                f"node name {name!r} is held by a live node on host {node.host or '?'} "
                f"(pid {node.pid}, instance {node.instance[:8]}); stop that node or choose "
                "another --name",
            )
        if node is None:
            node = NodeRecord(name=name, status="", since=now, last_seen=now, joined_at=now)
            self.nodes[name] = node
        restarted = node.instance != info.instance
        self._contests.pop((info.instance, name), None)
        for key in _JOIN_FIELDS:
            setattr(node, key, getattr(info, key))
        node.last_seen = now
        node.joined_at = now if restarted or node.status != S.UP else node.joined_at
        self._dirty.add(name)
        if node.status == S.UP:
            return []
        return [self._move(node, S.UP, now, "joined")]

    def _live(self, node: NodeRecord, now: float) -> bool:
        return node.status == S.UP and now - node.last_seen <= self.down_after

    def heartbeat(
        self,
        name: str,
        instance: str,
        last_serial: int,
        now: float,
        stats: dict[str, float] | None = None,
    ) -> list[Transition] | None:
        """A heartbeat arrived (with the host's ``stats``, if the node sends them).

        Returns:
            None if the registry does not know this instance (the node must join again),
            else the transitions it caused (DOWN -> UP when a silent node comes back).
        """
        node = self.nodes.get(name)
        if node is None or node.instance != instance or node.status in (S.REVOKED, S.LEFT):
            return None
        node.last_seen = now
        node.last_serial = last_serial
        if stats is not None:
            node.stats = stats
        if node.status == S.DOWN:
            return [self._move(node, S.UP, now, "heartbeat resumed")]
        return []

    def leave(self, name: str, instance: str, now: float, reason: str) -> list[Transition]:
        """A node says it is stopping. Ignored if the instance is not the current holder."""
        node = self.nodes.get(name)
        if node is None or node.instance != instance or node.status != S.UP:
            return []
        return [self._move(node, S.LEFT, now, reason)]

    def revoke(self, name: str, now: float) -> list[Transition]:
        """The node's credential was revoked."""
        node = self.nodes.get(name)
        if node is None or node.status == S.REVOKED:
            return []
        return [self._move(node, S.REVOKED, now, "credential revoked")]

    def expire(self, now: float) -> list[Transition]:
        """Mark DOWN every UP node silent for longer than ``down_after``."""
        cutoff = now - self.down_after
        # Forget contests whose newcomer stopped asking.
        for key in [k for k, t in self._contests.items() if t < cutoff - self.down_after]:
            del self._contests[key]
        return [
            self._move(node, S.DOWN, now, f"silent for {now - node.last_seen:.1f}s")
            for node in self.nodes.values()
            if node.status == S.UP and node.last_seen < cutoff
        ]

    def left_before(self, cutoff: float) -> list[str]:
        """Nodes LEFT since before ``cutoff`` (epoch seconds): due to be forgotten
        (``left_expiry``).

        Returns:
            Their names, sorted.
        """
        return sorted(
            n.name for n in self.nodes.values() if n.status == S.LEFT and n.since < cutoff
        )

    def forget(self, name: str) -> NodeRecord | None:
        """Drop node ``name`` from the registry (``node_delete``); its next write is dropped.

        Returns:
            The record forgotten, or None if there was none.
        """
        self._dirty.discard(name)
        return self.nodes.pop(name, None)

    def take_dirty(self) -> list[NodeRecord]:
        """Records changed (joined, moved) since the last call, for persisting."""
        names, self._dirty = self._dirty, set()
        return [self.nodes[n] for n in names if n in self.nodes]

    def mark_dirty(self, names: Iterable[str]) -> None:
        """Mark records for persisting again (after a failed write)."""
        self._dirty.update(names)

    def all(self) -> list[NodeRecord]:
        """Every record, ordered by name."""
        return [self.nodes[n] for n in sorted(self.nodes)]
