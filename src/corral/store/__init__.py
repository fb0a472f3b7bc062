"""The store: where the controller keeps nodes, their history, tasks, tokens and the audit log.

:class:`Store` is the interface callers type against (a Protocol, with ``store.tasks`` and
``store.auth``); :class:`SqlStore` implements it on SQLite by default (a single file, WAL
mode) or PostgreSQL given a DSN. Every write goes through the store's one group-commit writer,
off the event loop (:mod:`corral.store.writer`). The schema is managed by Alembic migrations
shipped in this package and applied by :func:`open_store`::

    store = await open_store("/var/lib/corral/corral.db")   # or "postgresql://…"
    await store.commit(nodes=[...], transitions=[...], audit=[...])
    rows = await store.load_nodes()
    await store.close()

Every failure is a :class:`corral.errors.StoreError`.
"""

from __future__ import annotations

from corral.records import AuditEntry as AuditEntry
from corral.records import NodeRecord as NodeRecord
from corral.records import Transition as Transition

from ._fsync import DEFAULT_FSYNC_INTERVAL
from ._url import normalize_url as normalize_url
from .interface import AuthRecords as AuthRecords
from .interface import NodePage as NodePage
from .interface import Page as Page
from .interface import Store as Store
from .interface import TaskRecords as TaskRecords
from .store import SqlStore as SqlStore

__all__ = [
    "AuditEntry",
    "AuthRecords",
    "NodePage",
    "NodeRecord",
    "Page",
    "SqlStore",
    "Store",
    "TaskRecords",
    "Transition",
    "normalize_url",
    "open_store",
]


async def open_store(url: str, fsync_interval: float = DEFAULT_FSYNC_INTERVAL) -> Store:
    """Open (creating and migrating as needed) the SQL store at ``url``: a SQLite file path
    or URL, or a PostgreSQL DSN. ``fsync_interval`` is the setting ``store_fsync_interval``
    (SQLite only): 0 fsyncs every commit before answering it; above zero a commit is
    answered once the operating system has it and reaches the disk within that many seconds.

    Raises:
        StoreError: the store cannot be opened, is damaged, foreign or newer than this corral.
    """
    return await SqlStore.open(url, fsync_interval)
