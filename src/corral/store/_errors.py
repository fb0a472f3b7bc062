"""Translate SQLAlchemy, driver and Alembic exceptions into :class:`corral.errors.StoreError`.

Nothing from sqlite3, psycopg, SQLAlchemy or Alembic may leave the store: every public
method runs its I/O inside :func:`translate`, and :meth:`Store.open` maps its failures with
:func:`open_error`. The foreign exception stays attached as ``__cause__`` for debugging.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from alembic.util.exc import CommandError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from corral.errors import StoreError

__all__ = ["FOREIGN", "driver_error", "open_error", "reason", "translate"]

# Everything that may come out of the layers below us.
FOREIGN: tuple[type[BaseException], ...] = (
    sa_exc.SQLAlchemyError,
    sqlite3.Error,
    psycopg.Error,
    CommandError,
    OSError,
    ImportError,  # a driver named in the URL that is not installed
)

_OPERATIONAL = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    sqlite3.OperationalError,
    psycopg.OperationalError,
    OSError,
)
_INTEGRITY = (sa_exc.IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)
_SCHEMA = (sa_exc.ProgrammingError, sa_exc.NoSuchTableError, psycopg.ProgrammingError)
_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


def reason(exc: BaseException) -> str:
    """The driver's own words for what went wrong, on one line.

    Args:
        exc: Any exception from :data:`FOREIGN`.

    Returns:
        The message of the underlying DBAPI exception (or of ``exc`` itself), whitespace
        collapsed, SQLAlchemy's documentation link and final punctuation removed.
    """
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    text = " ".join(_BACKGROUND.sub("", str(orig)).split()).rstrip(".?! ")
    return text or type(orig).__name__


def _hint(exc: BaseException) -> str:
    if isinstance(exc, _INTEGRITY):
        return "A row broke a table constraint: this is a bug in corral, please report it"
    if isinstance(exc, _SCHEMA):
        return (
            "The tables do not match this corral: reopen the store with Store.open so its "
            "migrations run, or upgrade corral"
        )
    if isinstance(exc, _OPERATIONAL):
        return (
            "The database may be unreachable, locked by another process, read-only or full: "
            "check it and retry"
        )
    return "Check the database and retry; if it keeps failing, report this message"


@contextmanager
def translate(action: str, where: str) -> Iterator[None]:
    """Re-raise any foreign exception from the block as a :class:`StoreError`.

    Args:
        action: What the block does, as a verb phrase (``"load nodes"``).
        where: Which store, for the message (its masked URL).

    Yields:
        Nothing; the block runs inside.

    Raises:
        StoreError: The block raised an exception from :data:`FOREIGN`.
    """
    try:
        yield
    except FOREIGN as exc:
        raise StoreError(f"cannot {action} in {where}: {reason(exc)}. {_hint(exc)}") from exc


def driver_error(exc: BaseException, masked: str) -> StoreError:
    """The :class:`StoreError` for a URL whose driver cannot serve an async engine.

    Args:
        exc: What ``create_async_engine`` raised.
        masked: The store URL with its password masked.

    Returns:
        An error naming the drivers that work.
    """
    what = "is not installed" if isinstance(exc, ImportError) else "cannot be used"
    return StoreError(
        f"cannot open the store {masked}: its driver {what} ({reason(exc)}). Use an async "
        "driver: sqlite+aiosqlite:// or postgresql+psycopg:// (the defaults when the URL "
        "names none)"
    )


def open_error(exc: BaseException, url: str, masked: str) -> StoreError:
    """The :class:`StoreError` for a failure while connecting to or migrating a store.

    Args:
        exc: The exception from :data:`FOREIGN` that stopped :meth:`Store.open`.
        url: The normalized store URL.
        masked: The same URL with its password masked.

    Returns:
        An error saying what failed and what to check.
    """
    parsed = make_url(url)
    why = reason(exc)
    if isinstance(exc, CommandError):
        return StoreError(
            f"cannot migrate the store {masked}: {why}. The database was probably written by a "
            "newer corral: upgrade corral, or point it at another database"
        )
    if parsed.get_backend_name() == "sqlite":
        return StoreError(
            f"cannot open SQLite database at {parsed.database}: {why}. Check that its directory "
            "is writable and that the file is a corral database"
        )
    if isinstance(exc, _OPERATIONAL):
        return StoreError(
            f"cannot reach PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}: "
            f"{why}. Check the DSN {masked} (host, port, user, password, database name) and "
            "that the server is running and accepts connections from this machine"
        )
    return StoreError(
        f"cannot prepare the store {masked}: {why}. Check that the database user may create "
        "tables in that database"
    )
