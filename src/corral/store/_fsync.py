"""Bounded-delay fsync of a SQLite store's write-ahead log (``store_fsync_interval``).

Theory of operation: with ``store_fsync_interval`` above zero the store's writer commits with
``PRAGMA synchronous=NORMAL`` (WAL mode): a commit has written its log frames to the
operating system before anyone is answered, so it survives ``kill -9`` of any process (the
controller's, a node's, the broker's), but it is flushed to the disk only at the next
checkpoint. :class:`LogSync` bounds that: a thread of its own ``fsync``\\ s the ``-wal`` file
at most ``interval`` seconds after a commit, off the writer's path (the fsync holds no lock
SQLite needs, and no GIL), so a power loss or an operating-system crash loses at most the
last ``interval`` of answered writes and never damages the file (SQLite's log is
checksummed; a torn tail is ignored on recovery). This is PostgreSQL's
``synchronous_commit = off`` with ``wal_writer_delay``, and Redis's ``appendfsync everysec``.

With ``store_fsync_interval = 0`` every commit is fsynced before its callers are answered
(``synchronous=FULL``), at the price of the fsync on every answer's path (0.1-0.3 ms of a
``run_task`` round trip here, docs/performance.md). PostgreSQL commits as its server is
configured; the setting does not apply to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

__all__ = ["DEFAULT_FSYNC_INTERVAL", "LogSync"]

#: the default of ``store_fsync_interval`` (seconds)
DEFAULT_FSYNC_INTERVAL = 0.1

log = logging.getLogger("corral.store")


class LogSync:
    """A thread that fsyncs ``database``'s ``-wal`` file at most ``interval`` seconds after
    :meth:`committed` is called, and once more on :meth:`close`.

    Args:
        database: The SQLite database file.
        interval: Most seconds between a commit and its fsync (above zero).
    """

    def __init__(self, database: Path, interval: float) -> None:
        self.wal = database.with_name(database.name + "-wal")
        self.interval = interval
        #: fsyncs done (for tests and metrics)
        self.syncs = 0
        self._dirty = False
        self._closing = False
        self._fd: int | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="corral-store-fsync", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<LogSync {str(self.wal)!r} every {self.interval}s syncs={self.syncs}>"

    def committed(self) -> None:
        """A commit was written: fsync the log within :attr:`interval` (cheap; any thread)."""
        with self._cond:
            if not self._dirty:
                self._dirty = True
                self._cond.notify()

    def close(self) -> None:
        """Fsync what was committed, then stop the thread (blocking)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty and not self._closing:
                    self._cond.wait()
                if not self._closing:
                    # Let the commits of the next interval join this fsync.
                    self._cond.wait(self.interval)
                closing, self._dirty = self._closing, False
            self._sync()
            if closing:
                return

    def _sync(self) -> None:
        try:
            fd = self._open()
            if fd is not None:
                os.fsync(fd)
                self.syncs += 1
        except OSError as exc:  # the next commit tries again; the checkpoint fsyncs anyway
            log.warning("fsync of the store's log %s failed: %s", self.wal, exc)
            self._forget()

    def _open(self) -> int | None:
        """The log's descriptor, opened again if SQLite made a new file (or None: no log)."""
        try:
            now = os.stat(self.wal)
        except FileNotFoundError:
            self._forget()  # checkpointed and removed: nothing left to flush
            return None
        if self._fd is not None:
            held = os.fstat(self._fd)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return self._fd
            self._forget()
        self._fd = os.open(self.wal, os.O_RDONLY)
        return self._fd

    def _forget(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
