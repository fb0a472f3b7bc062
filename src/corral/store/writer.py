"""The store's one writer: a thread that owns the store's write connection and group-commits.

Theory of operation: every write of the store (the registry's flush, task instances, tokens,
users, audit entries, idempotency keys, a node forgotten) is a :class:`Unit`: a function that
writes it on a blocking SQLAlchemy connection. Callers on the event loop hand a unit to
:meth:`Writer.write` and await its answer; they never touch the disk. One thread takes every
unit pending at once and writes them in one transaction (group commit: a thousand changes cost
one fsync), then answers each unit with what its function returned, only after the commit.

A failure is sorted by :func:`~corral.store._errors.is_transient`:

- *transient* (database locked, connection lost...): the transaction is rolled back and every
  unit of the group is answered with :class:`~corral.errors.TransientStoreError`; nothing of it
  was written, and the caller retries with :class:`~corral.store.writes.Backoff`.
- *data* (a record the database refuses): the group is written again in one transaction, each
  unit in a savepoint of its own. A unit that can isolate its bad records (a batch of records,
  see :mod:`corral.store.writes`) does so and commits the rest; a unit that cannot is refused
  to its caller alone (:class:`~corral.errors.StoreError` with the database's reason). The
  other units commit as if nothing happened.

There is one writer per open store, hence one SQLite writer per process: a write never waits
on SQLite's lock held by another part of the same controller (issue #14: a task commit run
on the event loop waited 5 s for the registry's flush, froze the loop and failed "database
is locked"). Reads use the async engine beside it (SQLite's WAL lets them run during writes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncConnection

from corral.errors import NotLeader, StoreError

from ._engine import engine_options, listen_connects, sqlite_path
from ._errors import WRITE_FAILURES, is_transient, translate
from ._fsync import LogSync
from ._url import sync_url

__all__ = ["CommittedThenCancelled", "Fence", "Unit", "Writer"]

log = logging.getLogger("corral.store")

R = TypeVar("R")

# Units written in one transaction at most: bounds the work one failure has to redo.
_MAX_GROUP = 512

#: On PostgreSQL, a writer's session idle inside a transaction this long (milliseconds) is
#: ended by the server: a leader paused mid-transaction then releases its lock on the lease
#: row well within a lease, so a standby can take over (corral.store.lease).
IDLE_IN_TRANSACTION_MS = 3000

#: Runs first in every transaction of the writer; raises NotLeader to refuse the whole group.
Fence = Callable[[Connection], None]


class CommittedThenCancelled(asyncio.CancelledError):
    """The awaiting task was cancelled while its unit was being written, and it committed.

    A caller that keeps what it wrote for a retry on failure must not keep it then: it is on
    disk. Everything else treats this as the cancellation it is.
    """


@dataclass(eq=False)
class Unit(Generic[R]):
    """One caller's write.

    Attributes:
        what: What it does, as a verb phrase for error messages (``"store a user"``).
        write: Writes it on a connection inside the group's transaction; returns its answer.
        isolate: After a data failure, writes what passes of it and returns its answer (a
            batch bisects to its bad records, see :mod:`corral.store.writes`); ``None``: the
            unit is written whole or refused.
    """

    what: str
    write: Callable[[Connection], R]
    isolate: Callable[[Connection], R] | None = None


@dataclass(eq=False)
class _Pending:
    unit: Unit[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    #: set by the writer before it answers: whether the unit is on disk
    committed: bool = False


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _translated(exc: BaseException, what: str, where: str) -> BaseException:
    """``exc`` as the caller gets it: a :class:`StoreError` for anything from the database."""
    try:
        with translate(what, where):
            raise exc
    except BaseException as out:  # noqa: BLE001 - returned, not swallowed
        return out


class Writer:
    """The thread that writes every unit of one store (see the module's documentation).

    Args:
        url: The store's normalized URL (its blocking driver twin is used).
        masked: The URL with its password hidden, for error messages.
        fsync_interval: On SQLite, most seconds between a commit and its fsync (commits
            are answered once written to the OS, see :mod:`._fsync`); 0 fsyncs every
            commit before answering. Ignored on PostgreSQL.
    """

    def __init__(self, url: str, masked: str, fsync_interval: float = 0.0) -> None:
        options = engine_options(url)
        # One connection, used by the writer's thread only; checked before use on PostgreSQL
        # so a restarted server costs a reconnection, not a failed group.
        postgresql = sync_url(url).get_backend_name() == "postgresql"
        if postgresql:
            options.setdefault("connect_args", {})["options"] = (
                f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
            )
        self._engine: Engine = create_engine(
            sync_url(url), pool_size=1, max_overflow=0, pool_pre_ping=postgresql, **options
        )
        self._sqlite = self._engine.dialect.name == "sqlite"
        database = sqlite_path(url) if self._sqlite else None
        #: the log's bounded-delay fsync (None: every commit is fsynced, or PostgreSQL)
        self.log_sync = (
            None if database is None or fsync_interval <= 0 else LogSync(database, fsync_interval)
        )
        listen_connects(self._engine, "FULL" if self.log_sync is None else "NORMAL")
        self._masked = masked
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        #: transactions committed, and units answered (for tests and benchmarks)
        self.commits = 0
        self.units = 0
        #: called with each committed transaction's seconds and units (metrics; a no-op hook)
        self.observe: Callable[[float, int], None] | None = None
        #: checks, first in every transaction, that this process may write (the leader's
        #: epoch, see corral.store.lease); ``None``: no check (one controller, tools)
        self.fence: Fence | None = None
        #: called (on the writer's thread) with the refusal when the fence refused a group
        self.on_fenced: Callable[[NotLeader], None] | None = None
        self._thread = threading.Thread(target=self._run, name="corral-store-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<Writer {self._masked!r} pending={len(self._queue)} commits={self.commits}>"

    @property
    def pending(self) -> int:
        """Units waiting for the writer to take them."""
        return len(self._queue)

    async def write(self, unit: Unit[R]) -> R:
        """Write ``unit`` with whatever else is pending; return its answer once committed.

        If the awaiting task is cancelled before the writer took the unit, it is withdrawn
        (nothing of it is written). If the writer already took it, the cancellation waits for
        the commit's outcome: :class:`CommittedThenCancelled` if it is on disk, else a plain
        cancellation.

        Raises:
            TransientStoreError: A failure a retry may cure; nothing of the unit was written.
            StoreError: The store refused the unit (nothing of it was written), or is closed.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(unit, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise StoreError(
                    f"cannot {unit.what}: the store {self._masked} is closed; open it again "
                    "with corral.store.open_store"
                )
            self._queue.append(pending)
            self._cond.notify()
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            with self._cond:
                if pending in self._queue:
                    self._queue.remove(pending)
                    raise
            # Taken: wait for the outcome, however often we are cancelled meanwhile, so the
            # caller knows whether what it wrote is on disk.
            while not pending.future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([pending.future])  # never cancels the future
            pending.future.exception()  # retrieved: the outcome is told below
            if pending.committed:
                raise CommittedThenCancelled() from None
            raise

    async def close(self) -> None:
        """Write what is pending, stop the thread and close its connection."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        if self.log_sync is not None:
            await asyncio.to_thread(self.log_sync.close)  # what was answered reaches the disk
        self._engine.dispose()

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                group = [self._queue.popleft() for _ in range(min(len(self._queue), _MAX_GROUP))]
            try:
                self._commit(group)
            except Exception as exc:  # a bug here must not kill the writer
                log.exception("store writer failed")
                for p in group:
                    self._answer(p, None, exc)

    def _begin(self, conn: Connection) -> None:
        if self._sqlite:
            # pysqlite opens its transaction lazily, at the first INSERT: without an explicit
            # BEGIN, releasing the first savepoint would commit on its own.
            conn.exec_driver_sql("BEGIN")

    def _commit(self, group: list[_Pending]) -> None:
        results: list[Any] = []
        began = time.perf_counter()
        try:
            with self._engine.connect() as conn, conn.begin():
                if self.fence is not None:
                    self.fence(conn)
                for p in group:  # no savepoints here: pysqlite's lazy BEGIN will do
                    results.append(p.unit.write(conn))
        except NotLeader as exc:
            self._fenced(group, exc)
            return
        except WRITE_FAILURES as exc:
            if is_transient(exc):
                for p in group:
                    self._answer(p, None, _translated(exc, p.unit.what, self._masked))
                return
            if len(group) == 1 and group[0].unit.isolate is None:
                self._answer(group[0], None, _translated(exc, group[0].unit.what, self._masked))
                return
            self._isolate(group)
            return
        except Exception:
            if len(group) == 1 and group[0].unit.isolate is None:
                raise  # a bug in the unit: its caller gets the error (see _run)
            self._isolate(group)
            return
        self._committed()
        for p, result in zip(group, results, strict=True):
            p.committed = True
            self._answer(p, result, None)
        if self.observe is not None:
            try:
                self.observe(time.perf_counter() - began, len(group))
            except Exception:  # a metrics hook is never fatal
                log.exception("store commit hook failed")

    def _isolate(self, group: list[_Pending]) -> None:
        """Write the group again, each unit in a savepoint: refuse only the units that fail."""
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            with self._engine.connect() as conn, conn.begin():
                self._begin(conn)
                if self.fence is not None:
                    self.fence(conn)
                for p in group:
                    write = p.unit.isolate or p.unit.write
                    try:
                        with conn.begin_nested():
                            outcomes.append((write(conn), None))
                    except WRITE_FAILURES as exc:
                        if is_transient(exc):
                            raise
                        outcomes.append((None, _translated(exc, p.unit.what, self._masked)))
                    except Exception as exc:  # a bug in this unit: refuse it alone
                        outcomes.append((None, exc))
        except NotLeader as exc:
            self._fenced(group, exc)
            return
        except WRITE_FAILURES as exc:
            for p in group:
                self._answer(p, None, _translated(exc, p.unit.what, self._masked))
            return
        self._committed()
        for p, (result, error) in zip(group, outcomes, strict=True):
            p.committed = error is None
            self._answer(p, result, error)

    def _committed(self) -> None:
        self.commits += 1
        if self.log_sync is not None:
            self.log_sync.committed()

    def _fenced(self, group: list[_Pending], exc: NotLeader) -> None:
        """The fence refused the group: nothing of it was written; tell the controller (which
        steps down), then its callers: the hook is queued on the loop first, so a caller that
        sees the refusal finds the controller already told."""
        if self.on_fenced is not None:
            try:
                self.on_fenced(exc)
            except Exception:  # the hook must not kill the writer
                log.exception("store fence hook failed")
        for p in group:
            self._answer(p, None, exc)

    def _answer(self, p: _Pending, result: Any, error: BaseException | None) -> None:
        self.units += 1
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
            p.loop.call_soon_threadsafe(_settle, p.future, result, error)


class Tables(Protocol):
    """What a group of tables (:mod:`.tasks`, :mod:`.auth`) needs of the open store: one
    writer for every write, connections for reads, and names for messages."""

    @property
    def masked_url(self) -> str:
        """The URL with any password hidden, for error messages."""
        ...

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        ...

    async def write(self, unit: Unit[R]) -> R:
        """Write ``unit`` through the store's one writer; answered after its commit."""
        ...

    def reader(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for reads."""
        ...
