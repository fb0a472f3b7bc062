"""Task instances in the store: group-committed upserts, and paginated reads done in SQL.

The scheduler's service is the only writer: :meth:`TaskStore.commit` upserts every instance
that changed since the last commit in one transaction (one ``executemany``); an instance the
database refuses is isolated, not retried forever (:mod:`corral.store.writes`). Readers (the HTTP
API, the CLI through it) page with ``LIMIT``/``OFFSET`` and a ``COUNT``, never loading more
than one page; an out-of-range page is clamped to the last one (Pydra's behaviour).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, Select, create_engine, func, pool, select
from sqlalchemy.ext.asyncio import AsyncConnection

from corral.core.taskstate import TaskInstance, TaskStatus
from corral.records import AuditEntry, IdempotencyRow

from ._engine import _engine_options, _listen
from ._errors import WRITE_FAILURES, is_transient, translate
from ._repairs import task_versions
from ._url import sync_url
from .idempotency import write_keys
from .schema import audit_log
from .schema import task_instances as t
from .store import Store, _upsert
from .writes import Isolation, Written, isolate, isolate_sync

__all__ = ["Page", "TaskStore"]

_COLUMNS = [t.c[name] for name in TaskInstance.__struct_fields__]
_BATCH = 2000


class Page(msgspec.Struct, kw_only=True):
    """One page of instances, numbered from 1, with where the neighbours are."""

    items: list[TaskInstance]
    page: int
    pages: int
    per_page: int
    total: int
    prev: int | None = None
    next: int | None = None


def _repair(row: dict[str, Any], level: int, why: str) -> dict[str, Any] | None:
    versions = task_versions(row, why)
    return versions[level] if level < len(versions) else None


def _instance(row: Any) -> TaskInstance:
    return TaskInstance(**row)


class TaskStore:
    """The ``task_instances`` table of a :class:`~corral.store.Store`.

    Args:
        store: An open store (its schema is migrated to head, so the table exists).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._upsert = _upsert(store.backend, t, "id")
        # SQLite: commits run whole in one thread of their own on a sync connection (one
        # thread hop per commit instead of one per statement through aiosqlite).
        self._sync: Engine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        if store.backend == "sqlite":
            self._sync = create_engine(
                sync_url(store.url),
                poolclass=pool.StaticPool,
                connect_args={"check_same_thread": False},
                **_engine_options(store.url),
            )
            _listen(self._sync)
            self._thread = concurrent.futures.ThreadPoolExecutor(1, "corral-task-store")

    def close(self) -> None:
        """Close the commit thread's connection (the store itself stays open)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self._sync is not None:
            self._sync.dispose()

    def __repr__(self) -> str:
        return f"<TaskStore {self.store!r}>"

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
        keys = [r for r in extra if isinstance(r, IdempotencyRow)]
        audit = [msgspec.structs.asdict(r) for r in extra if isinstance(r, AuditEntry)]
        with translate(f"write {len(rows)} task instance(s)", self.store.masked_url):
            if self._sync is not None:
                # Always in the store's own thread, never inline on the event loop: the
                # controller's group commit may hold SQLite's write lock on this loop, and
                # a commit waiting for it here would stop the loop that is to release it.
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    self._thread, self._commit_sync, rows, keys, audit
                )
            try:
                async with self.store.engine.begin() as conn:
                    await self._write(conn, rows)
                    await self._write_extra(conn, keys, audit)
                return Written()
            except WRITE_FAILURES as exc:
                if is_transient(exc):
                    raise
            plan = Isolation(rows, _repair)
            async with self.store.engine.begin() as conn:
                await isolate(conn, plan, self._write)
                await self._write_extra(conn, keys, audit)
            return plan.result(lambda _: "task_instances")

    async def _write(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _BATCH):
            await conn.execute(self._upsert, list(rows[start : start + _BATCH]))

    @staticmethod
    async def _write_extra(
        conn: AsyncConnection, keys: Sequence[IdempotencyRow], audit: Sequence[dict[str, Any]]
    ) -> None:
        if keys:
            await write_keys(conn, keys)
        if audit:
            await conn.execute(audit_log.insert(), list(audit))

    def _write_sync(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(rows), _BATCH):
            conn.execute(self._upsert, list(rows[start : start + _BATCH]))

    @staticmethod
    def _write_extra_sync(
        conn: Connection, keys: Sequence[IdempotencyRow], audit: Sequence[dict[str, Any]]
    ) -> None:
        write_keys(conn, keys)
        if audit:
            conn.execute(audit_log.insert(), list(audit))

    def _commit_sync(
        self,
        rows: Sequence[dict[str, Any]],
        keys: Sequence[IdempotencyRow] = (),
        audit: Sequence[dict[str, Any]] = (),
    ) -> Written:
        assert self._sync is not None
        try:
            with self._sync.begin() as conn:
                self._write_sync(conn, rows)
                self._write_extra_sync(conn, keys, audit)
            return Written()
        except WRITE_FAILURES as exc:
            if is_transient(exc):
                raise
        plan = Isolation(rows, _repair)
        with self._sync.begin() as conn:
            # pysqlite begins lazily: without this, the first savepoint would be the
            # transaction and its release a commit of its own.
            conn.exec_driver_sql("BEGIN")
            isolate_sync(conn, plan, self._write_sync)
            self._write_extra_sync(conn, keys, audit)
        return plan.result(lambda _: "task_instances")

    async def _all(self, query: Select[Any], what: str) -> list[TaskInstance]:
        with translate(what, self.store.masked_url):
            async with self.store.engine.connect() as conn:
                return [_instance(row) for row in (await conn.execute(query)).mappings()]

    async def load_active(self) -> list[TaskInstance]:
        """Every unfinished instance (queued, running, cancel requested), oldest first.

        Raises:
            StoreError: The query failed.
        """
        active = [TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.CANCEL_REQUESTED]
        query = select(*_COLUMNS).where(t.c.status.in_(active)).order_by(t.c.id)
        return await self._all(query, "load unfinished task instances")

    async def max_id(self) -> int:
        """The highest instance id stored (0 when none).

        Raises:
            StoreError: The query failed.
        """
        with translate("read the last task id", self.store.masked_url):
            async with self.store.engine.connect() as conn:
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
            async with self.store.engine.connect() as conn:
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
            async with self.store.engine.connect() as conn:
                result = await conn.execute(select(t.c.key).distinct().order_by(t.c.key))
                return [str(k) for k in result.scalars()]
