"""The task and token commands, run as real `corral` processes against an in-process controller."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, corral_argv, scaled
from corral.config import Config
from corral.controller import Controller
from tasks_fixtures import node  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("node")


async def corral(
    config: Config, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(
        subprocess.run,
        corral_argv(config, *args),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


async def test_token_create_then_every_task_command(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    assert controller.api is not None
    created = await corral(config, "token", "create", "--role", "operate", "--name", "cli")
    token = created.stdout.strip()
    assert token.startswith("crl_") and "shown only now" in created.stderr
    api = ["--api", controller.api.url, "--token", token]

    listed = json.loads((await corral(config, "tasks", "--json", *api)).stdout)
    assert "echo" in {t["key"] for t in listed} and "square" not in {t["key"] for t in listed}
    assert "square" in (await corral(config, "tasks", "--all", *api)).stdout

    waited = await corral(config, "queue", "echo", "value=[1,2]", "--wait", *api)
    assert json.loads(waited.stdout)["value"] == [1, 2]
    ident = int((await corral(config, "queue", "boom", "message=bad day", *api)).stdout)

    history = json.loads((await corral(config, "history", "echo", "--json", *api)).stdout)
    assert history["total"] == 1 and history["items"][0]["status"] == "complete"
    async with asyncio.timeout(scaled(10)):
        while (shown := await corral(config, "show", str(ident), *api)).stdout.find("failed") < 0:
            await asyncio.sleep(0.1)
    assert "ValueError: bad day" in shown.stdout and "Traceback" in shown.stdout

    gate = tmp_path / "gate"
    blockers = [
        int((await corral(config, "queue", "wait_for_file", f"path={gate}", *api)).stdout)
        for _ in range(3)
    ]  # a key never measured yet: one per slot, 2 held by the node, the 3rd queued
    queued = json.loads((await corral(config, "queue-list", "--json", *api)).stdout)
    assert [i["id"] for i in queued["items"]] == blockers[2:]
    cancelled = await corral(config, "cancel", str(blockers[2]), *api)
    assert f"task {blockers[2]} (wait_for_file): cancelled" in cancelled.stdout
    statuses = json.loads((await corral(config, "running", "--json", *api)).stdout)
    assert sorted(s["id"] for s in statuses) == blockers[:2]
    assert "wait_for_file" in (await corral(config, "running", "--once", *api)).stdout
    gate.write_text("x")

    listed_tokens = await corral(config, "token", "list", "--json")
    assert [t["name"] for t in json.loads(listed_tokens.stdout)] == ["cli"]


async def test_commands_without_a_token_say_how_to_get_one(
    controller: Controller, config: Config
) -> None:
    assert controller.api is not None
    done = await corral(config, "tasks", "--api", controller.api.url, check=False)
    assert done.returncode == 1 and "corral token create" in done.stderr
    bad = await corral(config, "token", "create", "--role", "root", check=False)
    assert bad.returncode == 2 and "read, operate, execute or admin" in bad.stderr
