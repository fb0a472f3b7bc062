"""The `corral` command as a user runs it (real processes, real controller)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import child_env, corral_argv, scaled
from corral.config import Config
from corral.controller import Controller
from corral.node import Node
from corral.records import AuditEntry
from corral.store import open_store


def audit_log(config: Config) -> list[AuditEntry]:
    """The store's audit log, newest first (read with no controller running)."""

    async def read() -> list[AuditEntry]:
        async with await open_store(config.store_url) as store:
            return await store.audit_log()

    return asyncio.run(read())


def corral(config: Config, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        corral_argv(config, *args),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
        cwd=cwd,
    )


def test_help_teaches_the_two_paths(config: Config) -> None:
    result = corral(config, "--help")
    assert result.returncode == 0
    assert "corral up --nodes 4" in result.stdout and "corral enroll NAME" in result.stdout
    for command in ("up", "init", "controller", "node", "enroll", "revoke", "nodes", "config"):
        assert command in result.stdout
    node_help = corral(config, "node", "--help").stdout
    assert "--interface" in node_help and "--sink" in node_help and "--creds" in node_help


def test_init_is_idempotent_and_enroll_writes_a_private_credential(
    config: Config, tmp_path: Path
) -> None:
    again = corral(config, "init")
    assert again.returncode == 0 and "already initialised" in again.stdout
    result = corral(config, "enroll", "edge1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    creds = tmp_path / "edge1.creds"
    assert creds.stat().st_mode & 0o777 == 0o600
    assert "BEGIN NATS USER JWT" in creds.read_text()
    # No controller runs: the CLI wrote the audit entry itself, as the local OS user.
    assert "audit" not in result.stdout
    (entry,) = audit_log(config)
    assert (entry.action, entry.target, entry.role) == ("enroll", "edge1", "local")
    assert entry.actor.count("@") == 1


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("enroll", "bad.name"), 2, "invalid node name 'bad.name'"),
        (("revoke", "nobody"), 2, "was ever enrolled"),
        (("nodes",), 1, "no controller answers"),
    ],
)
def test_mistakes_exit_non_zero_with_the_fix(
    config: Config, broker: object, args: tuple[str, ...], code: int, message: str
) -> None:
    result = corral(config, *args)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_uninitialised_data_dir_says_run_init(tmp_path: Path, config: Config) -> None:
    bare = Config(data_dir=str(tmp_path / "empty"), nats_port=config.nats_port)
    result = corral(bare, "enroll", "x")
    assert result.returncode == 2 and "corral init" in result.stderr


async def test_nodes_json_for_scripts(controller: Controller, config: Config) -> None:
    path = config.data_path / "j1.creds"
    from corral.security import Authority

    path.write_text(Authority.load(config.data_path).enroll("j1"))
    node = Node(config, "j1", creds=path, labels=("x",), attributes={"sink": True})
    await node.start()
    try:
        await node.wait_joined()
        async with asyncio.timeout(scaled(10)):  # the host's stats come with a heartbeat
            while controller.registry.nodes["j1"].stats is None:
                await asyncio.sleep(0.05)
        # In a thread: the controller runs in this test's event loop and must keep serving.
        result = await asyncio.to_thread(corral, config, "nodes", "--json")
        assert result.returncode == 0, result.stderr
        (entry,) = json.loads(result.stdout)
        assert entry["name"] == "j1" and entry["status"] == "UP" and entry["labels"] == ["x"]
        stats = entry["stats"]
        assert set(stats) == {"cpu_percent", "mem_percent", "disk_percent", "load1"}
        assert 0 < stats["mem_percent"] <= 100 and 0 < stats["disk_percent"] <= 100
        table = await asyncio.to_thread(corral, config, "nodes")
        assert "j1" in table.stdout and "UP" in table.stdout
    finally:
        await node.stop()


def test_config_show_names_the_source_of_each_value(config: Config) -> None:
    result = corral(config, "config", "show", "--json")
    values = json.loads(result.stdout)
    assert values["down_after"] == config.down_after and values["data_dir"] == str(config.data_path)
    table = corral(config, "config", "show").stdout
    assert "env:CORRAL_DOWN_AFTER" in table and "flag" in table


async def test_enrolling_with_a_controller_running_is_audited(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(corral, config, "enroll", "aud1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "audit" not in result.stdout  # no "not in its audit log" note
    assert controller.store is not None
    (entry,) = await controller.store.audit_log()
    assert (entry.action, entry.target) == ("enroll", "aud1")
    # The actor is the credential the CLI connected with; $USER@host is only its claim.
    assert (entry.actor, entry.role) == ("bus:admin", "admin")
    assert entry.detail["on_behalf_of"].count("@") == 1


def test_the_cli_starts_without_loading_the_store() -> None:
    """`corral node` (and every command) starts through the CLI app: SQLAlchemy, Alembic and
    the database drivers cost a third of a second there, so only commands that open the store
    load them (bench_join's workers' start-up doubled when one module imported them eagerly)."""
    code = (
        "import sys, corral.cli.app\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'alembic', 'psycopg', 'aiosqlite') or m.startswith('corral.store'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
