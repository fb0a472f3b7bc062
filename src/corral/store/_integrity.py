"""Checks that a store is corral's and undamaged before anything reads or writes it.

Theory of operation: :func:`corral.store._engine.migrate` runs these before Alembic. For
SQLite, a file that does not exist yet is created here, complete: a fresh store is built in a
private temporary file (mode 0600, in a directory made 0700) and hard-linked into place, so no
process ever sees a half-made store and two processes creating it at once both end with the
same valid file. A file that *does* exist must be a SQLite database holding corral's tables
and must pass ``PRAGMA quick_check``; anything else (an empty file, another program's file, a
damaged one) is refused with what was found and the way out, and never silently replaced.
For every backend, a schema revision this code does not know means a newer corral wrote the
database: it is refused before any migration runs.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from corral.errors import StoreError

__all__ = ["check_revision", "check_sqlite_file", "create_sqlite_file"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Tables every corral store has had since the first migration.
_CORRAL_TABLES = frozenset({"alembic_version", "nodes", "meta"})
_WAY_OUT = (
    "Restore the store from a backup (see 'Backup and restore' in docs/operations.md), or "
    "move the file away to start with an empty store"
)


def _refuse(path: Path, found: str) -> StoreError:
    return StoreError(f"cannot open SQLite database at {path}: {found}. {_WAY_OUT}")


def create_sqlite_file(path: Path, build: Callable[[Path], None]) -> None:
    """Create a fresh store at ``path`` unless a file is already there.

    The directory is created 0700 if missing; the file is created 0600 (SQLite gives its
    ``-wal`` and ``-shm`` files the same mode).

    Args:
        path: Where the store's file should be.
        build: Creates the schema in the (empty, 0600) file it is given.

    Raises:
        OSError: The directory or file cannot be created.
        Exception: Whatever ``build`` raises; the temporary file is removed.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        return
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    os.close(fd)  # mkstemp makes it 0600
    temp = Path(name)
    try:
        build(temp)
        try:
            os.link(temp, path)  # atomic, and never replaces a store someone else made
        except FileExistsError:
            pass
    finally:
        for leftover in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _tables(path: Path) -> set[str]:
    # mode=rw: never create the file by looking at it.
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {str(row[0]) for row in rows}
    finally:
        conn.close()


def _quick_check(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA quick_check(20)").fetchall()]
    finally:
        conn.close()


def check_sqlite_file(path: Path) -> None:
    """Refuse an existing file that is not an undamaged corral store.

    Args:
        path: The store's file; it exists.

    Raises:
        StoreError: The file is empty, not a SQLite database, a SQLite database without
            corral's tables, or damaged (``PRAGMA quick_check`` fails); the message says
            what was found and how to recover.
        OSError: The file cannot be read.
    """
    size = path.stat().st_size
    if size == 0:
        raise _refuse(path, "the file is empty (0 bytes), so it holds no corral store")
    with path.open("rb") as handle:
        magic = handle.read(len(_SQLITE_MAGIC))
    if magic != _SQLITE_MAGIC:
        raise _refuse(path, f"the file ({size} bytes) is not a SQLite database")
    try:
        tables = _tables(path)
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"the file is damaged ({exc})") from exc
    missing = sorted(_CORRAL_TABLES - tables)
    if missing:
        raise _refuse(
            path,
            f"the file is a SQLite database but not a corral store (no table "
            f"{', '.join(missing)}; it has {', '.join(sorted(tables)) or 'no tables'})",
        )
    try:
        problems = _quick_check(path)
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"the file is damaged ({exc})") from exc
    if problems != ["ok"]:
        raise _refuse(
            path, f"the file is damaged: PRAGMA quick_check found {'; '.join(problems[:3])}"
        )


def check_revision(conn: Connection, script: ScriptDirectory, where: str) -> None:
    """Refuse a database whose schema revision this code does not know.

    Args:
        conn: An open connection to the store (inside the migration's transaction).
        script: The migrations shipped with this code.
        where: The store, for the message (a path or a masked URL).

    Raises:
        StoreError: The database is at a revision that is not among this code's migrations,
            so a newer corral wrote it.
    """
    current = MigrationContext.configure(conn).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = sorted(set(current) - known)
    if unknown:
        head = script.get_current_head()
        raise StoreError(
            f"cannot open the store {where}: its schema is at revision {', '.join(unknown)}, "
            f"which this corral does not know (it knows up to {head}): a newer corral wrote "
            "it. Run that newer corral, or restore a backup taken before the upgrade "
            "(see 'Backup and restore' in docs/operations.md)"
        )
