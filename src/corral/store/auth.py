"""API tokens, dashboard users and sign-in sessions in the store (their checks live in
``corral.tokens``, ``corral.dashboard.users`` and ``corral.dashboard.auth``; this is only their
SQL).

Writes go through the store's one writer (:mod:`corral.store.writer`), each with the audit
entry that records it in the same transaction; reads use the async engine.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import Connection, delete, select, update

from corral.records import AuditEntry, SessionRow, TokenRow, UserRow

from ._errors import translate
from .schema import api_tokens, audit_log, dashboard_sessions, users
from .writer import Tables, Unit

__all__ = ["AuthTables"]

_TOKEN_COLUMNS = [api_tokens.c[n] for n in TokenRow.__struct_fields__]
_USER_COLUMNS = [users.c[n] for n in UserRow.__struct_fields__]
_SESSION_COLUMNS = [dashboard_sessions.c[n] for n in SessionRow.__struct_fields__]


def _audit(conn: Connection, entry: AuditEntry | None) -> None:
    if entry is not None:
        conn.execute(audit_log.insert(), msgspec.structs.asdict(entry))


class AuthTables:
    """The ``api_tokens``, ``users`` and ``dashboard_sessions`` tables of a store.

    Args:
        store: The open store.
    """

    def __init__(self, store: Tables) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"<AuthTables {self._store!r}>"

    async def add_token(self, row: TokenRow, audit: AuditEntry | None = None) -> None:
        """Store a new token, with ``audit`` in the same transaction.

        Raises:
            StoreError: It could not be stored.
        """

        def write(conn: Connection) -> None:
            conn.execute(api_tokens.insert(), msgspec.structs.asdict(row))
            _audit(conn, audit)

        await self._store.write(Unit("store an API token", write))

    async def revoke_token(self, ident: str, at: float, audit: AuditEntry | None = None) -> bool:
        """Revoke live token ``ident`` at ``at`` and delete its dashboard sessions; ``audit``
        is written if one was revoked.

        Returns:
            Whether a live token had that id.

        Raises:
            StoreError: The statement failed.
        """
        stmt = (
            update(api_tokens)
            .where(api_tokens.c.id == ident, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )

        def write(conn: Connection) -> bool:
            if conn.execute(stmt).rowcount == 0:
                return False
            # its dashboard sessions end with it (a live one is refused within seconds anyway)
            conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.token == ident))
            _audit(conn, audit)
            return True

        return await self._store.write(Unit("revoke an API token", write))

    async def tokens(self) -> list[TokenRow]:
        """Every token, oldest first.

        Raises:
            StoreError: The query failed.
        """
        query = select(*_TOKEN_COLUMNS).order_by(api_tokens.c.created_at)
        with translate("list API tokens", self._store.masked_url):
            async with self._store.reader() as conn:
                return [TokenRow(**row) for row in (await conn.execute(query)).mappings()]

    async def token(self, ident: str) -> TokenRow | None:
        """Token ``ident`` (revoked or not), or ``None``.

        Raises:
            StoreError: The query failed.
        """
        query = select(*_TOKEN_COLUMNS).where(api_tokens.c.id == ident)
        with translate("read an API token", self._store.masked_url):
            async with self._store.reader() as conn:
                row = (await conn.execute(query)).mappings().first()
        return None if row is None else TokenRow(**row)

    async def add_user(self, row: UserRow, audit: AuditEntry | None = None) -> bool:
        """Store a new user, with ``audit`` in the same transaction.

        Returns:
            ``False`` (and nothing written) if a user of that name is stored already.

        Raises:
            StoreError: It could not be stored.
        """

        def write(conn: Connection) -> bool:
            taken = select(users.c.name).where(users.c.name == row.name)
            if conn.execute(taken).first() is not None:
                return False
            conn.execute(users.insert(), msgspec.structs.asdict(row))
            _audit(conn, audit)
            return True

        return await self._store.write(Unit("store a user", write))

    async def remove_user(self, name: str, audit: AuditEntry | None = None) -> bool:
        """Remove user ``name`` and their dashboard sessions; ``audit`` is written if there
        was one.

        Returns:
            Whether a user had that name.

        Raises:
            StoreError: The statement failed.
        """

        def write(conn: Connection) -> bool:
            if conn.execute(delete(users).where(users.c.name == name)).rowcount == 0:
                return False
            # Their sessions end with them: a user added again under the name gets none.
            ended = dashboard_sessions.c.user_name == name, dashboard_sessions.c.token == ""
            conn.execute(delete(dashboard_sessions).where(*ended))
            _audit(conn, audit)
            return True

        return await self._store.write(Unit("remove a user", write))

    async def user(self, name: str) -> UserRow | None:
        """User ``name``, or ``None``.

        Raises:
            StoreError: The query failed.
        """
        query = select(*_USER_COLUMNS).where(users.c.name == name)
        with translate("read a user", self._store.masked_url):
            async with self._store.reader() as conn:
                row = (await conn.execute(query)).mappings().first()
        return None if row is None else UserRow(**row)

    async def users(self) -> list[UserRow]:
        """Every user, by name.

        Raises:
            StoreError: The query failed.
        """
        query = select(*_USER_COLUMNS).order_by(users.c.name)
        with translate("list users", self._store.masked_url):
            async with self._store.reader() as conn:
                return [UserRow(**row) for row in (await conn.execute(query)).mappings()]

    async def add_session(self, row: SessionRow, purge_before: float | None = None) -> None:
        """Store a new dashboard session; with ``purge_before``, delete in the same
        transaction every session that expired before it.

        Raises:
            NotLeader: This controller is a standby (the store's fence refused the write).
            StoreError: It could not be stored.
        """

        def write(conn: Connection) -> None:
            if purge_before is not None:
                _purge(conn, purge_before)
            conn.execute(dashboard_sessions.insert(), msgspec.structs.asdict(row))

        await self._store.write(Unit("store a dashboard session", write))

    async def remove_session(self, hash: str) -> bool:
        """End the session whose id hashes to ``hash``; whether there was one.

        Raises:
            NotLeader: This controller is a standby.
            StoreError: The statement failed.
        """
        stmt = delete(dashboard_sessions).where(dashboard_sessions.c.hash == hash)

        def write(conn: Connection) -> bool:
            return bool(conn.execute(stmt).rowcount)

        return await self._store.write(Unit("end a dashboard session", write))

    async def purge_sessions(self, before: float) -> int:
        """Delete every session that expired before ``before``; how many.

        Raises:
            NotLeader: This controller is a standby.
            StoreError: The statement failed.
        """
        return await self._store.write(
            Unit("purge expired dashboard sessions", lambda conn: _purge(conn, before))
        )

    async def session(self, hash: str) -> SessionRow | None:
        """The session whose id hashes to ``hash`` (expired or not), or ``None``.

        Raises:
            StoreError: The query failed.
        """
        query = select(*_SESSION_COLUMNS).where(dashboard_sessions.c.hash == hash)
        with translate("read a dashboard session", self._store.masked_url):
            async with self._store.reader() as conn:
                row = (await conn.execute(query)).mappings().first()
        return None if row is None else SessionRow(**row)

    async def sessions(self) -> list[SessionRow]:
        """Every stored session, oldest first (for ``corral`` tools and tests).

        Raises:
            StoreError: The query failed.
        """
        query = select(*_SESSION_COLUMNS).order_by(dashboard_sessions.c.created_at)
        with translate("list dashboard sessions", self._store.masked_url):
            async with self._store.reader() as conn:
                return [SessionRow(**row) for row in (await conn.execute(query)).mappings()]


def _purge(conn: Connection, before: float) -> int:
    stmt = delete(dashboard_sessions).where(dashboard_sessions.c.expires_at < before)
    return int(conn.execute(stmt).rowcount)
