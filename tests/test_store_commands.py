"""The store's commands: a target without an outcome row is pending (SQLite and PostgreSQL).

Set ``CORRAL_TEST_POSTGRES_DSN`` to run these on PostgreSQL as well.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from corral.records import CommandRow, OutcomeRow
from corral.store import Store, open_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    try:
        yield s
    finally:
        await s.close()


def command(serial: int, nodes: list[str], created: float = 100.0) -> CommandRow:
    return CommandRow(
        serial=serial,
        created=created,
        actor="admin",
        kind="command",
        name="noop",
        targets=["*"],
        nodes=nodes,
        unknown=[],
        retire_after=120.0,
        body=b"body",
    )


def outcome(serial: int, node: str, state: str, at: float = 101.0) -> OutcomeRow:
    return OutcomeRow(
        serial=serial,
        node=node,
        state=state,
        at=at,
        result=node if state == "done" else None,
        error="gone" if state == "expired" else "",
        exit_code=None,
        stdout="",
        stderr="",
    )


async def states(store: Store, serial: int) -> dict[str, str]:
    found = await store.get_command(serial)
    assert found is not None
    row, outcomes = found
    assert [o.node for o in outcomes] == sorted(row.nodes)  # every target, by name
    return {o.node: o.state for o in outcomes}


async def test_targets_are_pending_until_their_outcome_is_written(store: Store) -> None:
    await store.commit(commands=[command(1, ["c", "a", "b"]), command(2, ["a"])])
    assert await states(store, 1) == {"a": "pending", "b": "pending", "c": "pending"}
    found = await store.get_command(1)
    assert found is not None and found[1][0].at == 100.0  # pending since it was sent
    assert [(r.serial, c) for r, c in await store.recent_commands()] == [
        (2, {"pending": 1}),
        (1, {"pending": 3}),
    ]
    assert [r.serial for r, _ in await store.open_commands(since=0.0)] == [1, 2]

    await store.commit(outcomes=[outcome(1, "a", "done"), outcome(1, "b", "running")])
    await store.commit(outcomes=[outcome(1, "b", "expired"), outcome(2, "a", "failed")])
    assert await states(store, 1) == {"a": "done", "b": "expired", "c": "pending"}
    counts = dict((r.serial, c) for r, c in await store.recent_commands())
    assert counts == {1: {"done": 1, "expired": 1, "pending": 1}, 2: {"failed": 1}}
    opened = await store.open_commands(since=0.0)
    assert [(r.serial, [o.state for o in outs]) for r, outs in opened] == [
        (1, ["done", "expired", "pending"])
    ]

    await store.commit(outcomes=[outcome(1, "c", "running")])
    assert [r.serial for r, _ in await store.open_commands(since=0.0)] == [1]  # not final
    await store.commit(outcomes=[outcome(1, "c", "done")])
    assert await store.open_commands(since=0.0) == []
    assert await store.open_commands(since=200.0) == []
    assert await store.last_command_serial() == 2


def command_row(serial: int, nodes: list[str], created: float = 100.0) -> CommandRow:
    return msgspec.structs.replace(command(serial, nodes, created), body=b"\x81\xa1x\x01")


def outcome_row(serial: int, node: str, state: str, **kw: object) -> OutcomeRow:
    return OutcomeRow(serial=serial, node=node, state=state, at=101.0, **kw)  # type: ignore[arg-type]


async def test_commands_start_pending_and_outcomes_replace_by_serial_and_node(store: Store) -> None:
    assert await store.last_command_serial() == 0
    await store.commit(commands=[command_row(1, ["a", "b"]), command_row(2, ["a"])])
    assert await store.last_command_serial() == 2
    found = await store.get_command(1)
    assert found is not None
    row, outcomes = found
    assert (row.nodes, row.body) == (["a", "b"], b"")  # bodies stay put
    assert [(o.node, o.state) for o in outcomes] == [("a", "pending"), ("b", "pending")]
    await store.commit(
        outcomes=[
            outcome_row(1, "a", "done", result={"ok": [1, 2]}),
            outcome_row(1, "b", "failed", error="boom", exit_code=3, stderr="trace"),
        ]
    )
    _, outcomes = await store.get_command(1)  # type: ignore[misc]
    assert [(o.node, o.state, o.result, o.error, o.exit_code) for o in outcomes] == [
        ("a", "done", {"ok": [1, 2]}, "", None),
        ("b", "failed", None, "boom", 3),
    ]
    assert await store.get_command(99) is None


async def test_history_pages_newest_first_with_counts(store: Store) -> None:
    await store.commit(commands=[command_row(s, ["a", "b", "c"]) for s in range(1, 6)])
    await store.commit(outcomes=[outcome_row(5, "a", "done"), outcome_row(5, "b", "done")])
    page = await store.recent_commands(limit=2)
    assert [(r.serial, counts) for r, counts in page] == [
        (5, {"done": 2, "pending": 1}),
        (4, {"pending": 3}),
    ]
    rest = await store.recent_commands(limit=10, before=4)
    assert [r.serial for r, _ in rest] == [3, 2, 1]
    assert await store.recent_commands(limit=0) == []


async def test_open_commands_are_those_with_a_node_not_finished(store: Store) -> None:
    await store.commit(
        commands=[
            command_row(1, ["a"], 10.0),
            command_row(2, ["a", "b"], 20.0),
            command_row(3, ["a"], 30.0),
        ]
    )
    await store.commit(
        outcomes=[
            outcome_row(2, "a", "done"),
            outcome_row(2, "b", "expired"),
            outcome_row(3, "a", "running"),
        ]
    )
    open_ = await store.open_commands(since=0.0)
    assert [(r.serial, r.body) for r, _ in open_] == [(1, b"\x81\xa1x\x01"), (3, b"\x81\xa1x\x01")]
    assert [r.serial for r, _ in await store.open_commands(since=15.0)] == [3]
