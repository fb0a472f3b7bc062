"""Pydra (seed 002): kill a worker, delete a node, a task's logs — written as a Pydra user
would call them (``kill_worker``, ``node_delete``, ``task_logs``), over the HTTP API and the
CLI, with a real controller, node, worker processes and NATS."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from conftest import child_env, corral_argv, scaled
from corral import AsyncController
from corral.api_client import Controller as WebController
from corral.config import Config
from corral.controller import Controller
from corral.errors import AuthenticationFailed, NotFound, RemoteError
from corral.node import Node
from corral.security import Authority
from corral.tokens import Role
from tasks_fixtures import api, node, offered, start_task_node, token_for  # noqa: F401


@pytest.fixture
def config(config: Config) -> Config:
    """A small log bound, so a chatty task goes over it."""
    config.task_log_limit = 2000
    return config


async def corral(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        corral_argv(config, *args),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def until_exists(path: Path, timeout: float = 15) -> None:
    async with asyncio.timeout(scaled(timeout)):
        while not path.exists():
            await asyncio.sleep(0.01)


async def test_task_logs_show_stdout_stderr_and_ctx_log_by_api_and_cli(
    controller: Controller,
    config: Config,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    ident = await api.queue_task("chatty", lines=3)
    assert (await api.wait(ident, scaled(15))).status == "complete"
    logs = (await api.task_logs(ident)).logs
    assert logs.splitlines() == [
        "out 0 xxxxxxxxxx",
        "step 0 of 3",
        "out 1 xxxxxxxxxx",
        "step 1 of 3",
        "out 2 xxxxxxxxxx",
        "step 2 of 3",
        "to stderr",
    ]
    # Kept in the store: an instance read back from it has them too.
    assert controller.tasks is not None and controller.tasks.store is not None
    async with asyncio.timeout(scaled(10)):
        while (stored := await controller.tasks.store.get(ident)) is None or not stored.logs:
            await asyncio.sleep(0.05)
    assert stored.logs == logs
    # Pydra's positional spelling on the blocking client.
    web = WebController(api.url, await token_for(controller, Role.READ))
    try:
        assert (await asyncio.to_thread(web.task_logs, ident)).logs == logs
    finally:
        await asyncio.to_thread(web.close)
    assert controller.api is not None
    token = await token_for(controller, Role.READ)
    shown = await corral(config, "logs", str(ident), "--api", controller.api.url, "--token", token)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1] == "step 0 of 3" and "to stderr" in shown.stdout
    with pytest.raises(NotFound):
        await api.task_logs(10**9)


async def test_task_logs_over_the_bound_are_cut_oldest_first_with_a_marker(
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    ident = await api.queue_task("chatty", lines=200, width=40)
    assert (await api.wait(ident, scaled(15))).status == "complete"
    logs = (await api.task_logs(ident)).logs
    head, _, kept = logs.partition("\n")
    assert head.startswith("[... ") and head.endswith(" characters cut ...]")
    assert len(kept) == 2000  # config.task_log_limit
    assert kept.endswith("step 199 of 200\nto stderr\n") and "out 0 " not in kept
    cut = int(head[5:].split()[0])
    assert cut + len(kept) == sum(len(f"out {i} " + "x" * 40) + 1 for i in range(200)) + sum(
        len(f"step {i} of 200") + 1 for i in range(200)
    ) + len("to stderr\n")


async def test_kill_worker_fails_its_task_and_the_node_restarts_the_slot(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
    tmp_path: Path,
) -> None:
    started = tmp_path / "started"
    ident = await api.queue_task("stubborn", started=str(started))
    await until_exists(started)
    first_pid = int(started.read_text())
    assert node.workers is not None
    # The node knows which slot runs it (the controller learns it with the first progress).
    (slot,) = [w.index for w in node.workers.workers if w.proc.pid == first_pid]
    started.unlink()
    killed = await api.kill_worker("w1", slot)
    assert (killed.node, killed.slot) == ("w1", slot) and killed.task in (ident, None)
    # It fails as with a crashed worker, saying who killed it.
    view = await api.wait(ident, scaled(15))
    assert view.status == "failed"
    assert f"worker (slot {slot}) was killed by api:test-operate" in view.error
    # The node restarts the slot: tasks run on, never in the killed process.
    pids = {(await api.run("echo"))["pid"] for _ in range(4)}
    assert first_pid not in pids
    assert node.workers is not None and len(node.workers.workers) == 2
    # Audited with the token's actor.
    assert controller.store is not None
    async with asyncio.timeout(scaled(10)):
        while not [
            e for e in await controller.store.audit_log(limit=50) if e.action == "kill_worker"
        ]:
            await asyncio.sleep(0.05)
    (entry,) = [e for e in await controller.store.audit_log(limit=50) if e.action == "kill_worker"]
    assert entry.actor == "api:test-operate" and entry.target == "w1"


async def test_kill_worker_refuses_unknown_nodes_slots_and_read_tokens(
    controller: Controller,
    config: Config,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    with pytest.raises(NotFound, match="no node named 'ghost'"):
        await api.kill_worker("ghost", 0)
    with pytest.raises(RemoteError, match="has worker slots 0..1, not 5"):
        await api.kill_worker("w1", 5)
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    cli = await corral(
        config, "kill-worker", "ghost", "0", "--api", controller.api.url, "--token", token
    )
    assert cli.returncode != 0 and "no node named 'ghost'" in cli.stdout + cli.stderr
    reader = AsyncController(controller.api.url, await token_for(controller, Role.READ))
    try:
        with pytest.raises(AuthenticationFailed):
            await reader.kill_worker("w1", 0)
        with pytest.raises(AuthenticationFailed):
            await reader.node_delete("w1")
    finally:
        await reader.close()


async def test_node_delete_refuses_an_up_node_then_forgets_a_stopped_one(
    controller: Controller,
    config: Config,
    api: AsyncController,  # noqa: F811
) -> None:
    w2 = await start_task_node(config, "w2")
    await offered(controller, "w2")
    with pytest.raises(RemoteError, match="node 'w2' is UP: stop it"):
        await api.node_delete("w2")
    assert (await api.node_detail("w2")).status == "UP"
    await w2.stop()
    async with asyncio.timeout(scaled(10)):
        while (await api.node_detail("w2")).status == "UP":
            await asyncio.sleep(0.05)
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    forgot = await corral(config, "forget", "w2", "--api", controller.api.url, "--token", token)
    assert forgot.returncode == 0, forgot.stderr
    assert "forgot w2 (was LEFT; 1 credential(s) revoked now)" in forgot.stdout
    with pytest.raises(NotFound):
        await api.node_detail("w2")
    assert "w2" not in {n.name for n in (await api.node_list()).items}
    assert controller.store is not None
    assert "w2" not in {r.name for r in await controller.store.load_nodes()}
    assert not Authority.load(config.data_path).is_enrolled("w2")
    async with asyncio.timeout(scaled(10)):
        while not [
            e for e in await controller.store.audit_log(limit=50) if e.action == "node_delete"
        ]:
            await asyncio.sleep(0.05)
    with pytest.raises(NotFound):
        await api.node_delete("w2")
    again = await corral(config, "forget", "w2", "--api", controller.api.url, "--token", token)
    assert again.returncode != 0 and "no node named 'w2'" in again.stdout + again.stderr


def test_results_with_big_logs_are_reported_in_batches_under_the_budget() -> None:
    from corral import wire
    from corral.node.workers import _batches

    results = [wire.TaskResult(f"l{i}", "complete", b"", logs="x" * 65536) for i in range(300)]
    batches = _batches(results, 4 * 1024 * 1024)
    assert [r.lease for b in batches for r in b] == [r.lease for r in results]
    assert all(sum(len(r.logs) for r in b) <= 4 * 1024 * 1024 for b in batches)
    assert len(batches) == 5 and _batches([], 1000) == [[]]
