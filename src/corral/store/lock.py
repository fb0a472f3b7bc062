"""One controller per SQLite store: a lock the operating system holds, not a probe.

A SQLite store lives on one host and has one writer; a second controller on it would take the
lease from the first (SQLite has no row locks to fence with across processes). So a controller
takes ``fcntl.flock`` on ``<database>.lock`` beside the file, for its process's lifetime. The
kernel releases it when the process ends however it ends (``kill -9`` included), and holds it
while the process is paused (``SIGSTOP``), so a second controller is refused even then. The
file holds the holder's pid, for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from corral.errors import Refused

from ._engine import sqlite_path

__all__ = ["StoreLock", "lock_store"]


class StoreLock:
    """A held lock on a SQLite store (:func:`lock_store`); :meth:`release` lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def __repr__(self) -> str:
        return f"<StoreLock {self.path}>"

    def release(self) -> None:
        """Let the lock go (also done by the kernel when the process ends)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def lock_store(url: str) -> StoreLock | None:
    """Take the store's lock for this process if the store is a SQLite file.

    Args:
        url: The store's normalized URL.

    Returns:
        The held lock, or ``None`` for PostgreSQL (the lease fences controllers there).

    Raises:
        Refused: another process (a controller) holds it; the message names its pid.
    """
    database = sqlite_path(url)
    if database is None:
        return None
    path = database.with_name(database.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Refused(
            f"another controller (pid {holder}) already uses the store {database}: its lock "
            f"{path} is held (also while that process is paused). Stop it first (kill "
            f"{holder}), or give this one another store (--store); several controllers need "
            "a PostgreSQL store (docs/operations.md, Several controllers)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StoreLock(path, fd)
