"""A damaged, empty, foreign or too-new store is refused at start, never served (issue #12, 5).

Real SQLite files, real PostgreSQL (``CORRAL_TEST_POSTGRES_DSN``) and the real `corral` CLI.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import child_env, corral_argv, scaled
from corral.config import Config
from corral.errors import StoreError
from corral.store import open_store
from test_store import sync_url

WAY_OUT = "Restore the store from a backup"


def _corral(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        corral_argv(config, *args),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def test_zero_byte_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    path.touch()
    with pytest.raises(StoreError, match=r"corral\.db: the file is empty \(0 bytes\)") as info:
        await open_store(str(path))
    assert WAY_OUT in str(info.value) and "move the file away" in str(info.value)
    assert path.stat().st_size == 0  # not silently turned into a brand-new store


async def test_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5000))
    with pytest.raises(StoreError, match="is not a SQLite database") as info:
        await open_store(str(path))
    assert WAY_OUT in str(info.value)


async def test_sqlite_file_without_corral_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, blob BLOB)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"not a corral store \(no table alembic_version") as e:
        await open_store(str(path))
    assert "it has photos" in str(e.value)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"photos"}  # no corral tables were added to someone else's database


async def test_random_bytes_in_the_middle_are_caught_by_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    async with await open_store(str(path)) as store:
        await store.set_meta("before", "damage")
    # Enough rows that every page in the middle of the file holds table or index data.
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        ((f"key-{i:06d}", f"value {i} " * 20) for i in range(8000)),
    )
    conn.commit()
    conn.close()
    assert not Path(f"{path}-wal").exists()  # everything is in the main file
    size = path.stat().st_size
    assert size > 1_000_000
    async with await open_store(str(path)) as store:  # healthy: opens fine
        assert await store.get_meta("before") == "damage"

    offset = (size // 2) // 4096 * 4096
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(random.Random(12).randbytes(64 * 1024))
    damaged = path.read_bytes()
    with pytest.raises(StoreError, match=r"corral\.db: the file is damaged") as info:
        await open_store(str(path))
    assert WAY_OUT in str(info.value) and "docs/operations.md" in str(info.value)
    assert path.read_bytes() == damaged  # nothing was written to the damaged file


async def test_new_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "corral.db"
    async with await open_store(str(path)) as store:
        await store.set_meta("k", "v")  # a write, so the -wal and -shm exist
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        for side in ("-wal", "-shm"):
            assert Path(f"{path}{side}").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir() if ".new" in p.name) == []


async def test_schema_newer_than_the_code_is_refused(store_url: str) -> None:
    async with await open_store(store_url):
        pass
    engine = create_engine(sync_url(store_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    with pytest.raises(StoreError, match="revision 0099_from_the_future") as info:
        await open_store(store_url)
    message = str(info.value)
    assert "a newer corral wrote it" in message and "knows up to 0" in message
    engine = create_engine(sync_url(store_url))
    with engine.begin() as conn:  # no migration ran over it
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert [r[0] for r in rows] == ["0099_from_the_future"]


def test_init_creates_the_store_private_and_refuses_a_damaged_one(
    tmp_path: Path, config: Config
) -> None:
    bare = Config(data_dir=str(tmp_path / "fresh"), nats_port=config.nats_port)
    result = _corral(bare, "init", "--no-tls")
    assert result.returncode == 0, result.stderr
    store = tmp_path / "fresh" / "corral.db"
    assert str(store) in result.stdout.replace("\n", "")  # rich wraps long lines
    assert store.stat().st_mode & 0o777 == 0o600

    store.write_bytes(b"")
    again = _corral(bare, "init", "--no-tls")
    assert again.returncode == 1
    said = " ".join(again.stderr.split())
    assert "the file is empty (0 bytes)" in said and "Traceback" not in said
