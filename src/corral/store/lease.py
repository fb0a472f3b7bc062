"""The leader's lease and the controllers' rows, on a small connection of their own.

Theory of operation: one row of ``controller_lease`` says which controller leads (``holder``,
a process's random id), until when (``expires``, seconds since the epoch **by the database's
clock**: no host's clock is trusted against another's), at which fencing ``epoch`` and where
its API answers (``address``). A standby calls :meth:`LeaseTable.acquire` every fraction of a
lease: it takes the row only once it has expired (or nobody holds it), and raises the epoch by
one. The leader calls :meth:`LeaseTable.renew`, which succeeds only while it still holds the
row. Every transaction of the store's one writer first checks the row (:func:`fence_check`,
installed with :meth:`~corral.store.SqlStore.set_fence`): a write of a deposed leader is
refused, in the very transaction that would have written it. On PostgreSQL the check takes
a ``FOR KEY SHARE`` lock on the row, so a takeover (``FOR UPDATE``) waits for a commit in
flight, a commit after the takeover sees the new epoch, and a renewal (which changes only the
expiry) never waits for a commit: no write of an old epoch lands after a new
one began. A leader paused mid-transaction would hold that lock: the writer's connection has
an ``idle_in_transaction_session_timeout`` that ends such a session well within a lease.

Why a connection of its own rather than the writer: a renewal must not queue behind a burst
of writes (a 512-unit group, or a transient failure's backoff) and lose the lease under load,
and a standby (whose writer refuses everything) must still reach the row.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Double,
    Engine,
    create_engine,
    delete,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from corral.errors import NotLeader

from ._engine import engine_options, listen_connects
from ._errors import translate
from ._url import sync_url
from .schema import controller_lease, controllers
from .writes import upsert

__all__ = ["ControllerRow", "LeaseTable", "LeaseView", "fence_check"]

log = logging.getLogger("corral.store")

#: seconds a controller's row is kept after it was last seen
FORGET_AFTER = 3600.0


@dataclass(frozen=True)
class LeaseView:
    """The lease row as read (``now`` is the database's clock at that moment)."""

    holder: str
    epoch: int
    expires: float
    address: str
    now: float


@dataclass(frozen=True)
class ControllerRow:
    """One controller as it last said (``corral status``)."""

    id: str
    address: str
    role: str
    epoch: int
    host: str
    pid: int
    started: float
    last_seen: float


def db_now(dialect: str) -> ColumnElement[float]:
    """The database's clock, in seconds since the epoch (a SQL expression)."""
    if dialect == "postgresql":
        return literal_column("extract(epoch from clock_timestamp())::double precision", Double)
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Double)


def fence_check(conn: Connection, holder: str, epoch: int) -> None:
    """Refuse the transaction on ``conn`` unless ``holder`` still holds the lease at ``epoch``.

    Raises:
        NotLeader: another controller took the lease (its address is ``leader``).
    """
    query = select(controller_lease.c.holder, controller_lease.c.epoch, controller_lease.c.address)
    query = query.where(controller_lease.c.id == 1)
    if conn.dialect.name == "postgresql":
        # KEY SHARE: a takeover (FOR UPDATE) waits for this commit, a renewal (an UPDATE of
        # the expiry alone) does not.
        query = query.with_for_update(read=True, key_share=True)
    row = conn.execute(query).first()
    if epoch < 0:
        raise NotLeader(
            "this controller does not lead (a standby, or deposed): it writes nothing; "
            "send writes to the leader",
            leader="" if row is None else row.address,
        )
    if row is None or row.holder != holder or row.epoch != epoch:
        leader = "" if row is None else row.address
        now = "nobody" if row is None or not row.holder else f"epoch {row.epoch}"
        raise NotLeader(
            f"this controller was deposed: it wrote at epoch {epoch} but the lease is at {now}; "
            "nothing of this write was stored",
            leader=leader,
        )


