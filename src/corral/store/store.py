"""The SQL store: nodes, their transitions, the audit log and a key/value ``meta`` table.

SQLite (the default, one file) or PostgreSQL (given a DSN), through SQLAlchemy Core.
:meth:`SqlStore.open` migrates the schema to head before anything else, so a store always
sees the tables it expects. Reads run on an async engine; every write goes through the
store's one writer (:mod:`corral.store.writer`), a thread that group-commits what every caller
submitted. :meth:`SqlStore.commit` is the controller's hot path: one unit per flush, each
table written with a single ``executemany``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import msgspec
from sqlalchemy import Connection, delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from corral.errors import NotLeader, StoreError
from corral.records import (
    AuditEntry,
    CommandRow,
    IdempotencyRow,
    NodeRecord,
    OutcomeRow,
    Transition,
)

from ._engine import async_engine, migrate
from ._errors import FOREIGN, driver_error, open_error, translate
from ._fsync import DEFAULT_FSYNC_INTERVAL
from ._url import mask_password, normalize_url
from .auth import AuthTables
from .batch import Batch
from .commands import CommandQueries
from .idempotency import find_key, recent_keys
from .interface import NodePage
from .lease import LeaseTable, fence_check
from .schema import audit_log, meta, node_transitions, nodes
from .tasks import TaskTables
from .writer import Unit, Writer
from .writes import Written, upsert

__all__ = ["SqlStore", "normalize_url"]

R = TypeVar("R")

# A node's live stats are not stored (the only field of NodeRecord without a column).
_NODE_COLUMNS = [nodes.c[name] for name in NodeRecord.__struct_fields__ if name in nodes.c]
_TRANSITION_COLUMNS = [node_transitions.c[name] for name in Transition.__struct_fields__]
_AUDIT_COLUMNS = [audit_log.c[name] for name in AuditEntry.__struct_fields__]


def _node(row: Any) -> NodeRecord:
    # JSON arrays come back as lists; the struct wants tuples.
    values = dict(row)
    values["labels"] = tuple(values["labels"])
    values["interfaces"] = tuple(values["interfaces"])
    return NodeRecord(**values)


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise StoreError(f"limit must be zero or more, got {limit}: pass how many rows to return")


class SqlStore(CommandQueries):
    """The :class:`~corral.store.Store` on SQLite or PostgreSQL.

    Build one with :meth:`open`, not the constructor. Every method raises
    :class:`~corral.errors.StoreError` and nothing else on failure. Use it as an async
    context manager, or call :meth:`close` when done.
    """

    def __init__(self, engine: AsyncEngine, url: str, fsync_interval: float = 0.0) -> None:
        """Wrap an engine whose database is already migrated (use :meth:`open` instead).

        Args:
            engine: The async engine (for reads).
            url: Its normalized URL.
            fsync_interval: See :meth:`open`.
        """
        self._engine = engine
        self._url = url
        self._masked = mask_password(url)
        self._closed = False
        dialect = engine.dialect.name
        self._upsert_nodes = upsert(dialect, nodes, "name")
        self._upsert_meta = upsert(dialect, meta, "key")
        self._writer = Writer(url, self._masked, fsync_interval)
        self._lease = LeaseTable(url, self._masked)
        #: task instances
        self.tasks = TaskTables(self)
        #: API tokens and dashboard users
        self.auth = AuthTables(self)

    @classmethod
    async def open(cls, url: str, fsync_interval: float = DEFAULT_FSYNC_INTERVAL) -> SqlStore:
        """Connect to a store, creating and migrating its schema as needed.

        Opening an already migrated database again, even while it is open, is safe; on
        PostgreSQL an advisory lock also serialises concurrent first-time migrations.

        Args:
            url: A SQLite file path or URL, or a PostgreSQL DSN (see :func:`normalize_url`).
            fsync_interval: On SQLite, most seconds between a commit and its fsync: a write
                is answered once the operating system has it (it survives ``kill -9`` of
                any process) and reaches the disk within this; 0 fsyncs every commit before
                answering (it survives power loss too). See :mod:`corral.store._fsync`.

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
            return cls(engine, url, fsync_interval)
        except BaseException as exc:  # incl. cancellation: never leak the engine
            await engine.dispose()
            if isinstance(exc, FOREIGN):
                raise open_error(exc, url, masked) from exc
            raise

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

    @property
    def lease(self) -> LeaseTable:
        """The leader's lease and the controllers' rows (on a connection of their own)."""
        return self._lease

    def set_fence(
        self, holder: str, epoch: int, on_fenced: Callable[[NotLeader], None] | None
    ) -> None:
        """Make every later write conditional on ``holder`` holding the lease at ``epoch``
        (see :mod:`corral.store.lease`); ``epoch`` -1 refuses every write (a standby).

        Args:
            holder: This controller's id.
            epoch: The epoch it holds the lease at, or -1.
            on_fenced: Called on this event loop with the refusal when the fence refused a
                write (the controller steps down).
        """
        loop = asyncio.get_running_loop()

        def fence(conn: Connection) -> None:
            fence_check(conn, holder, epoch)

        def fenced(exc: NotLeader) -> None:
            if on_fenced is not None:
                loop.call_soon_threadsafe(on_fenced, exc)

        self._writer.on_fenced = fenced
        # SQLite: the OS lock on the file (corral.store.lock) already keeps it to one
        # controller, so a leader's transactions skip the check (it cost ~1 ms a commit).
        self._writer.fence = None if self.backend == "sqlite" and epoch >= 0 else fence

    @property
    def writer(self) -> Writer:
        """The store's one writer (its counters tell how many transactions it committed)."""
        return self._writer

    async def close(self) -> None:
        """Write what is pending, then close every connection. Closing twice is harmless.

        Raises:
            StoreError: A connection could not be closed cleanly.
        """
        if self._closed:
            return
        self._closed = True
        with translate("close the store", self._masked):
            await self._writer.close()
            await self._lease.close()
            await self._engine.dispose()

    async def __aenter__(self) -> SqlStore:
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
        return f"<SqlStore [{self.backend}, {self._masked!r}, {state}]>"

    def _usable(self, action: str) -> None:
        if self._closed:
            raise StoreError(f"cannot {action}: the store is closed; open it again with open_store")

    # --- the one writer, and the reads beside it ------------------------------------------

    async def write(self, unit: Unit[R]) -> R:
        """Write ``unit`` through the store's one writer (see :mod:`corral.store.writer`).

        Raises:
            TransientStoreError: A failure a retry may cure; nothing of it was written.
            StoreError: The store refused it (nothing of it was written), or is closed.
        """
        self._usable(unit.what)
        return await self._writer.write(unit)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (never for writes: those go through :meth:`write`)."""
        self._usable("read the store")
        async with self._engine.connect() as conn:
            yield conn

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
        is replaced whole; if a name appears twice in ``nodes`` the later row wins. The batch
        shares its transaction with whatever else the writer has pending.

        Args:
            nodes: Node rows to insert or replace, keyed by name (copied at once: the
                caller may go on changing them).
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
        # Copied here, on the caller's loop: the registry goes on changing its records while
        # the writer's thread writes them.
        copies = [msgspec.structs.replace(n) for n in nodes]
        batch = Batch(
            nodes=copies,
            originals={id(c): n for c, n in zip(copies, nodes, strict=True)},
            transitions=list(transitions),
            audit=list(audit),
            commands=list(commands),
            outcomes=list(outcomes),
            keys=list(idempotency),
            prune_keys_before=prune_keys_before,
        )
        if batch.empty():
            return Written()
        return await self.write(batch.unit(self._upsert_nodes))

    async def load_nodes(self) -> list[NodeRecord]:
        """Every stored node, ordered by name.

        Raises:
            StoreError: The query failed.
        """
        with translate("load nodes", self._masked):
            async with self.reader() as conn:
                result = await conn.execute(select(*_NODE_COLUMNS).order_by(nodes.c.name))
                return [_node(row) for row in result.mappings()]

    async def node_page(self, page: int = 1, per_page: int = 25) -> NodePage:
        """One page of the stored nodes, by name; past the last page gives the last page.

        Raises:
            StoreError: The query failed.
        """
        per_page = max(1, per_page)
        with translate("page nodes", self._masked):
            async with self.reader() as conn:
                count = select(func.count()).select_from(nodes)
                total = int((await conn.execute(count)).scalar_one())
                pages = max(1, math.ceil(total / per_page))
                page = min(max(1, page), pages)
                query = (
                    select(*_NODE_COLUMNS)
                    .order_by(nodes.c.name)
                    .limit(per_page)
                    .offset((page - 1) * per_page)
                )
                items = [_node(row) for row in (await conn.execute(query)).mappings()]
        return NodePage(items=items, page=page, pages=pages, per_page=per_page, total=total)

    async def get_node(self, name: str) -> NodeRecord | None:
        """One node by name, or ``None`` if none is stored under that name.

        Raises:
            StoreError: The query failed.
        """
        with translate(f"get node {name!r}", self._masked):
            async with self.reader() as conn:
                query = select(*_NODE_COLUMNS).where(nodes.c.name == name)
                row = (await conn.execute(query)).mappings().first()
        return None if row is None else _node(row)

    async def delete_node(self, name: str) -> bool:
        """Forget a node. Its transitions and audit entries are kept as history.

        Returns:
            ``True`` if a node was deleted, ``False`` if none had that name.

        Raises:
            StoreError: The statement failed.
        """

        def write(conn: Connection) -> bool:
            return bool(conn.execute(delete(nodes).where(nodes.c.name == name)).rowcount > 0)

        return await self.write(Unit(f"delete node {name!r}", write))

    async def transitions(self, node: str | None = None, limit: int = 100) -> list[Transition]:
        """Recent status transitions, newest first (by time, then insertion order).

        Args:
            node: Only this node's transitions; all nodes' if ``None``.
            limit: At most this many rows.

        Raises:
            StoreError: ``limit`` is negative, or the query failed.
        """
        _check_limit(limit)
        t = node_transitions
        query = select(*_TRANSITION_COLUMNS).order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        if node is not None:
            query = query.where(t.c.node == node)
        with translate("read transitions", self._masked):
            async with self.reader() as conn:
                return [Transition(**row) for row in (await conn.execute(query)).mappings()]

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """Recent audit entries, newest first (by time, then insertion order).

        Raises:
            StoreError: ``limit`` is negative, or the query failed.
        """
        _check_limit(limit)
        a = audit_log
        query = select(*_AUDIT_COLUMNS).order_by(a.c.at.desc(), a.c.id.desc()).limit(limit)
        with translate("read the audit log", self._masked):
            async with self.reader() as conn:
                return [AuditEntry(**row) for row in (await conn.execute(query)).mappings()]

    async def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` key/value table, or ``None`` if it was never set.

        Raises:
            StoreError: The query failed.
        """
        with translate(f"read meta key {key!r}", self._masked):
            async with self.reader() as conn:
                query = select(meta.c.value).where(meta.c.key == key)
                value: str | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def set_meta(self, key: str, value: str) -> None:
        """Write a value to the ``meta`` key/value table, replacing any previous one.

        Raises:
            StoreError: The statement failed.
        """

        def write(conn: Connection) -> None:
            conn.execute(self._upsert_meta, {"key": key, "value": value})

        await self.write(Unit(f"write meta key {key!r}", write))

    async def find_key(self, caller: str, key: str, since: float) -> IdempotencyRow | None:
        """The stored answer to ``caller``'s idempotency ``key`` if written at ``since`` or
        later (see :mod:`corral.store.idempotency`).

        Raises:
            StoreError: The query failed.
        """
        return await find_key(self, caller, key, since)

    async def recent_keys(self, since: float, limit: int) -> list[tuple[str, str]] | None:
        """The ``(caller, key)`` of every idempotency key written at ``since`` or later, or
        ``None`` when there are more than ``limit``.

        Raises:
            StoreError: The query failed.
        """
        return await recent_keys(self, since, limit)
