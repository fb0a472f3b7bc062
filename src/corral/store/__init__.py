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

from corral.records import AuditEntry as AuditEntry
from corral.records import NodeRecord as NodeRecord
from corral.records import Transition as Transition

from ._url import normalize_url as normalize_url
from .store import Store as Store

__all__ = ["AuditEntry", "NodeRecord", "Store", "Transition", "normalize_url"]