class LeaseTable:
    """The lease and controllers tables, on one small connection of their own.

    Args:
        url: The store's normalized URL.
    """

    def __init__(self, url: str, masked: str) -> None:
        postgresql = sync_url(url).get_backend_name() == "postgresql"
        self._engine: Engine = create_engine(
            sync_url(url), pool_size=1, max_overflow=0, pool_pre_ping=postgresql,
            **engine_options(url),
        )  # fmt: skip
        listen_connects(self._engine)
        self._dialect = self._engine.dialect.name
        self._masked = masked
        self._upsert = upsert(self._dialect, controllers, "id")

    def __repr__(self) -> str:
        return f"<LeaseTable {self._masked!r}>"

    async def _run(self, what: str, work: Callable[[Connection], Any]) -> Any:
        def run() -> Any:
            with translate(what, self._masked), self._engine.begin() as conn:
                if self._dialect == "postgresql":
                    # A takeover never hangs on a paused leader's lock: it fails and retries.
                    conn.execute(text("SET LOCAL lock_timeout = '1s'"))
                else:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                return work(conn)

        return await asyncio.to_thread(run)

    def _read(self, conn: Connection, lock: bool) -> LeaseView:
        c = controller_lease.c
        query = select(c.holder, c.epoch, c.expires, c.address, db_now(self._dialect).label("now"))
        query = query.where(c.id == 1)
        if lock and self._dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).one()
        return LeaseView(row.holder, int(row.epoch), float(row.expires), row.address, row.now)

    async def read(self) -> LeaseView:
        """The lease as it is now.

        Raises:
            StoreError: the database could not be read.
        """
        return await self._run("read the lease", lambda conn: self._read(conn, False))  # type: ignore[no-any-return]

    async def acquire(
        self, holder: str, address: str, ttl: float, *, force: bool = False
    ) -> LeaseView:
        """Take the lease if it expired (or nobody holds it, or ``force``): epoch + 1.

        Args:
            holder: This controller's id.
            address: Its API's address, for clients sent to the leader.
            ttl: The lease's length in seconds.
            force: Take it whatever its state (SQLite, where a lock file already keeps the
                store to one controller).

        Returns:
            The lease as it is now: its ``holder`` is ``holder`` if it was taken.

        Raises:
            StoreError: the database failed (a lock held by a paused leader, say): retry.
        """

        def work(conn: Connection) -> LeaseView:
            now = self._read(conn, True)
            if not (force or not now.holder or now.expires <= now.now):
                return now
            epoch = now.epoch + 1
            expires = now.now + ttl
            conn.execute(
                update(controller_lease)
                .where(controller_lease.c.id == 1)
                .values(holder=holder, epoch=epoch, expires=expires, address=address)
            )
            return LeaseView(holder, epoch, expires, address, now.now)

        return await self._run("take the lease", work)  # type: ignore[no-any-return]

    async def renew(self, holder: str, epoch: int, ttl: float) -> bool:
        """Extend the lease held by ``holder`` at ``epoch`` to ``ttl`` seconds from now.

        Returns:
            False if it holds it no more (deposed).

        Raises:
            StoreError: the database failed: nothing is known, retry.
        """
        c = controller_lease.c

        def work(conn: Connection) -> bool:
            expires = db_now(self._dialect) + ttl
            result = conn.execute(
                update(controller_lease)
                .where(c.id == 1, c.holder == holder, c.epoch == epoch)
                .values(expires=expires)
            )
            return bool(result.rowcount == 1)

        return await self._run("renew the lease", work)  # type: ignore[no-any-return]

    async def release(self, holder: str, epoch: int) -> None:
        """Let the lease go at once (a clean stop): a standby takes over without waiting.

        Raises:
            StoreError: the database failed (the lease then expires on its own).
        """
        c = controller_lease.c

        def work(conn: Connection) -> None:
            conn.execute(
                update(controller_lease)
                .where(c.id == 1, c.holder == holder, c.epoch == epoch)
                .values(expires=0.0)
            )

        await self._run("release the lease", work)

    async def abdicate(self, holder: str, epoch: int, floor: int) -> bool:
        """Give the lease up at epoch ``floor`` (above ``epoch``): the next controller to take
        it leads at ``floor`` + 1. For a store restored from a backup, whose epoch is below
        what the nodes have seen: they would ignore its leader.

        Returns:
            Whether ``holder`` still held it at ``epoch`` (and gave it up).

        Raises:
            StoreError: the database failed (nothing changed).
        """
        c = controller_lease.c

        def work(conn: Connection) -> bool:
            result = conn.execute(
                update(controller_lease)
                .where(c.id == 1, c.holder == holder, c.epoch == epoch, c.epoch < floor)
                .values(holder="", epoch=floor, expires=0.0, address="")
            )
            return bool(result.rowcount == 1)

        return await self._run("give the lease up", work)  # type: ignore[no-any-return]

    async def beat(self, row: ControllerRow) -> None:
        """Record that controller ``row.id`` is alive now (its ``last_seen`` is the
        database's clock), and forget controllers silent for an hour.

        Raises:
            StoreError: the database failed.
        """

        def work(conn: Connection) -> None:
            now = float(conn.execute(select(db_now(self._dialect))).scalar_one())
            values = {**row.__dict__, "last_seen": now}
            conn.execute(self._upsert, values)
            conn.execute(delete(controllers).where(controllers.c.last_seen < now - FORGET_AFTER))

        await self._run("record this controller", work)

    async def controllers(self) -> tuple[float, list[ControllerRow]]:
        """The database's clock now, and every controller recently seen (newest first).

        Raises:
            StoreError: the database failed.
        """

        def work(conn: Connection) -> tuple[float, list[ControllerRow]]:
            now = float(conn.execute(select(db_now(self._dialect))).scalar_one())
            rows = conn.execute(select(controllers).order_by(controllers.c.last_seen.desc()))
            return now, [ControllerRow(**row) for row in rows.mappings()]

        return await self._run("list the controllers", work)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the connection."""
        await asyncio.to_thread(self._engine.dispose)
