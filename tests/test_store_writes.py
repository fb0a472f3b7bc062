"""Poison-proof writes (issue #12): a record the database refuses never stalls its writer.

The isolation core through plain calls; then a property test of the store's writers on
SQLite and PostgreSQL: random batches with poisoned records always commit, every good record
as given, every bad one repaired (its text escaped) or refused; and the next write works.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from typing import Any

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from corral.core.taskstate import TaskInstance
from corral.core.text import escape, has_nul
from corral.errors import TransientStoreError
from corral.records import AuditEntry, CommandRow, NodeRecord, OutcomeRow, Transition
from corral.store import Store, open_store
from corral.store._errors import is_transient
from corral.store.schema import command_outcomes
from corral.store.writes import Backoff, Isolation

# --- the isolation core -----------------------------------------------------------------------


def _drive(units: list[int], bad: set[int], fixable: set[int]) -> tuple[Isolation[int], list[int]]:
    """Run an isolation where ``bad`` units fail, and a ``fixable`` one passes repaired."""

    def repair(unit: int, level: int, why: str) -> int | None:
        return -unit if unit in fixable and level == 0 else None

    plan = Isolation(units, repair)
    written: list[int] = []
    while (group := plan.next()) is not None:
        if any(u in bad for u in group):  # a repaired unit is negative: it passes
            plan.failed(f"bad {sorted(u for u in group if u in bad)}")
        else:
            written.extend(group)
            plan.ok()
    return plan, written


@given(
    st.lists(st.integers(1, 10_000), unique=True, max_size=200),
    st.data(),
)
def test_isolation_writes_every_good_unit_once_and_refuses_only_the_bad(
    units: list[int], data: st.DataObject
) -> None:
    bad = set(data.draw(st.lists(st.sampled_from(units), unique=True))) if units else set()
    fixable = set(data.draw(st.lists(st.sampled_from(sorted(bad)), unique=True))) if bad else set()
    plan, written = _drive(units, bad, fixable)
    good = [u for u in units if u not in bad]
    assert sorted(u for u in written if u > 0) == sorted(good)
    assert sorted(-u for u in written if u < 0) == sorted(fixable)
    assert {units[i] for i in plan.refused} == bad - fixable
    assert {units[i] for i in plan.repaired} == fixable
    # Bounded work: each bad unit costs at most a path of splits, not a retry loop.
    assert plan.attempts <= 1 + 2 * len(bad) * (len(units).bit_length() + 2)


def test_isolation_of_nothing_does_nothing() -> None:
    plan, written = _drive([], set(), set())
    assert plan.attempts == 0 and written == [] and plan.result(lambda _: "x").refused == []


def test_backoff_grows_to_its_cap_and_expires_at_its_bound() -> None:
    b = Backoff(first=0.1, cap=0.5, bound=10.0)
    delays = [b.failed(100.0 + i) for i in range(5)]
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert not b.expired(109.9) and b.expired(110.0)
    b.succeeded()
    assert b.failed(500.0) == 0.1 and not b.expired(500.0)


# --- classification -------------------------------------------------------------------------


def _pg(state: str) -> psycopg.Error:
    exc = psycopg.errors.lookup(state)("x")
    return sa_exc.DBAPIError("stmt", {}, exc)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_pg("40001"), True),  # serialization failure
        (_pg("40P01"), True),  # deadlock
        (_pg("55P03"), True),  # lock not available
        (_pg("08006"), True),  # connection failure
        (_pg("57014"), True),  # statement timeout
        (_pg("22021"), False),  # bad encoding
        (_pg("23505"), False),  # unique violation
        (_pg("22003"), False),  # numeric value out of range
        (_pg("54000"), False),  # program limit exceeded (value too large to index)
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (sqlite3.OperationalError("database is locked"), None),
        (sqlite3.IntegrityError("NOT NULL constraint failed"), False),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), False),
        (ConnectionResetError(), True),
    ],
)
def test_failures_are_sorted_transient_or_data(exc: BaseException, transient: bool | None) -> None:
    if transient is None:  # sqlite3 sets the result code only on errors it raised itself
        exc.sqlite_errorcode = 5  # type: ignore[attr-defined]
        transient = True
    assert is_transient(exc) is transient


# --- the writers, with random poisoned batches ----------------------------------------------

_ids = itertools.count(1)
_BIG = 2**70  # past any integer column (and past SQLite's 64 bits)

# poison -> (kind -> what a record of that kind becomes)
POISONS = ("none", "nul_text", "nul_json", "big_int", "null")


def _record(kind: str, poison: str, n: int) -> Any:
    text = "x\x00y" if poison == "nul_text" else f"t{n}"
    json = {"v": "j\x00k"} if poison == "nul_json" else {"v": n}
    null: Any = None if poison == "null" else "ok"
    big = _BIG if poison == "big_int" else 7
    if kind == "nodes":
        return NodeRecord(
            name=f"n{n}",
            status=null,
            since=1.0,
            last_seen=2.0,
            joined_at=1.0,
            attributes=json,
            host=text,
            pid=big,
        )
    if kind == "transitions":
        return Transition(node=f"n{n}", old="UP", new=null, at=float(n), reason=text)
    if kind == "audit":
        return AuditEntry(at=float(n), actor=f"a{n}", action=null, target=text, detail=json)
    if kind == "commands":
        return CommandRow(
            serial=_BIG if poison == "big_int" else n,
            created=1.0,
            actor=f"a{n}",
            kind=null,
            name=text,
            targets=[json["v"]],
            nodes=[],
            unknown=[],
            retire_after=1.0,
        )
    return OutcomeRow(
        serial=n, node="w", state=null, at=1.0, result=json, exit_code=big, stderr=text
    )


def _expected(kind: str, poison: str, backend: str) -> str:
    """``as-is``, ``repaired`` or ``refused``."""
    if poison == "none" or poison == "nul_json":  # JSON columns take an escaped NUL
        return "as-is"
    if poison == "null":
        return "refused"
    if poison == "big_int":
        if kind in ("transitions", "audit"):
            return "as-is"  # these have no integer column to poison
        return "refused" if kind == "commands" else "repaired"
    # nul_text: SQLite keeps a NUL, PostgreSQL refuses it in text
    if backend == "sqlite":
        return "as-is"
    return "refused" if kind == "commands" else "repaired"


async def _stored(store: Store, kind: str, record: Any) -> Any:
    if kind == "nodes":
        return await store.get_node(record.name)
    if kind == "transitions":
        found = await store.transitions(node=record.node)
        return found[0] if found else None
    if kind == "audit":
        return next((a for a in await store.audit_log(10_000) if a.actor == record.actor), None)
    if kind == "commands":
        got = await store.get_command(record.serial) if record.serial < 2**62 else None
        return msgspec.structs.replace(got[0], body=b"") if got else None
    o = command_outcomes
    async with store.reader() as conn:
        row = (
            (await conn.execute(select(o).where(o.c.serial == record.serial, o.c.node == "w")))
            .mappings()
            .first()
        )
    return None if row is None else OutcomeRow(**row)


KINDS = ("nodes", "transitions", "audit", "commands", "outcomes")
batches = st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(POISONS)), max_size=24)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=batches)
def test_the_store_writer_never_stalls_and_loses_no_good_record(
    store_url: str, batch: list[tuple[str, str]]
) -> None:
    asyncio.run(_check_store_batch(store_url, batch))


async def _check_store_batch(url: str, batch: list[tuple[str, str]]) -> None:
    async with await open_store(url) as store:
        items = [(kind, poison, _record(kind, poison, next(_ids))) for kind, poison in batch]
        args: dict[str, list[Any]] = {k: [] for k in KINDS}
        for kind, _, record in items:
            args[kind].append(record)
        written = await store.commit(**args)
        refused = {id(r.record) for r in written.refused}
        repaired = {id(r.record): r.stored for r in written.repaired}
        for kind, poison, record in items:
            want = _expected(kind, poison, store.backend)
            stored = await _stored(store, kind, record)
            if want == "as-is":
                assert stored == record, (kind, poison)
                assert id(record) not in refused and id(record) not in repaired
            elif want == "repaired":
                assert id(record) in repaired, (kind, poison, written)
                assert stored == repaired[id(record)]
                assert not has_nul(msgspec.structs.asdict(stored))
            else:
                assert id(record) in refused, (kind, poison, written)
                assert stored is None
        # The writer is not stuck: the next batch goes through as given.
        after = _record("nodes", "none", next(_ids))
        assert (await store.commit(nodes=[after])).refused == []
        assert await store.get_node(after.name) == after


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(poisons=st.lists(st.sampled_from(("none", "nul", "big")), min_size=1, max_size=30))
def test_the_task_writer_never_stalls_and_keeps_every_instance(
    store_url: str, poisons: list[str]
) -> None:
    asyncio.run(_check_task_batch(store_url, poisons))


async def _check_task_batch(url: str, poisons: list[str]) -> None:
    async with await open_store(url) as store:
        tasks = store.tasks
        rows = []
        for poison in poisons:
            inst = TaskInstance(
                id=next(_ids),
                key="k",
                args=b"\x00\x01",  # bytes keep their NUL: not text
                error="Type\x00Error" if poison == "nul" else "",
                traceback="tb\x00" if poison == "nul" else "",
                history=[{"event": "e\x00"}] if poison == "nul" else [],
                item=_BIG if poison == "big" else None,
            )
            rows.append(msgspec.structs.asdict(inst))
        written = await tasks.commit(rows)
        stored = {i.id: i for i in await tasks.get_many(r["id"] for r in rows)}
        refused = {r.record["id"] for r in written.refused}
        for poison, row in zip(poisons, rows, strict=True):
            if poison == "big":  # no version fits an integer column: refused
                assert row["id"] in refused and row["id"] not in stored
                continue
            inst = stored[row["id"]]
            assert inst.args == b"\x00\x01"
            if poison == "nul" and store.backend == "postgresql":
                assert inst.error == escape(row["error"]) == "Type\\x00Error"
                assert inst.history == [{"event": "e\\x00"}]
            else:
                assert inst.error == row["error"] and inst.history == row["history"]
        extra = msgspec.structs.asdict(TaskInstance(id=next(_ids), key="k", args=b""))
        assert (await tasks.commit([extra])).refused == []


async def test_a_refused_command_takes_its_audit_entry_with_it(store_url: str) -> None:
    async with await open_store(store_url) as store:
        bad = _record("commands", "null", 501)
        entry = AuditEntry(at=1.0, actor="op", action="command", target="x", detail={"serial": 501})
        other = AuditEntry(at=2.0, actor="op2", action="enroll", target="y")
        written = await store.commit(audit=[entry, other], commands=[bad])
        assert written.refused_of("commands") == [bad]
        assert await store.get_command(501) is None
        assert [a.actor for a in await store.audit_log()] == ["op2"]


# --- transient failures, for real -----------------------------------------------------------


async def test_a_locked_sqlite_file_is_a_transient_failure_and_nothing_is_written(
    tmp_path: Any,
) -> None:
    path = tmp_path / "corral.db"
    async with await open_store(str(path)) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("PRAGMA busy_timeout=0")
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(TransientStoreError, match="locked"):
                await store.commit(nodes=[_record("nodes", "none", 900)])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await store.get_node("n900") is None
        written = await store.commit(nodes=[_record("nodes", "none", 900)])
        assert written.refused == [] and await store.get_node("n900") is not None
