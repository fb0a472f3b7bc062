"""Engines for the store: the sync one migrations run on, and the async one for reads (the
store's one writer, :mod:`corral.store.writer`, has a sync engine of its own).

Theory of operation: :func:`open_store` first calls :func:`migrate` in a worker thread. For
SQLite it creates an absent file or checks an existing one (:mod:`corral.store._integrity`:
empty, foreign and damaged files are refused). It then opens a short-lived *sync* engine
(sqlite3 or psycopg), takes a lock so two controllers starting together do not both create
tables, refuses a schema revision newer than this code, and runs Alembic up to head. Only
then does it build the long-lived *async* engine with :func:`async_engine`. Every engine
applies the same SQLite PRAGMAs on every new connection.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, pool, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from corral.errors import StoreError

from ._integrity import check_revision, check_sqlite_file, create_sqlite_file
from ._url import mask_password, sync_url

__all__ = ["MIGRATIONS", "async_engine", "migrate"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

# WAL lets readers (CLI, dashboard) run beside the controller's writes; FULL makes a commit
# durable across power loss (the store's writer may ask for NORMAL instead: store/_fsync.py);
# busy_timeout waits out a short lock instead of failing at once.
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
)

# pg_advisory_xact_lock key serialising concurrent migrations ("corral" in ASCII).
_PG_MIGRATION_LOCK = 0x636F7272616C

# Fail fast on an unreachable PostgreSQL host instead of waiting for the OS TCP timeout.
_PG_CONNECT_TIMEOUT = 10


def _json_dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    return set_pragmas


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for ``url``: JSON through msgspec, PostgreSQL's connect
    timeout (every engine of the store, async and the writer's, uses these)."""
    parsed = make_url(url)
    options: dict[str, Any] = {
        "json_serializer": _json_dumps,
        "json_deserializer": msgspec.json.decode,
    }
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        options["connect_args"] = {"connect_timeout": _PG_CONNECT_TIMEOUT}
    return options


def listen_connects(engine: Engine, synchronous: str = "FULL") -> None:
    """Set SQLite's pragmas (WAL, busy timeout, foreign keys, ``synchronous``: ``FULL`` or
    ``NORMAL``) on each connection ``engine`` opens; nothing for PostgreSQL."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL.

    Args:
        url: A normalized store URL.

    Returns:
        The file path, or ``None`` for a PostgreSQL URL.

    Raises:
        StoreError: The URL names an in-memory SQLite database, which would not persist.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or "mode=memory" in str(parsed.query):
        raise StoreError(
            f"an in-memory SQLite store loses everything on close and cannot be migrated: "
            f"give a file path instead of {url!r}"
        )
    return Path(database)


def _upgrade(url: str, where: str) -> None:
    """Run the migrations up to head on ``url`` (blocking), after checking its revision."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool, **engine_options(url))
    listen_connects(engine)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            config = Config()
            # Config is a ConfigParser: a literal "%" in the path must be doubled.
            config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
            config.attributes["connection"] = conn
            check_revision(conn, ScriptDirectory.from_config(config), where)
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """Check the store, create it if absent, and upgrade its schema to head (blocking).

    A SQLite file that is absent is created (0600, its directory 0700); one that exists must
    be an undamaged corral store (see :mod:`corral.store._integrity`).

    Args:
        url: A normalized store URL; migrations use its sync-driver twin.

    Raises:
        StoreError: The URL is an in-memory SQLite one; the SQLite file is empty, foreign or
            damaged; or the schema is at a revision newer than this code.
        OSError: The directory cannot be created.
        sqlalchemy.exc.SQLAlchemyError: Connecting or migrating failed.
        alembic.util.exc.CommandError: Migrating failed.
    """
    path = sqlite_path(url)
    if path is None:
        _upgrade(url, mask_password(url))
        return

    def build(fresh: Path) -> None:
        _upgrade(
            make_url(url).set(database=str(fresh)).render_as_string(hide_password=False), str(fresh)
        )

    create_sqlite_file(path, build)
    check_sqlite_file(path)
    _upgrade(url, str(path))


def async_engine(url: str) -> AsyncEngine:
    """Build the long-lived async engine for a migrated store.

    Args:
        url: A normalized store URL naming an async driver.

    Returns:
        The engine; it connects lazily.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: The URL names a sync-only driver.
        ImportError: The URL's driver is not installed.
    """
    engine = create_async_engine(url, **engine_options(url))
    listen_connects(engine.sync_engine)
    return engine
