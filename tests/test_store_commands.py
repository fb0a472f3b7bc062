"""The store's commands: a target without an outcome row is pending (SQLite and PostgreSQL).

Set ``CORRAL_TEST_POSTGRES_DSN`` to run these on PostgreSQL as well.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.records import CommandRow, OutcomeRow
from corral.store import Store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await Store.open(store_url)
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
