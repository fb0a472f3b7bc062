"""The registry's flush as a unit of the store's writer: nodes, transitions, audit entries,
commands and their outcomes, idempotency keys, in one transaction.

The fast path writes each table with one ``executemany``. After a data failure
(:mod:`corral.store.writes`) the batch is cut into units of one record each, except a command,
which goes with the audit entries naming its serial: they are written together or refused
together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from sqlalchemy import Connection
from sqlalchemy.sql.dml import Insert

from corral.records import (
    AuditEntry,
    CommandRow,
    IdempotencyRow,
    NodeRecord,
    OutcomeRow,
    Transition,
)

from ._repairs import record_versions
from .commands import write_commands
from .idempotency import prune_keys, write_keys
from .schema import audit_log, node_transitions
from .writer import Unit
from .writes import Isolation, Written, isolate

__all__ = ["Batch"]

# Rows per executemany call: bounds the parameter list held at once, not round trips.
_BATCH = 1000

# One record, or a command with the audit entries naming its serial: (kind, record) pairs.
_Part = tuple[tuple[str, Any], ...]
_KINDS = ("nodes", "transitions", "audit", "commands", "outcomes", "keys")


def _repair(part: _Part, level: int, why: str) -> _Part | None:
    if len(part) != 1:
        return None  # a command with its audit entries: refused together
    ((kind, record),) = part
    versions = record_versions(kind, record, why)
    return ((kind, versions[level]),) if level < len(versions) else None


class Batch(msgspec.Struct, kw_only=True):
    """What one flush of the registry writes (see :meth:`SqlStore.commit`)."""

    nodes: Sequence[NodeRecord] = ()
    transitions: Sequence[Transition] = ()
    audit: Sequence[AuditEntry] = ()
    commands: Sequence[CommandRow] = ()
    outcomes: Sequence[OutcomeRow] = ()
    keys: Sequence[IdempotencyRow] = ()
    prune_keys_before: float | None = None
    #: id of a record copied for the writer's thread -> the record the caller gave, which
    #: refusals name
    originals: dict[int, Any] = {}

    def empty(self) -> bool:
        """Whether there is nothing to write."""
        return not (
            self.nodes or self.transitions or self.audit or self.commands or self.outcomes
        ) and not (self.keys or self.prune_keys_before is not None)

    def unit(self, upsert_nodes: Insert) -> Unit[Written]:
        """This batch as a unit of the writer.

        Args:
            upsert_nodes: The dialect's node upsert (built once per store).
        """

        def write(conn: Connection) -> Written:
            self._write(conn, upsert_nodes, self._kinds())
            self._prune(conn)
            return Written()

        def isolated(conn: Connection) -> Written:
            plan = Isolation(self._parts(), _repair)

            def write_parts(c: Connection, parts: list[_Part]) -> None:
                by_kind: dict[str, list[Any]] = {kind: [] for kind in _KINDS}
                for part in parts:
                    for kind, record in part:
                        by_kind[kind].append(record)
                self._write(c, upsert_nodes, by_kind)

            isolate(conn, plan, write_parts)
            self._prune(conn)
            return plan.result(
                lambda part: part[0][0],
                lambda part: self.originals.get(id(part[0][1]), part[0][1]),
            )

        return Unit(f"commit {len(self.nodes)} node(s)", write, isolated)

    def _kinds(self) -> dict[str, Sequence[Any]]:
        return dict(
            zip(
                _KINDS,
                (self.nodes, self.transitions, self.audit, self.commands, self.outcomes, self.keys),
                strict=True,
            )
        )

    def _prune(self, conn: Connection) -> None:
        if self.prune_keys_before is not None:
            prune_keys(conn, self.prune_keys_before)

    @staticmethod
    def _write(conn: Connection, upsert_nodes: Insert, rows: Mapping[str, Sequence[Any]]) -> None:
        asdict = msgspec.structs.asdict
        node_params = [asdict(row) for row in rows["nodes"]]
        for start in range(0, len(node_params), _BATCH):
            conn.execute(upsert_nodes, node_params[start : start + _BATCH])
        if rows["transitions"]:
            conn.execute(node_transitions.insert(), [asdict(row) for row in rows["transitions"]])
        if rows["audit"]:
            conn.execute(audit_log.insert(), [asdict(row) for row in rows["audit"]])
        if rows["commands"] or rows["outcomes"]:
            write_commands(conn, rows["commands"], rows["outcomes"])
        if rows["keys"]:
            write_keys(conn, rows["keys"])

    def _parts(self) -> list[_Part]:
        serials = {row.serial for row in self.commands}
        of_command: dict[int, list[AuditEntry]] = {}
        alone: list[AuditEntry] = []
        for entry in self.audit:
            serial = entry.detail.get("serial")
            if serial in serials:
                of_command.setdefault(serial, []).append(entry)
            else:
                alone.append(entry)
        parts: list[_Part] = [(("nodes", r),) for r in self.nodes]
        parts += [(("transitions", r),) for r in self.transitions]
        parts += [(("audit", r),) for r in alone]
        parts += [
            (("commands", r), *(("audit", a) for a in of_command.get(r.serial, ())))
            for r in self.commands
        ]
        parts += [(("outcomes", r),) for r in self.outcomes]
        parts += [(("keys", r),) for r in self.keys]
        return parts
