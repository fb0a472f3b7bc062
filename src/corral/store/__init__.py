"""The SQL store: where the controller keeps nodes, their history, and the audit log.

SQLite by default (a single file, WAL mode), PostgreSQL given a DSN. The schema is managed by
Alembic migrations shipped in this package and applied by :meth:`Store.open`::

    store = await Store.open("/var/lib/corral/corral.db")   # or "postgresql://…"
    await store.commit(nodes=[...], transitions=[...], audit=[...])
    rows = await store.load_nodes()
    await store.close()

Every failure is a :class:`corral.errors.StoreError`.
"""

from __future__ import annotations

from ._url import normalize_url as normalize_url
from .rows import AuditEntry as AuditEntry
from .rows import NodeRow as NodeRow
from .rows import Transition as Transition
from .store import Store as Store

__all__ = ["AuditEntry", "NodeRow", "Store", "Transition", "normalize_url"]
