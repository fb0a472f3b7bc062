"""Tests for corral.store against a real SQLite file and, when configured, real PostgreSQL.

Set ``CORRAL_TEST_POSTGRES_DSN`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) to run
every store test on PostgreSQL as well; each test gets its own throwaway database.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from corral.errors import StoreError
from corral.store import AuditEntry, NodeRecord, Store, Transition, normalize_url, open_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open store on an empty database."""
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


def sync_url(url: str) -> str:
    """The database behind a store URL, through a sync driver, to look at it directly."""
    parsed = make_url(normalize_url(url))
    driver = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}
    return parsed.set(drivername=driver[parsed.get_backend_name()]).render_as_string(
        hide_password=False
    )


def node(name: str, **changes: object) -> NodeRecord:
    """A node row with every field set to something non-default."""
    row = NodeRecord(
        name=name,
        status="UP",
        since=1700000000.25,
        last_seen=1700000001.5,
        joined_at=1690000000.125,
        labels=("gpu", "zone=eu-1", "ünïcödé"),
        interfaces=("shell", "files"),
        attributes={"cpu": 64, "mem_gb": 251.5, "tags": ["a", "b"], "nested": {"ok": True}},
        host="host-é.example",
        pid=424242,
        version="0.1.0",
        slots=8,
        instance="9f86d081884c7d65",
        last_serial=2**40 + 7,
    )
    return msgspec.structs.replace(row, **changes)


# --- schema and lifecycle -----------------------------------------------------------------


async def test_open_migrates_and_is_idempotent(store_url: str) -> None:
    first = await open_store(store_url)
    second = await open_store(store_url)  # same database, migrations already at head
    try:
        await first.commit(nodes=[node("a")])
        assert [n.name for n in await second.load_nodes()] == ["a"]
    finally:
        await first.close()
        await second.close()
    engine = create_engine(sync_url(store_url))
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
    assert {"nodes", "node_transitions", "audit_log", "meta", "alembic_version"} <= tables
    assert {"commands", "command_outcomes", "task_instances", "api_tokens"} <= tables
    # The newest migration, whichever feature added it last.
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from corral.store._engine import MIGRATIONS

    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    assert version == ScriptDirectory.from_config(alembic).get_current_head()


async def test_sqlite_pragmas_and_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "corral.db"
    async with await open_store(str(path)) as s:
        assert s.backend == "sqlite"
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_data_survives_reopen(store_url: str) -> None:
    async with await open_store(store_url) as s:
        await s.commit(
            nodes=[node("a")],
            transitions=[Transition("a", "DOWN", "UP", 1.0)],
            audit=[AuditEntry(1.0, "alice", "join", "a")],
        )
        await s.set_meta("k", "v")
    async with await open_store(store_url) as s:
        assert await s.load_nodes() == [node("a")]
        assert len(await s.transitions()) == 1
        assert len(await s.audit_log()) == 1
        assert await s.get_meta("k") == "v"


async def test_repr_and_closed_store(store: Store) -> None:
    assert "open" in repr(store) and store.backend in repr(store)
    await store.close()
    await store.close()  # harmless
    assert "closed" in repr(store)
    with pytest.raises(StoreError, match="closed"):
        await store.load_nodes()


async def test_open_error_masks_password() -> None:
    # Nothing listens on port 1: open fails, but the message must not leak the password.
    with pytest.raises(StoreError) as info:
        await open_store("postgresql://corral:s3cret@127.0.0.1:1/corral")
    assert "s3cret" not in str(info.value)


# --- nodes --------------------------------------------------------------------------------


async def test_node_round_trip_every_field(store: Store) -> None:
    rows = [node("b"), node("a", labels=(), interfaces=(), attributes={}, status="REVOKED")]
    await store.commit(nodes=rows)
    loaded = await store.load_nodes()
    assert loaded == sorted(rows, key=lambda r: r.name)
    assert isinstance(loaded[0].labels, tuple) and isinstance(loaded[1].labels, tuple)
    assert await store.get_node("b") == rows[0]
    assert await store.get_node("missing") is None


async def test_upsert_replaces_existing_row(store: Store) -> None:
    await store.commit(nodes=[node("a")])
    changed = node("a", status="DOWN", since=5.0, labels=("x",), attributes={"v": 2}, pid=7)
    await store.commit(nodes=[changed])
    assert await store.load_nodes() == [changed]


async def test_duplicate_name_in_one_batch_last_wins(store: Store) -> None:
    await store.commit(nodes=[node("a", pid=1), node("a", pid=2)])
    assert [n.pid for n in await store.load_nodes()] == [2]


async def test_delete_node(store: Store) -> None:
    await store.commit(nodes=[node("a"), node("b")])
    assert await store.delete_node("a") is True
    assert await store.delete_node("a") is False
    assert [n.name for n in await store.load_nodes()] == ["b"]


async def test_batch_of_a_thousand_nodes(store: Store) -> None:
    rows = [node(f"n{i:04d}", last_seen=float(i), pid=i) for i in range(1000)]
    await store.commit(nodes=rows)
    await store.commit(
        nodes=[msgspec.structs.replace(r, status="DOWN") for r in rows]
    )  # all updates
    loaded = await store.load_nodes()
    assert len(loaded) == 1000
    assert loaded[999] == msgspec.structs.replace(rows[999], status="DOWN")


