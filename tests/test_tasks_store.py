"""The task store and API tokens on SQLite and, when CORRAL_TEST_POSTGRES_DSN is set, PostgreSQL."""

from __future__ import annotations

import pytest

from corral.core.taskstate import TaskInstance
from corral.errors import AuthenticationFailed, Forbidden, NoKey, UsageError
from corral.store import open_store
from corral.tokens import Role, TokenChecker, create_token, list_tokens, revoke_token


def row(inst: TaskInstance) -> dict[str, object]:
    import msgspec

    return msgspec.structs.asdict(inst)


async def test_upserts_load_the_unfinished_and_page_in_sql(store_url: str) -> None:
    async with await open_store(store_url) as store:
        tasks = store.tasks
        assert await tasks.max_id() == 0
        batch = [
            TaskInstance(id=i, key="k" if i % 2 else "j", args=b"\x81\xa1x\x01", queued_at=i)
            for i in range(1, 26)
        ]
        batch[0].history = [{"attempt": 1, "node": "n", "started": 1.0}]
        await tasks.commit([row(i) for i in batch])
        batch[0].status, batch[0].result = "complete", b"\x05"
        batch[1].status, batch[1].parent, batch[1].item = "running", 1, 0
        batch[24].status = "assigned"  # prefetched by a node: unfinished, loaded back too
        await tasks.commit([row(batch[0]), row(batch[1]), row(batch[24])])  # a later write replaces
        assert await tasks.max_id() == 25
        active = await tasks.load_active()
        assert [i.id for i in active] == list(range(2, 26))
        assert active[-1].status == "assigned"
        first = await tasks.get(1)
        assert first is not None and first.result == b"\x05" and first.args == b"\x81\xa1x\x01"
        assert first.history == [{"attempt": 1, "node": "n", "started": 1.0}]
        page = await tasks.page(key="k", page=1, per_page=5)
        assert (page.total, page.pages, page.next, page.prev) == (13, 3, 2, None)
        assert [i.id for i in page.items] == [25, 23, 21, 19, 17]
        last = await tasks.page(key="k", page=99, per_page=5)
        assert last.page == 3 and [i.id for i in last.items] == [5, 3, 1]
        queued = await tasks.page(statuses=["queued"], newest_first=False, per_page=3)
        assert [i.id for i in queued.items] == [3, 4, 5] and queued.total == 22
        top = await tasks.page(toplevel=True, per_page=100)
        assert 2 not in {i.id for i in top.items} and top.total == 24
        assert await tasks.keys() == ["j", "k"]
        batch[6].parent, batch[6].item = 1, 1
        await tasks.commit([row(batch[6])])
        assert [(c.id, c.item) for c in await tasks.children(1)] == [(2, 0), (7, 1)]
        assert await tasks.children(3) == []


async def test_every_field_of_an_instance_comes_back_as_written(store_url: str) -> None:
    # SQLite's rows go to the driver as tuples built by corral (JSON, booleans): the same
    # values must come back as through SQLAlchemy's own parameter processing.
    full = TaskInstance(
        id=7,
        key="k",
        args=b"\x00\x81",
        priority=2,
        status="cancel-requested",
        parent=3,
        item=1,
        labels=["gpu", "x"],
        node="n1",
        worker=1,
        lease="L",
        attempts=2,
        max_attempts=5,
        queued_at=1.5,
        started_at=2.5,
        finished_at=None,
        progress=42.0,
        message="half",
        result=b"\x01",
        error="e",
        traceback="tb",
        force=True,
        cancel_at=3.5,
        history=[{"attempt": 1, "node": "n1", "started": 2.5, "ended": 3.0}],
        logs="out\n",
    )
    async with await open_store(store_url) as store:
        await store.tasks.commit([row(full), row(TaskInstance(id=8, key="k"))])
        assert await store.tasks.get(7) == full
        assert await store.tasks.get(8) == TaskInstance(id=8, key="k")


async def test_tokens_are_checked_by_role_and_revoked(store_url: str) -> None:
    async with await open_store(store_url) as store:
        token, text = await create_token(store, Role.OPERATE, "ops")
        checker = TokenChecker(store, ttl=0.0)
        assert (await checker.check(text, Role.READ)).id == token.id
        assert (await checker.check(text, Role.OPERATE)).role == "operate"
        with pytest.raises(Forbidden, match="needs 'execute'"):
            await checker.check(text, Role.EXECUTE)
        with pytest.raises(NoKey):
            await checker.check(None, Role.READ)
        with pytest.raises(AuthenticationFailed):
            await checker.check(text + "x", Role.READ)
        with pytest.raises(AuthenticationFailed, match="malformed"):
            await checker.check("Bearer nonsense", Role.READ)
        assert await revoke_token(store, token.id)
        assert not await revoke_token(store, token.id)
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await checker.check(text, Role.READ)
        assert [t.name for t in await list_tokens(store)] == ["ops"]
        with pytest.raises(UsageError, match="unknown role"):
            await create_token(store, "root")


def test_roles_are_ordered() -> None:
    assert Role.ADMIN.allows(Role.EXECUTE) and Role.EXECUTE.allows(Role.OPERATE)
    assert Role.OPERATE.allows(Role.READ) and not Role.READ.allows(Role.OPERATE)
    assert not Role.OPERATE.allows(Role.EXECUTE)


async def test_task_logs_are_stored_and_survive_migration_0006(store_url: str) -> None:
    """Pydra's task logs (issue #17): the ``logs`` column, NUL-safe, and older rows kept."""
    import asyncio

    from test_audit import _alembic

    blob = "decode('80', 'hex')" if "://" in store_url else "X'80'"
    older = (
        "INSERT INTO task_instances (id, key, args, priority, status, labels, node, worker, "
        "lease, attempts, max_attempts, queued_at, progress, message, error, traceback, "
        f"force, history) VALUES (1, 'old', {blob}, 5, 'complete', '[]', '', -1, '', 1, 3, 1.0, "
        "100.0, '', '', '', false, '[]')"
    )
    await asyncio.to_thread(_alembic, store_url, "upgrade", "0005_idempotency", older)
    async with await open_store(store_url) as store:  # migrates to head
        tasks = store.tasks
        old = await tasks.get(1)
        assert old is not None and old.key == "old" and old.logs == ""
        new = TaskInstance(id=2, key="chatty", logs="out 0\nstep 0\x00 of 1\n")
        await tasks.commit([row(new)])
        got = await tasks.get(2)
        assert got is not None and got.logs in (new.logs, "out 0\nstep 0\\x00 of 1\n")
    await asyncio.to_thread(_alembic, store_url, "downgrade", "0005_idempotency")
    await asyncio.to_thread(_alembic, store_url, "upgrade", "head")
