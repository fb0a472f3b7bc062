"""Every call that changes state is audited, with the actor the controller derived.

On every path: the bus (the credential the server authenticated, named by the subject it
let the caller publish on), the HTTP API (the token), the dashboard (the signed-in user) and
CLI commands that write the store themselves (the local OS user, role ``local``). A name
the client sends is never the actor; it is kept only as ``on_behalf_of``.
"""

from __future__ import annotations

import asyncio
import getpass
import subprocess
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from conftest import child_env, corral_argv, scaled
from corral import wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.node import Node
from corral.records import AuditEntry
from corral.store import Store, open_store
from corral.tokens import Role, create_token
from tasks_fixtures import start_task_node
from test_commands import _wait_consumers, start_node


@pytest.fixture
def config(config: Config, store_url: str) -> Config:
    """On SQLite, and on PostgreSQL when CORRAL_TEST_POSTGRES_DSN is set."""
    return msgspec.structs.replace(config, store=store_url)


@pytest.fixture
async def w1(controller: Controller, config: Config) -> AsyncIterator[Node]:
    node = await start_task_node(config, "w1", slots=1)
    try:
        assert controller.tasks is not None
        async with asyncio.timeout(scaled(15)):
            while "w1" not in controller.tasks.core.nodes:
                await asyncio.sleep(0.02)
        yield node
    finally:
        await node.stop()


async def entries(store: Store, action: str, timeout: float = 10) -> list[AuditEntry]:
    """The audit entries of ``action``, once there is one (audit rides the next commit)."""
    async with asyncio.timeout(scaled(timeout)):
        while True:
            found = [e for e in await store.audit_log(500) if e.action == action]
            if found:
                return found
            await asyncio.sleep(0.05)


async def test_http_calls_that_change_state_are_audited_with_the_token(
    controller: Controller,
    w1: Node,
) -> None:
    assert controller.store is not None and controller.api is not None
    _, text = await create_token(controller.store, Role.OPERATE, "ci-bot")
    auth = {"authorization": f"Bearer {text}"}
    async with httpx.AsyncClient(base_url=controller.api.url, headers=auth, timeout=30) as http:
        queued = await http.post("/queue_task", json={"task_key": "noop"})
        assert queued.status_code == 200, queued.text
        ident = queued.json()["instance_id"]
        many = await http.post("/queue_tasks", json={"task_key": "noop", "args": [{}, {}]})
        assert many.status_code == 200, many.text
        cancelled = await http.post("/cancel_task", json={"task_instance_id": ident})
        assert cancelled.status_code == 200, cancelled.text
        edited = await http.post("/node_edit", json={"values": {"id": "w1", "labels": ["x"]}})
        assert edited.status_code == 200, edited.text
        assert (await http.post("/connect")).status_code == 200
        ran = await http.post("/run_task", json={"task_key": "add", "args": {"a": 1, "b": 2}})
        assert ran.status_code == 200 and ran.json()["result"] == 3
    for action, target in (
        ("queue_task", "noop"),
        ("queue_tasks", "noop"),
        ("cancel_task", str(ident)),
        ("node_edit", "w1"),
        ("connect", "nodes"),
        ("run_task", "add"),
    ):
        (entry,) = await entries(controller.store, action)
        assert (entry.actor, entry.role, entry.target) == ("api:ci-bot", "operate", target)
    (queue,) = await entries(controller.store, "queue_task")
    assert queue.detail["instances"] == [ident]
    (edit,) = await entries(controller.store, "node_edit")
    assert edit.detail["labels"] == ["x"]


async def test_a_forged_actor_on_the_bus_is_recorded_as_the_credential_that_sent_it(
    controller: Controller, config: Config
) -> None:
    node = await start_node(config, "f1")
    try:
        await _wait_consumers(controller, ["f1"])
        operator = await Client.connect(config, creds=config.data_path / "auth" / "operator.creds")
        try:
            operator.actor = "root@controller (admin)"  # what an attacker's client would say
            handle = await operator.send("f1", "whoami")
            assert (await handle.wait(scaled(10))).ok
            await handle.close()
        finally:
            await operator.close()
    finally:
        await node.stop()
    assert controller.store is not None
    (entry,) = await entries(controller.store, "command")
    assert (entry.actor, entry.role) == ("bus:operator", "operator")
    assert entry.detail["on_behalf_of"] == "root@controller (admin)"  # kept, labelled claimed
    found = await controller.store.get_command(handle.serial)
    assert found is not None and found[0].actor == "bus:operator"


async def test_a_forged_actor_over_http_is_recorded_as_the_token(
    controller: Controller, config: Config
) -> None:
    node = await start_node(config, "f2")
    try:
        await _wait_consumers(controller, ["f2"])
        assert controller.store is not None and controller.api is not None
        _, text = await create_token(controller.store, Role.OPERATE, "alice")
        auth = {"authorization": f"Bearer {text}"}
        async with httpx.AsyncClient(base_url=controller.api.url, timeout=30) as http:
            # No function takes an actor: the body is refused whole, nothing is sent.
            forged = await http.post(
                "/send_command",
                json={"targets": ["f2"], "name": "whoami", "actor": "root@controller (admin)"},
                headers=auth,
            )
            assert forged.status_code == 422 and "actor" in forged.json()["error"]
            assert controller.commands.book.last_serial == 0
            sent = await http.post(
                "/send_command", json={"targets": ["f2"], "name": "whoami"}, headers=auth
            )
        assert sent.status_code == 200, sent.text
    finally:
        await node.stop()
    (entry,) = await entries(controller.store, "command")
    assert (entry.actor, entry.role) == ("api:alice", "operate")


