"""Idempotency keys in the store: the first answer to a keyed submission.

Rows are written only inside the transaction of the submission they answer (the task
instances' unit for ``queue_task``/``queue_tasks``/``run_task``, the controller's flush for
``send_command``, both through the store's one writer), by :func:`write_keys`. Reads
(:func:`find_key`) ignore rows older than the window, so a key is answered the same until
it expires whether or not it has been pruned yet; pruning (:func:`prune_keys`) runs inside the
controller's group commit too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import and_, delete, select

from corral.records import IdempotencyRow

from ._errors import translate
from .schema import idempotency_keys as k
from .writes import upsert

__all__ = ["find_key", "prune_keys", "recent_keys", "write_keys"]

_COLUMNS = [k.c[name] for name in IdempotencyRow.__struct_fields__]


def write_keys(conn: Any, rows: Sequence[IdempotencyRow]) -> Any:
    """Insert ``rows`` on ``conn`` (the writer's connection, inside its transaction).

    A row already stored for the same caller and key is replaced: within the window the
    controller never writes a key twice (it answers from the first), so that row had expired
    and was waiting to be pruned.

    Returns:
        What ``conn.execute`` returns.
    """
    if not rows:
        return None
    return conn.execute(
        upsert(conn.dialect.name, k, "caller", "key"), [msgspec.structs.asdict(r) for r in rows]
    )


async def recent_keys(store: Any, since: float, limit: int) -> list[tuple[str, str]] | None:
    """The ``(caller, key)`` of every key written at ``since`` or later, if at most ``limit``.

    Args:
        store: An open :class:`~corral.store.store.SqlStore`.
        since: Epoch seconds: older rows are expired.
        limit: The most pairs to return.

    Returns:
        The pairs, or ``None`` when there are more than ``limit``.

    Raises:
        StoreError: the query failed.
    """
    query = select(k.c.caller, k.c.key).where(k.c.created >= since).limit(limit + 1)
    with translate("read the idempotency keys", store.masked_url):
        async with store.reader() as conn:
            pairs = [(str(c), str(key)) for c, key in (await conn.execute(query)).all()]
    return None if len(pairs) > limit else pairs


async def find_key(store: Any, caller: str, key: str, since: float) -> IdempotencyRow | None:
    """The stored answer to ``caller``'s ``key`` if it was written at ``since`` or later.

    Args:
        store: An open :class:`~corral.store.store.SqlStore`.
        caller: Who sent the key.
        key: The key.
        since: Epoch seconds: older rows are expired.

    Raises:
        StoreError: the query failed.
    """
    query = select(*_COLUMNS).where(
        and_(k.c.caller == caller, k.c.key == key, k.c.created >= since)
    )
    with translate("read an idempotency key", store.masked_url):
        async with store.reader() as conn:
            row = (await conn.execute(query)).mappings().first()
    return None if row is None else IdempotencyRow(**row)


def prune_keys(conn: Any, before: float) -> Any:
    """Delete keys written before ``before`` on ``conn`` (inside its transaction).

    Returns:
        What ``conn.execute`` returns.
    """
    return conn.execute(delete(k).where(k.c.created < before))