async def test_empty_commit_is_a_no_op(store: Store) -> None:
    await store.commit()
    assert await store.load_nodes() == []


# --- history ------------------------------------------------------------------------------


async def test_transitions_newest_first_filter_and_limit(store: Store) -> None:
    await store.commit(
        transitions=[
            Transition("a", "DOWN", "UP", 1.0, "joined"),
            Transition("b", "DOWN", "UP", 2.0),
            Transition("a", "UP", "DOWN", 3.0, "heartbeat timeout"),
            Transition("a", "DOWN", "UP", 3.0, "same instant, inserted later"),
        ]
    )
    everything = await store.transitions()
    assert [(t.node, t.at, t.reason) for t in everything] == [
        ("a", 3.0, "same instant, inserted later"),
        ("a", 3.0, "heartbeat timeout"),
        ("b", 2.0, ""),
        ("a", 1.0, "joined"),
    ]
    assert [t.at for t in await store.transitions(node="a")] == [3.0, 3.0, 1.0]
    assert await store.transitions(node="a", limit=1) == [everything[0]]
    assert await store.transitions(node="nobody") == []
    assert await store.transitions(limit=0) == []
    with pytest.raises(StoreError, match="limit"):
        await store.transitions(limit=-1)


async def test_audit_log_newest_first(store: Store) -> None:
    entries = [
        AuditEntry(1.0, "alice", "enroll", "a", {"why": "new rack", "n": 1}),
        AuditEntry(2.0, "bob", "revoke", "a"),
    ]
    await store.commit(audit=entries)
    await store.commit(audit=[AuditEntry(3.0, "ünï", "drain", "b", {"list": [1, 2]})])
    log = await store.audit_log()
    assert [e.at for e in log] == [3.0, 2.0, 1.0]
    assert log[2] == entries[0] and log[1] == entries[1]
    assert await store.audit_log(limit=1) == [log[0]]


async def test_a_refused_record_does_not_hold_up_its_batch(store: Store) -> None:
    # A NULL in a NOT NULL column makes the audit insert fail after the nodes were upserted:
    # that entry is refused (issue #12: it used to roll the whole batch back, for ever).
    bad = AuditEntry(1.0, "alice", "x", None)  # type: ignore[arg-type]
    written = await store.commit(nodes=[node("a")], audit=[bad])
    assert written.refused_of("audit") == [bad]
    assert "null" in written.refused[0].reason.lower()
    assert [n.name for n in await store.load_nodes()] == ["a"]
    assert await store.audit_log() == []


# --- meta ---------------------------------------------------------------------------------


async def test_meta_get_set(store: Store) -> None:
    assert await store.get_meta("authority") is None
    await store.set_meta("authority", "v1")
    await store.set_meta("authority", "v2 ✓")
    await store.set_meta("other", "")
    assert await store.get_meta("authority") == "v2 ✓"
    assert await store.get_meta("other") == ""


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["", "   ", "mysql://u@h/db", "http://example.com", "postgresql://h:notaport/db"]
)
async def test_bad_url_raises_store_error(url: str) -> None:
    with pytest.raises(StoreError, match="sqlite|SQLite|postgresql|PostgreSQL"):
        await open_store(url)


async def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(StoreError, match="in-memory"):
        await open_store("sqlite:///:memory:")


async def test_unreachable_postgres() -> None:
    with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1: .*DSN"):
        await open_store("postgresql://postgres@127.0.0.1:1/corral")


async def test_not_a_database_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(StoreError, match="cannot open SQLite database at .*junk.db"):
        await open_store(str(path))


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "corral.db"
    async with await open_store(str(path)):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    with pytest.raises(StoreError, match="newer corral"):
        await open_store(str(path))


async def test_unwritable_parent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open SQLite database"):
        await open_store(str(blocker / "sub" / "corral.db"))


async def test_sync_only_driver_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="async driver"):
        await open_store(f"sqlite+pysqlite:///{tmp_path / 'x.db'}")


# --- normalize_url ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/var/lib/corral.db", "sqlite+aiosqlite:////var/lib/corral.db"),
        ("data/corral.db", "sqlite+aiosqlite:///data/corral.db"),
        ("sqlite:///data/corral.db", "sqlite+aiosqlite:///data/corral.db"),
        ("sqlite:////abs/corral.db", "sqlite+aiosqlite:////abs/corral.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h:5433/db", "postgresql+psycopg://u:p@h:5433/db"),
        ("postgres://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("  postgresql://h/db\n", "postgresql+psycopg://h/db"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


def test_normalize_url_expands_home() -> None:
    assert normalize_url("~/corral.db") == "sqlite+aiosqlite:///" + os.path.expanduser(
        "~/corral.db"
    )


@given(st.text(max_size=60))
def test_normalize_url_parses_or_raises_store_error(text_: str) -> None:
    try:
        url = normalize_url(text_)
    except StoreError as exc:
        assert str(exc)
    else:
        assert make_url(url).get_backend_name() in ("sqlite", "postgresql")


@given(
    st.text(
        st.characters(whitelist_categories=("L", "N"), whitelist_characters="/._-"), min_size=1
    ).filter(lambda s: s.strip() and "://" not in s and not s.startswith("~"))
)
def test_normalize_url_paths_become_aiosqlite(path: str) -> None:
    url = normalize_url(path)
    assert url == f"sqlite+aiosqlite:///{path}"
    assert make_url(url).database == path
