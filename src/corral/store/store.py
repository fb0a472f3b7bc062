"""The SQL store: nodes, their transitions, the audit log and a key/value ``meta`` table.

SQLite (the default, one file) or PostgreSQL (given a DSN), through SQLAlchemy Core on an
async driver. :meth:`Store.open` migrates the schema to head before anything else, so a
``Store`` always sees the tables it expects. :meth:`Store.commit` is the controller's hot
path: one transaction per flush, each table written with a single ``executemany``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import msgspec
from sqlalchemy import Table, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Insert

from corral.errors import StoreError
from corral.records import (
    AuditEntry,
    CommandRow,
    IdempotencyRow,
    NodeRecord,
    OutcomeRow,
    Transition,
)

from ._engine import async_engine, migrate
from ._errors import FOREIGN, WRITE_FAILURES, driver_error, is_transient, open_error, translate
from ._repairs import record_versions
from ._url import mask_password, normalize_url
from .commands import CommandQueries, write_commands
from .idempotency import prune_keys, write_keys
from .schema import audit_log, meta, node_transitions, nodes
from .writes import Isolation, Written, isolate

__all__ = ["Store", "normalize_url"]

# Rows per executemany call: bounds the parameter list held at once, not round trips.
_BATCH = 1000

_NODE_COLUMNS = [nodes.c[name] for name in NodeRecord.__struct_fields__]
_TRANSITION_COLUMNS = [node_transitions.c[name] for name in Transition.__struct_fields__]
_AUDIT_COLUMNS = [audit_log.c[name] for name in AuditEntry.__struct_fields__]


def _upsert(dialect: str, table: Table, key: str) -> Insert:
    """``INSERT … ON CONFLICT (key) DO UPDATE`` setting every other column."""
    stmt = sqlite_insert(table) if dialect == "sqlite" else pg_insert(table)
    changes = {c.name: stmt.excluded[c.name] for c in table.columns if c.name != key}
    return stmt.on_conflict_do_update(index_elements=[key], set_=changes)


def _node(row: Any) -> NodeRecord:
    # JSON arrays come back as lists; the struct wants tuples.
    values = dict(row)
    values["labels"] = tuple(values["labels"])
    values["interfaces"] = tuple(values["interfaces"])
    return NodeRecord(**values)


# One record, or a command with the audit entries naming its serial: (kind, record) pairs.
_Unit = tuple[tuple[str, Any], ...]
_KINDS = ("nodes", "transitions", "audit", "commands", "outcomes", "keys")


def _units(
    nodes: Sequence[NodeRecord],
    transitions: Sequence[Transition],
    audit: Sequence[AuditEntry],
    commands: Sequence[CommandRow],
    outcomes: Sequence[OutcomeRow],
    keys: Sequence[IdempotencyRow],
) -> list[_Unit]:
    serials = {row.serial for row in commands}
    of_command: dict[int, list[AuditEntry]] = {}
    alone: list[AuditEntry] = []
    for entry in audit:
        serial = entry.detail.get("serial")
        if serial in serials:
            of_command.setdefault(serial, []).append(entry)
        else:
            alone.append(entry)
    units: list[_Unit] = [(("nodes", r),) for r in nodes]
    units += [(("transitions", r),) for r in transitions]
    units += [(("audit", r),) for r in alone]
    units += [
        (("commands", r), *(("audit", a) for a in of_command.get(r.serial, ()))) for r in commands
    ]
    units += [(("outcomes", r),) for r in outcomes]
    units += [(("keys", r),) for r in keys]
    return units


def _repair(unit: _Unit, level: int, why: str) -> _Unit | None:
    if len(unit) != 1:
        return None  # a command with its audit entries: refused together
    ((kind, record),) = unit
    versions = record_versions(kind, record, why)
    return ((kind, versions[level]),) if level < len(versions) else None


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise StoreError(f"limit must be zero or more, got {limit}: pass how many rows to return")


class Store(CommandQueries):
    """Persistent state of the fleet in SQLite or PostgreSQL.

    Build one with :meth:`Store.open`, not the constructor. Every method raises
    :class:`~corral.errors.StoreError` and nothing else on failure. Use it as an async
    context manager, or call :meth:`close` when done.
    """

    def __init__(self, engine: AsyncEngine, url: str) -> None:
        """Wrap an engine whose database is already migrated (use :meth:`open` instead).

        Args:
            engine: The async engine.
            url: Its normalized URL.
        """
        self._engine = engine
        self._url = url
        self._masked = mask_password(url)
        self._closed = False
        dialect = engine.dialect.name
        self._upsert_nodes = _upsert(dialect, nodes, "name")
        self._upsert_meta = _upsert(dialect, meta, "key")

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect to a store, creating and migrating its schema as needed.

        Opening an already migrated database again, even while it is open, is safe; on
        PostgreSQL an advisory lock also serialises concurrent first-time migrations.

        Args:
            url: A SQLite file path or URL, or a PostgreSQL DSN (see :func:`normalize_url`).

        Returns:
            The open store.

        Raises:
            StoreError: The URL is not accepted, the database cannot be reached or created,
                or its schema cannot be migrated.
        """
        url = normalize_url(url)
        masked = mask_password(url)
        try:
            # Built first (it connects lazily) so a missing or sync-only driver is reported
            # before anything touches the database.
            engine = async_engine(url)
        except FOREIGN as exc:
            raise driver_error(exc, masked) from exc
        try:
            await asyncio.to_thread(migrate, url)
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except BaseException as exc:  # incl. cancellation: never leak the engine
            await engine.dispose()
            if isinstance(exc, FOREIGN):
                raise open_error(exc, url, masked) from exc
            raise
        return cls(engine, url)

    @property
    def engine(self) -> AsyncEngine:
        """The async engine, for stores of other concepts (``corral.store.tasks``)."""
        self._usable("use the store")
        return self._engine

    @property
    def url(self) -> str:
        """The normalized URL (with its password, if any)."""
        return self._url

    @property
    def masked_url(self) -> str:
        """The URL with any password hidden, for error messages."""
        return self._masked

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    async def close(self) -> None:
        """Close every pooled connection. Closing twice is harmless.

        Raises:
            StoreError: A connection could not be closed cleanly.
        """
        if self._closed:
            return
        self._closed = True
        with translate("close the store", self._masked):
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        """Return the store itself."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Store [{self.backend}, {self._masked!r}, {state}]>"

    def _usable(self, action: str) -> None:
        if self._closed:
            raise StoreError(f"cannot {action}: the store is closed; open it again with Store.open")

    async def commit(
        self,
        nodes: Sequence[NodeRecord] = (),
        transitions: Sequence[Transition] = (),
        audit: Sequence[AuditEntry] = (),
        commands: Sequence[CommandRow] = (),
        outcomes: Sequence[OutcomeRow] = (),
        idempotency: Sequence[IdempotencyRow] = (),
        prune_keys_before: float | None = None,
    ) -> Written:
        """Write a batch in one transaction: upsert nodes, append transitions and audit rows,
        insert new commands and upsert changed command outcomes.

        A record the database refuses for its data never holds up the others (see
        :mod:`corral.store.writes`): it is stored repaired (its NUL escaped...) or refused,
        and the rest of the batch is written. A command and the audit entries that name its
        serial in their ``detail`` are written together or not at all. A node already stored
        is replaced whole; if a name appears twice in ``nodes`` the later row wins.

        Args:
            nodes: Node rows to insert or replace, keyed by name.
            transitions: Status transitions to append.
            audit: Audit entries to append.
            commands: New commands (each gets a ``pending`` outcome per resolved node).
            outcomes: Command outcomes to insert or replace, keyed by serial and node.
            idempotency: First answers to keyed submissions (the commands they answer are
                in the same transaction).
            prune_keys_before: Also delete idempotency keys written before this time.

        Returns:
            The records refused, and those stored repaired (each with the database's reason).

        Raises:
            TransientStoreError: The database failed for a reason a retry may cure; nothing
                was written.
            StoreError: The store is closed, or another failure; nothing was written.
        """
        if not (nodes or transitions or audit or commands or outcomes or idempotency):
            if prune_keys_before is None:
                return Written()
        self._usable("commit")
        with translate(f"commit {len(nodes)} node(s)", self._masked):
            try:
                async with self._engine.begin() as conn:
                    await self._write(
                        conn, nodes, transitions, audit, commands, outcomes, idempotency
                    )
                    await self._prune(conn, prune_keys_before)
                return Written()
            except WRITE_FAILURES as exc:
                if is_transient(exc):
                    raise
            # A record's data was refused: write again, isolating it (one transaction).
            units = _units(nodes, transitions, audit, commands, outcomes, idempotency)
            plan = Isolation(units, _repair)
            async with self._engine.begin() as conn:
                if self.backend == "sqlite":
                    # pysqlite opens its transaction lazily, at the first INSERT: without an
                    # explicit BEGIN, releasing the first savepoint would commit on its own.
                    await conn.exec_driver_sql("BEGIN")
                await isolate(conn, plan, self._write_units)
                await self._prune(conn, prune_keys_before)
        return plan.result(lambda unit: unit[0][0], lambda unit: unit[0][1])

    async def _write(
        self,
        conn: AsyncConnection,
        nodes: Sequence[NodeRecord],
        transitions: Sequence[Transition],
        audit: Sequence[AuditEntry],
        commands: Sequence[CommandRow],
        outcomes: Sequence[OutcomeRow],
        keys: Sequence[IdempotencyRow] = (),
    ) -> None:
        asdict = msgspec.structs.asdict
        node_params = [asdict(row) for row in nodes]
        for start in range(0, len(node_params), _BATCH):
            await conn.execute(self._upsert_nodes, node_params[start : start + _BATCH])
        if transitions:
            await conn.execute(node_transitions.insert(), [asdict(row) for row in transitions])
        if audit:
            await conn.execute(audit_log.insert(), [asdict(row) for row in audit])
        if commands or outcomes:
            await write_commands(conn, commands, outcomes)
        if keys:
            await write_keys(conn, keys)

    @staticmethod
    async def _prune(conn: AsyncConnection, before: float | None) -> None:
        if before is not None:
            await prune_keys(conn, before)

    async def _write_units(self, conn: AsyncConnection, units: list[_Unit]) -> None:
        by_kind: dict[str, list[Any]] = {kind: [] for kind in _KINDS}
        for unit in units:
            for kind, record in unit:
                by_kind[kind].append(record)
        await self._write(conn, *(by_kind[kind] for kind in _KINDS))

    async def load_nodes(self) -> list[NodeRecord]:
        """Every stored node, ordered by name.

        Returns:
            The nodes.

        Raises:
            StoreError: The query failed.
        """
        self._usable("load nodes")
        with translate("load nodes", self._masked):
            async with self._engine.connect() as conn:
                result = await conn.execute(select(*_NODE_COLUMNS).order_by(nodes.c.name))
                return [_node(row) for row in result.mappings()]

    async def get_node(self, name: str) -> NodeRecord | None:
        """One node by name.

        Args:
            name: The node's name.

        Returns:
            The node, or ``None`` if none is stored under that name.

        Raises:
            StoreError: The query failed.
        """
        self._usable("get a node")
        with translate(f"get node {name!r}", self._masked):
            async with self._engine.connect() as conn:
                query = select(*_NODE_COLUMNS).where(nodes.c.name == name)
                row = (await conn.execute(query)).mappings().first()
        return None if row is None else _node(row)

    async def delete_node(self, name: str) -> bool:
        """Forget a node. Its transitions and audit entries are kept as history.

        Args:
            name: The node's name.

        Returns:
            ``True`` if a node was deleted, ``False`` if none had that name.

        Raises:
            StoreError: The statement failed.
        """
        self._usable("delete a node")
        with translate(f"delete node {name!r}", self._masked):
            async with self._engine.begin() as conn:
                result = await conn.execute(delete(nodes).where(nodes.c.name == name))
        return result.rowcount > 0

    async def transitions(self, node: str | None = None, limit: int = 100) -> list[Transition]:
        """Recent status transitions, newest first.

        Args:
            node: Only this node's transitions; all nodes' if ``None``.
            limit: At most this many rows.

        Returns:
            The transitions, ordered by time then insertion order, newest first.

        Raises:
            StoreError: ``limit`` is negative, or the query failed.
        """
        _check_limit(limit)
        self._usable("read transitions")
        t = node_transitions
        query = select(*_TRANSITION_COLUMNS).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if node is not None:
            query = query.where(t.c.node == node)
        with translate("read transitions", self._masked):
            async with self._engine.connect() as conn:
                return [Transition(**row) for row in (await conn.execute(query)).mappings()]

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """Recent audit entries, newest first.

        Args:
            limit: At most this many rows.

        Returns:
            The entries, ordered by time then insertion order, newest first.

        Raises:
            StoreError: ``limit`` is negative, or the query failed.
        """
        _check_limit(limit)
        self._usable("read the audit log")
        a = audit_log
        query = select(*_AUDIT_COLUMNS).order_by(a.c.at.desc(), a.c.id.desc()).limit(limit)
        with translate("read the audit log", self._masked):
            async with self._engine.connect() as conn:
                return [AuditEntry(**row) for row in (await conn.execute(query)).mappings()]

    async def get_meta(self, key: str) -> str | None:
        """Read a value from the ``meta`` key/value table.

        Args:
            key: The key.

        Returns:
            Its value, or ``None`` if it was never set.

        Raises:
            StoreError: The query failed.
        """
        self._usable("read meta")
        with translate(f"read meta key {key!r}", self._masked):
            async with self._engine.connect() as conn:
                query = select(meta.c.value).where(meta.c.key == key)
                value: str | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def set_meta(self, key: str, value: str) -> None:
        """Write a value to the ``meta`` key/value table, replacing any previous one.

        Args:
            key: The key.
            value: The value.

        Raises:
            StoreError: The statement failed.
        """
        self._usable("write meta")
        with translate(f"write meta key {key!r}", self._masked):
            async with self._engine.begin() as conn:
                await conn.execute(self._upsert_meta, {"key": key, "value": value})
