"""Tasks with real processes: kill -9 of a node mid-task, kill -9 of the controller.

The controller and the nodes are ``corral`` subprocesses; the test drives them through the
HTTP API with the Python client, as a user would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import Procs, eventually, free_port, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import Disconnected
from corral.security import Authority
from corral.store import open_store
from corral.tokens import Role, create_token

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture
def api_config(config: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The test's configuration with a fixed free API port (the controller is restarted)."""
    config.api_port = free_port()
    monkeypatch.setenv("CORRAL_API_PORT", str(config.api_port))
    # A node silent this long is DOWN and its leases go: wide enough that a busy machine
    # does not make a live node look dead.
    config.down_after = scaled(2.5)
    # Worker processes import the test task modules from here.
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    return config


@pytest.fixture
async def token(api_config: Config) -> str:
    async with await open_store(api_config.store_url) as store:
        _, text = await create_token(store, Role.OPERATE, "test")
    return text


@pytest.fixture
async def client(api_config: Config, token: str) -> AsyncIterator[AsyncController]:
    c = AsyncController(api_config.api_url, token, timeout=scaled(30))
    try:
        yield c
    finally:
        await c.close()


def start_controller(procs: Procs, config: Config) -> subprocess.Popen[bytes]:
    return procs.start("controller", "--nats", config.bus_url, log="controller")


def start_node(procs: Procs, config: Config, name: str, slots: int = 2) -> subprocess.Popen[bytes]:
    creds = config.data_path / f"{name}.creds"
    creds.write_text(Authority.load(config.data_path).enroll(name))
    return procs.start(
        "node", "--name", name, "--nats", config.bus_url, "--creds", str(creds),
        "--slots", str(slots), "--tasks", "taskmods.basic", log=name,
    )  # fmt: skip


async def offered_by(client: AsyncController, nodes: int) -> bool:
    views = await client.list_tasks(keys=["wait_for_file"])
    return bool(views) and len(views[0].nodes) == nodes


async def test_kill_9_node_mid_task_requeues_it_on_another_node_with_attempts_2(
    broker: EmbeddedBroker,
    api_config: Config,
    procs: Procs,
    client: AsyncController,
    tmp_path: Path,
) -> None:
    start_controller(procs, api_config)
    nodes = {name: start_node(procs, api_config, name) for name in ("a1", "a2")}
    await eventually(lambda: offered_by(client, 2), scaled(30), ignoring=(Disconnected,))
    gate, started = tmp_path / "gate", tmp_path / "started"
    ident = await client.queue_task(
        "wait_for_file", path=str(gate), started=str(started), max_attempts=3
    )
    await eventually(lambda: _exists(started), scaled(20), ignoring=(Disconnected,))

    async def running() -> bool:  # the node says its worker started it (was assigned)
        return (await client.task_history_detail(ident)).status == "running"

    await eventually(running, scaled(20), ignoring=(Disconnected,))
    first = await client.task_history_detail(ident)
    assert first.status == "running" and first.node in nodes
    nodes[first.node].kill()  # SIGKILL mid-task: its worker process dies with it
    started.unlink()
    # the second attempt started
    await eventually(lambda: _exists(started), scaled(20), ignoring=(Disconnected,))
    write_atomically(gate, "done")
    final = await client.wait(ident, scaled(20))
    other = ({"a1", "a2"} - {first.node}).pop()
    assert (final.status, final.attempts, final.node) == ("complete", 2, other), final.history
    assert [h["node"] for h in final.history] == [first.node, other]
    assert final.history[0]["outcome"] == "lost" and final.history[1]["outcome"] == "complete"
    assert final.result == "done"


def write_atomically(path: Path, text: str) -> None:
    """Create ``path`` with its content in one step (tasks poll for it and read it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(path)


async def _exists(path: Path) -> bool:
    return path.exists()


async def test_kill_9_controller_with_1000_queued_loses_none(
    broker: EmbeddedBroker,
    api_config: Config,
    procs: Procs,
    client: AsyncController,
    tmp_path: Path,
) -> None:
    ctl = start_controller(procs, api_config)
    for name in ("b1", "b2"):
        start_node(procs, api_config, name)
    await eventually(lambda: offered_by(client, 2), scaled(30), ignoring=(Disconnected,))
    gate = tmp_path / "gate"
    ids = await client.queue_tasks("wait_for_file", [{"path": str(gate)}] * 1000)
    assert len(ids) == len(set(ids)) == 1000
    running = await client.list_running(per_page=100)
    assert 0 < running.total <= 4  # 2 nodes x 2 slots x 1 (a key not measured yet)
    ctl.kill()
    await asyncio.to_thread(ctl.wait)
    start_controller(procs, api_config)
    await eventually(lambda: offered_by(client, 2), scaled(30), ignoring=(Disconnected,))
    write_atomically(gate, "open")
    done = await client.wait_many(ids, scaled(90))
    assert [d.id for d in done] == ids
    assert {d.status for d in done} == {"complete"}
    assert {d.result for d in done} == {"open"}
    # A lease held across the restart was claimed by its node, not re-run.
    assert max(d.attempts for d in done) == 1


async def test_a_result_answered_before_its_commit_survives_kill_9_of_the_controller(
    broker: EmbeddedBroker,
    api_config: Config,
    procs: Procs,
    client: AsyncController,
) -> None:
    """``run_task`` answers once the result is in the controller's hands and the attempt's
    lease is on disk, before the final commit: killed right after answering, the restarted
    controller gets the result again from the node (it keeps it until that commit is
    acknowledged), so what was answered is what the store keeps, not run again."""
    start_node(procs, api_config, "k1")
    for turn in range(3):
        ctl = start_controller(procs, api_config)
        await eventually(lambda: offered_by(client, 1), scaled(30), ignoring=(Disconnected,))
        done = await client.run_task("echo", {"value": f"turn {turn}"}, timeout=scaled(20))
        result = done.result
        ctl.kill()  # at once: the final row's commit is a few milliseconds behind the answer
        await asyncio.to_thread(ctl.wait)
        assert done.status == "complete" and result["value"] == f"turn {turn}"
        ctl = start_controller(procs, api_config)
        await eventually(lambda: offered_by(client, 1), scaled(30), ignoring=(Disconnected,))
        after = (await client.wait_many([done.id], scaled(30)))[0]
        assert (after.status, after.result, after.attempts) == ("complete", result, 1)
        history = await client.task_history("echo")
        assert done.id in {i.id for i in history.items}
        ctl.kill()
        await asyncio.to_thread(ctl.wait)