async def test_the_bus_refuses_a_request_that_names_another_credential(
    controller: Controller, config: Config
) -> None:
    from corral import bus, subjects

    operator = await Client.connect(config, creds=config.data_path / "auth" / "operator.creds")
    try:
        request = wire.CommandRequest(targets=["*"], name="whoami")
        # The operator's JWT allows corral.ctl.*.operator only: speaking as the admin is a
        # permissions violation at the server, and nothing reaches the controller.
        with pytest.raises(Exception):  # noqa: B017 - no answer to a refused publish
            await bus.request(
                operator.nc,
                subjects.ctl_as("send", "admin"),
                request,
                wire.CommandAccepted,
                timeout=scaled(0.5),
            )
    finally:
        await operator.close()
    assert controller.commands.book.last_serial == 0
    assert controller.store is not None
    assert [e for e in await controller.store.audit_log() if e.action == "command"] == []


def cli(config: Config, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        corral_argv(config, *args),
        env={**child_env(config), "CORRAL_STORE": config.store_url, **env},
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def stored_audit(config: Config) -> list[AuditEntry]:
    async with await open_store(config.store_url) as store:
        return list(reversed(await store.audit_log()))


async def test_cli_token_and_user_commands_are_audited_as_the_local_user(
    config: Config,
) -> None:
    created = await asyncio.to_thread(cli, config, "token", "create", "--role", "read")
    assert created.returncode == 0, created.stderr
    ident = created.stdout.strip().split("_")[1]
    revoked = await asyncio.to_thread(cli, config, "token", "revoke", ident)
    assert revoked.returncode == 0, revoked.stderr
    password = {"CORRAL_USER_PASSWORD": "erin-password"}
    added = await asyncio.to_thread(
        cli, config, "user", "add", "erin", "--role", "read", **password
    )
    assert added.returncode == 0, added.stderr
    removed = await asyncio.to_thread(cli, config, "user", "remove", "erin")
    assert removed.returncode == 0, removed.stderr
    # Removing again changes nothing, so nothing more is audited.
    assert (await asyncio.to_thread(cli, config, "user", "remove", "erin")).returncode != 0
    log = await stored_audit(config)
    assert [(e.action, e.target, e.role) for e in log] == [
        ("token_create", ident, "local"),
        ("token_revoke", ident, "local"),
        ("user_add", "erin", "local"),
        ("user_remove", "erin", "local"),
    ]
    assert all(e.actor.startswith(f"{getpass.getuser()}@") for e in log)
    assert log[0].detail == {"name": "read-token", "role": "read"}


def test_older_credentials_that_could_speak_as_the_admin_are_rewritten(config: Config) -> None:
    from corral import subjects
    from corral.security import Authority, Permissions, _allows_publish, _with_guardians

    authority = Authority.load(config.data_path)
    path = config.data_path / "auth" / "operator.creds"
    # As written before requests named their sender: any corral.ctl subject, the admin's too.
    path.write_text(
        authority.user_creds("operator", _with_guardians(Permissions(pub=(subjects.ctl(">"),))))
    )
    assert not _allows_publish(path.read_text(), subjects.ctl_as("*", "operator"))
    authority.ensure_role_credentials()
    text = path.read_text()
    assert _allows_publish(text, subjects.ctl_as("*", "operator"))
    assert not _allows_publish(text, subjects.ctl(">"))


def _alembic(url: str, action: str, revision: str, sql: str = "") -> None:
    """Run alembic ``action`` to ``revision`` on ``url``, then ``sql`` in the same transaction."""
    from pathlib import Path

    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import create_engine, pool, text

    from corral.store._engine import MIGRATIONS
    from corral.store._url import normalize_url, sync_url

    if "://" not in url:
        Path(url).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sync_url(normalize_url(url)), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)
            if sql:
                conn.execute(text(sql))
    finally:
        engine.dispose()


async def test_an_older_store_keeps_its_audit_log_through_migration_0005(store_url: str) -> None:
    older = (
        "INSERT INTO audit_log (at, actor, action, target, detail) "
        "VALUES (1.0, 'alice@lab', 'enroll', 'n1', '{}')"
    )
    await asyncio.to_thread(_alembic, store_url, "upgrade", "0004_users", older)
    async with await open_store(store_url) as store:  # migrates to head
        (entry,) = await store.audit_log()
        assert (entry.actor, entry.role) == ("alice@lab", "")
    # ... and back down again (the column and the table go), then up.
    await asyncio.to_thread(_alembic, store_url, "downgrade", "0004_users")
    await asyncio.to_thread(_alembic, store_url, "upgrade", "head")
    async with await open_store(store_url) as store:
        assert [e.actor for e in await store.audit_log()] == ["alice@lab"]
