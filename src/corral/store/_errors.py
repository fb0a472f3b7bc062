"""Translate SQLAlchemy, driver and Alembic exceptions into :class:`corral.errors.StoreError`.

Nothing from sqlite3, psycopg, SQLAlchemy or Alembic may leave the store: every public
method runs its I/O inside :func:`translate`, and :func:`open_store` maps its failures with
:func:`open_error`. The foreign exception stays attached as ``__cause__`` for debugging.

:func:`is_transient` sorts a failure for the writers (docs/operations.md, "Poison-proof
writes"): *transient* when it is not the data's fault and a retry may succeed (connection
lost, database locked or busy, lock or statement timeout, serialization failure, deadlock,
disk full or read-only, a schema that does not match); *data* otherwise (a NUL in PostgreSQL
text, a constraint, a value out of range or too large, a value the driver cannot bind). A
writer retries the first kind with backoff and isolates the record behind the second.
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

from corral.errors import StoreError, TransientStoreError

__all__ = [
    "FOREIGN",
    "WRITE_FAILURES",
    "driver_error",
    "is_transient",
    "open_error",
    "reason",
    "translate",
]

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
# What binding a value may raise besides the driver's own errors (sqlite3 raises a bare
# OverflowError for an integer past 64 bits; a JSON serializer raises TypeError).
WRITE_FAILURES: tuple[type[BaseException], ...] = (*FOREIGN, OverflowError, TypeError, ValueError)

_INTEGRITY = (sa_exc.IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)
_SCHEMA = (sa_exc.ProgrammingError, sa_exc.NoSuchTableError, psycopg.ProgrammingError)
_BACKGROUND = re.compile(r"\s*\(Background on this error at: [^)]*\)")


# PostgreSQL SQLSTATE classes that are not the data's fault: connection exception,
# transaction rollback (serialization failure, deadlock), insufficient resources (disk full,
# out of memory, too many connections), operator intervention (statement timeout, shutdown),
# system error, syntax or access rule (a schema that does not match this corral).
_PG_TRANSIENT_CLASSES = frozenset({"08", "40", "42", "53", "57", "58"})
# ... and single states: lock not available (lock_timeout), object in use.
_PG_TRANSIENT_STATES = frozenset({"55P03", "55006"})
# SQLite primary result codes that are not the data's fault: BUSY, LOCKED, NOMEM, READONLY,
# INTERRUPT, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_SQLITE_TRANSIENT_CODES = frozenset({5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26})
_SQLITE_SCHEMA = re.compile(r"no such (table|column)|has no column", re.IGNORECASE)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed if retried unchanged (else its data is at fault).

    Args:
        exc: What a write raised: anything in :data:`WRITE_FAILURES`, or a
            :class:`~corral.errors.StoreError` made from one by :func:`translate`.

    Returns:
        ``True`` for a connection lost, a lock or busy database, a timeout, a serialization
        failure or deadlock, a full or read-only disk, a schema mismatch; ``False`` for a
        data error (NUL in PostgreSQL text, constraint, value out of range, unbindable value)
        and anything not known to be transient.
    """
    if isinstance(exc, StoreError):
        cause = exc.__cause__
        return isinstance(exc, TransientStoreError) or (cause is not None and is_transient(cause))
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(orig, psycopg.Error):
        state = orig.sqlstate or ""
        if state:
            return state[:2] in _PG_TRANSIENT_CLASSES or state in _PG_TRANSIENT_STATES
        # No SQLSTATE: raised by psycopg itself. A NUL or an unadaptable value is a
        # DataError/ProgrammingError; a broken connection an OperationalError/InterfaceError.
        return isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_TRANSIENT_CODES:
            return True
        return bool(_SQLITE_SCHEMA.search(str(orig)))
    if isinstance(exc, sa_exc.StatementError) and not isinstance(exc, sa_exc.DBAPIError):
        return False  # a value SQLAlchemy could not process: the data's fault
    return isinstance(
        exc,
        sa_exc.DisconnectionError
        | sa_exc.TimeoutError
        | sa_exc.InterfaceError
        | sa_exc.NoSuchTableError
        | OSError
        | CommandError,
    )


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
            "The tables do not match this corral: reopen the store with open_store so its "
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

    Transient failures (see :func:`is_transient`) raise :class:`TransientStoreError`.

    Args:
        action: What the block does, as a verb phrase (``"load nodes"``).
        where: Which store, for the message (its masked URL).

    Yields:
        Nothing; the block runs inside.

    Raises:
        StoreError: The block raised an exception from :data:`FOREIGN`.
        TransientStoreError: The exception is one a retry may cure.
    """
    try:
        yield
    except FOREIGN as exc:
        kind = TransientStoreError if is_transient(exc) else StoreError
        raise kind(f"cannot {action} in {where}: {reason(exc)}. {_hint(exc)}") from exc


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
        exc: The exception from :data:`FOREIGN` that stopped :func:`open_store`.
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
