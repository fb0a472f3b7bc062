"""When a SQLite commit reaches the disk (``store_fsync_interval``, store/_fsync.py).

Above zero the writer commits with ``synchronous=NORMAL`` (answered once the OS has the log
frames: kill -9 of any process loses nothing, which tests/test_tasks_processes.py checks) and
a thread fsyncs the log within the interval, and on close; zero fsyncs every commit before
answering (``synchronous=FULL``). PostgreSQL commits as its server says: no fsync thread.
A power loss cannot be provoked here; what is checked is that the fsyncs happen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection

from conftest import eventually, scaled
from corral.records import AuditEntry
from corral.store import SqlStore
from corral.store._fsync import LogSync
from corral.store.writer import Unit

# PRAGMA synchronous reads back as a number.
_NORMAL, _FULL = 1, 2


def _synchronous(conn: Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


def _synced_past(sync: LogSync, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return sync.syncs > count

    return check


async def _entry(store: SqlStore, n: int) -> None:
    await store.commit(audit=[AuditEntry(at=float(n), actor="t", action="a", target=str(n))])


async def test_a_commit_is_answered_before_its_fsync_which_follows_within_the_interval(
    tmp_path: Path,
) -> None:
    async with await SqlStore.open(str(tmp_path / "corral.db"), 0.05) as store:
        sync = store.writer.log_sync
        assert sync is not None and sync.wal == tmp_path / "corral.db-wal"
        assert await store.write(Unit("read the pragma", _synchronous)) == _NORMAL
        before = sync.syncs
        await _entry(store, 1)
        await eventually(_synced_past(sync, before), scaled(5))
        # Many commits within one interval share an fsync.
        before = sync.syncs
        for n in range(2, 40):
            await _entry(store, n)
        await eventually(_synced_past(sync, before), scaled(5))
        assert sync.syncs - before < 38
    async with await SqlStore.open(str(tmp_path / "corral.db"), 0) as again:
        assert len(await again.audit_log()) == 39


async def test_closing_the_store_fsyncs_what_it_committed_without_waiting_the_interval(
    tmp_path: Path,
) -> None:
    store = await SqlStore.open(str(tmp_path / "corral.db"), 3600.0)
    sync = store.writer.log_sync
    assert sync is not None
    await _entry(store, 1)
    assert sync.syncs == 0  # an hour to go
    await store.close()
    assert sync.syncs == 1


async def test_zero_fsyncs_every_commit_before_answering(tmp_path: Path) -> None:
    async with await SqlStore.open(str(tmp_path / "corral.db"), 0) as store:
        assert store.writer.log_sync is None
        assert await store.write(Unit("read the pragma", _synchronous)) == _FULL


async def test_postgresql_has_no_fsync_thread(store_url: str) -> None:
    if store_url.endswith(".db"):
        pytest.skip("PostgreSQL only")
    async with await SqlStore.open(store_url, 0.05) as store:
        assert store.writer.log_sync is None
