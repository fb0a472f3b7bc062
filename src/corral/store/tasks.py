"""Task instances in the store: group-committed upserts, and paginated reads done in SQL.

The scheduler's service writes: :meth:`TaskTables.commit` hands every instance that changed
since its last commit to the store's one writer (:mod:`corral.store.writer`), which upserts
them (one ``executemany``) in the same transaction as whatever else is pending; an instance
the database refuses is isolated, not retried forever (:mod:`corral.store.writes`). Readers
(the HTTP API, the CLI through it) page with ``LIMIT``/``OFFSET`` and a ``COUNT``, never
loading more than one page; an out-of-range page is clamped to the last one (Pydra's
behaviour).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import JSON, Boolean, Connection, Select, func, select
from sqlalchemy.dialects import sqlite

from corral.core.taskstate import TaskInstance, TaskStatus
from corral.records import AuditEntry, IdempotencyRow

from ._errors import translate
from ._repairs import task_versions
from .idempotency import write_keys
from .interface import Page
from .schema import audit_log
from .schema import task_instances as t
from .writer import Tables, Unit
from .writes import Isolation, Written, isolate, upsert

__all__ = ["Page", "TaskTables"]

_COLUMNS = [t.c[name] for name in TaskInstance.__struct_fields__]
_BATCH = 2000


def _repair(row: dict[str, Any], level: int, why: str) -> dict[str, Any] | None:
    versions = task_versions(row, why)
    return versions[level] if level < len(versions) else None


_PLAIN, _JSON, _BOOL = 0, 1, 2


def _kind(type_: Any) -> int:
    """How a column's value goes to SQLite's driver: as it is, as JSON text, or as 0/1."""
    if isinstance(type_, JSON):
        return _JSON
    return _BOOL if isinstance(type_, Boolean) else _PLAIN


def _sqlite_value(value: Any, kind: int) -> Any:
    if kind == _JSON:
        return msgspec.json.encode(value).decode()
    if kind == _BOOL and value is not None:
        return int(bool(value))
    return value


def _instance(row: Any) -> TaskInstance:
    return TaskInstance(**row)


class TaskTables:
    """The ``task_instances`` table of a store (``store.tasks``).

    Args:
        store: The open store (its schema is migrated to head, so the table exists).
    """

    def __init__(self, store: Tables) -> None:
        self.store = store
        self._upsert = upsert(store.backend, t, "id")
        #: SQLite: the upsert's SQL, compiled once, and its columns in parameter order. Rows
        #: go to the driver as tuples: SQLAlchemy's per-row parameter processing was a
        #: quarter of the writer's time in a 10,000-task batch (docs/performance.md).
        self._sqlite_sql: str | None = None
        self._sqlite_columns: list[tuple[str, int]] = []
        if store.backend == "sqlite":
            names = [c.name for c in t.columns]
            compiled = self._upsert.compile(dialect=sqlite.dialect(), column_keys=names)
            self._sqlite_sql = str(compiled)
            self._sqlite_columns = [(n, _kind(t.c[n].type)) for n in compiled.positiontup or ()]

    def __repr__(self) -> str:
        return f"<TaskTables {self.store!r}>"

    async def commit(
        self, rows: Sequence[dict[str, Any]], extra: Sequence[IdempotencyRow | AuditEntry] = ()
    ) -> Written:
        """Insert or replace these instances (as dicts of their fields) in one transaction.

        An instance the database refuses for its data does not hold up the others (see
        :mod:`corral.store.writes`): it is stored with its text escaped, or else with its
        free text replaced by a note, or refused.

        Args:
            rows: The instances' fields.
            extra: What the calls that changed these instances leave with them, in the same
                transaction: first answers to keyed submissions, audit entries.

        Returns:
            The instances refused, and those stored repaired.

        Raises:
            TransientStoreError: A failure a retry may cure; nothing was written.
            StoreError: Another failure; nothing was written.
        """
        if not rows and not extra:
            return Written()
        rows = list(rows)
        keys = [r for r in extra if isinstance(r, IdempotencyRow)]
        audit = [msgspec.structs.asdict(r) for r in extra if isinstance(r, AuditEntry)]

        def write(conn: Connection) -> Written:
            self._write(conn, rows)
            self._write_extra(conn, keys, audit)
            return Written()

        def isolated(conn: Connection) -> Written:
            plan = Isolation(rows, _repair)
            isolate(conn, plan, self._write)
            self._write_extra(conn, keys, audit)
            return plan.result(lambda _: "task_instances")

        unit = Unit(f"write {len(rows)} task instance(s)", write, isolated)
        return await self.store.write(unit)

    def _write(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        sql, columns = self._sqlite_sql, self._sqlite_columns
        for start in range(0, len(rows), _BATCH):
            chunk = rows[start : start + _BATCH]
            if sql is None:
                conn.execute(self._upsert, list(chunk))
            else:  # what SQLAlchemy's bind processors would send, built here
                params = [tuple(_sqlite_value(r[n], k) for n, k in columns) for r in chunk]
                conn.exec_driver_sql(sql, params)

    @staticmethod
    def _write_extra(
        conn: Connection, keys: Sequence[IdempotencyRow], audit: Sequence[dict[str, Any]]
    ) -> None:
        write_keys(conn, keys)
        if audit:
            conn.execute(audit_log.insert(), list(audit))

    async def _all(self, query: Select[Any], what: str) -> list[TaskInstance]:
        with translate(what, self.store.masked_url):
            async with self.store.reader() as conn:
                return [_instance(row) for row in (await conn.execute(query)).mappings()]

    async def load_active(self) -> list[TaskInstance]:
        """Every unfinished instance (queued, assigned, running, cancel requested), oldest first.

        Raises:
            StoreError: The query failed.
        """
        active = [
            TaskStatus.QUEUED,
            TaskStatus.ASSIGNED,
            TaskStatus.RUNNING,
            TaskStatus.CANCEL_REQUESTED,
        ]
        query = select(*_COLUMNS).where(t.c.status.in_(active)).order_by(t.c.id)
        return await self._all(query, "load unfinished task instances")

    async def max_id(self) -> int:
        """The highest instance id stored (0 when none).

        Raises:
            StoreError: The query failed.
        """
        with translate("read the last task id", self.store.masked_url):
            async with self.store.reader() as conn:
                value = (await conn.execute(select(func.max(t.c.id)))).scalar_one_or_none()
        return int(value or 0)

    async def get(self, ident: int) -> TaskInstance | None:
        """One instance by id, or ``None``.

        Raises:
            StoreError: The query failed.
        """
        found = await self.get_many([ident])
        return found[0] if found else None

    async def get_many(self, ids: Iterable[int]) -> list[TaskInstance]:
        """The instances with these ids that exist, by id.

        Raises:
            StoreError: The query failed.
        """
        wanted = list(ids)
        if not wanted:
            return []
        query = select(*_COLUMNS).where(t.c.id.in_(wanted)).order_by(t.c.id)
        return await self._all(query, "read task instances")

    async def children(self, parent: int) -> list[TaskInstance]:
        """The instances ``parent``'s maps created (every attempt's), by id.

        Raises:
            StoreError: The query failed.
        """
        query = select(*_COLUMNS).where(t.c.parent == parent).order_by(t.c.id)
        return await self._all(query, "read a task's subtasks")

    async def page(
        self,
        *,
        page: int = 1,
        per_page: int = 10,
        key: str | None = None,
        statuses: Sequence[str] = (),
        toplevel: bool = False,
        newest_first: bool = True,
    ) -> Page:
        """One page of instances, filtered in SQL.

        Args:
            page: Page number from 1; past the last page gives the last page.
            per_page: Instances per page (at least 1).
            key: Only instances of this task key.
            statuses: Only instances in these statuses (all when empty).
            toplevel: Leave out subtasks (instances created by a ``map``).
            newest_first: Order by id descending (history) or ascending (queue order).

        Returns:
            The page, with its number clamped into range and the neighbours' numbers.

        Raises:
            StoreError: The query failed.
        """
        per_page = max(1, per_page)
        where = []
        if key is not None:
            where.append(t.c.key == key)
        if statuses:
            where.append(t.c.status.in_(list(statuses)))
        if toplevel:
            where.append(t.c.parent.is_(None))
        with translate("page task instances", self.store.masked_url):
            async with self.store.reader() as conn:
                count = select(func.count()).select_from(t).where(*where)
                total = int((await conn.execute(count)).scalar_one())
                pages = max(1, math.ceil(total / per_page))
                page = min(max(1, page), pages)
                order = t.c.id.desc() if newest_first else t.c.id
                query = (
                    select(*_COLUMNS)
                    .where(*where)
                    .order_by(order)
                    .limit(per_page)
                    .offset((page - 1) * per_page)
                )
                items = [_instance(row) for row in (await conn.execute(query)).mappings()]
        return Page(
            items=items,
            page=page,
            pages=pages,
            per_page=per_page,
            total=total,
            prev=page - 1 if page > 1 else None,
            next=page + 1 if page < pages else None,
        )

    async def keys(self) -> list[str]:
        """Every task key that has instances in the store.

        Raises:
            StoreError: The query failed.
        """
        with translate("read task keys", self.store.masked_url):
            async with self.store.reader() as conn:
                result = await conn.execute(select(t.c.key).distinct().order_by(t.c.key))
                return [str(k) for k in result.scalars()]
