"""A node speaks only for itself: forged task results, progress and command reports from
another node's credential are refused, logged and counted (issue #12, ownership).

The forger is a real bus connection with node n2's own credential, publishing on n2's own
subjects (the bus permits that) what n1 should be the only one to say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from conftest import scaled
from corral import AsyncController, bus, subjects, wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.node import Node
from corral.security import Authority
from tasks_fixtures import api, offered, start_task_node  # noqa: F401 - fixtures

FOREIGN = "tasks.rejected.foreign-lease"


@pytest.fixture
async def pair(controller: Controller, config: Config) -> AsyncIterator[tuple[Node, Node]]:
    """Task nodes n1 (label ``one``) and n2, both known to the scheduler."""
    n1 = await start_task_node(config, "n1", labels=("one",))
    n2 = await start_task_node(config, "n2")
    try:
        await offered(controller, "n1")
        await offered(controller, "n2")
        yield n1, n2
    finally:
        await n2.stop()
        await n1.stop()


@pytest.fixture
async def forger(config: Config, pair: tuple[Node, Node]) -> AsyncIterator[bus.NATS]:
    """A second connection with n2's own credential: all it may publish is n2's subjects."""
    nc = await bus.connect(
        config,
        "node-n2",
        creds=config.data_path / "n2.creds",
        inbox_prefix=subjects.inbox_prefix("n2"),
    )
    try:
        yield nc
    finally:
        await nc.close()


async def counted(controller: Controller, name: str, at_least: int) -> None:
    async with asyncio.timeout(scaled(10)):
        while controller.counters[name] < at_least:
            await asyncio.sleep(0.02)


async def running_lease(controller: Controller, ident: int, started: Path) -> str:
    """The lease n1 runs instance ``ident`` under (the forger guessed it)."""
    assert controller.tasks is not None
    async with asyncio.timeout(scaled(15)):
        while not started.exists() or controller.tasks.core.active[ident].status != "running":
            await asyncio.sleep(0.02)
    inst = controller.tasks.core.active[ident]
    assert inst.node == "n1" and inst.lease
    return inst.lease


async def test_a_forged_task_result_from_another_node_is_refused(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    forger: bus.NATS,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    ident = await api.queue_task(
        "wait_for_file", path=str(gate), started=str(started), labels=["one"]
    )
    lease = await running_lease(controller, ident, started)
    forged = wire.TaskResult(lease, "complete", msgspec.msgpack.encode("forged by n2"))
    caplog.set_level(logging.WARNING, "corral.controller.tasks")
    await forger.publish(
        subjects.node_in("n2", subjects.TASK_REPORT_VERB),
        wire.encode(wire.TaskReport(results=[forged])),
        headers=wire.HEADERS,
    )
    await counted(controller, FOREIGN, 1)
    assert (await api.task_history_detail(ident)).status == "running"
    assert any(
        "node n2" in r.getMessage() and "node n1 holds" in r.getMessage() for r in caplog.records
    )
    # The same result inside a hello (results the node could not deliver before a rejoin).
    assert controller.tasks is not None
    workers = controller.tasks.core.nodes["n2"]
    hello = wire.TaskHello(
        instance=controller.registry.nodes["n2"].instance,
        keys=sorted(workers.keys),
        slots=workers.slots,
        results=[forged],
    )
    reply = await forger.request(
        subjects.node_in("n2", subjects.TASK_HELLO_VERB),
        wire.encode(hello),
        headers=wire.HEADERS,
        timeout=scaled(5),
    )
    assert isinstance(wire.decode(reply.data, wire.Ok, reply.headers), wire.Ok)
    assert controller.counters[FOREIGN] == 2
    assert (await api.task_history_detail(ident)).status == "running"
    # n1's own result is the one that counts.
    gate.write_text("n1's real result")
    final = await api.wait(ident, scaled(15))
    assert (final.status, final.result, final.node) == ("complete", "n1's real result", "n1")
    assert [h["node"] for h in final.history] == ["n1"]


async def test_forged_progress_from_another_node_is_refused(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    forger: bus.NATS,
    tmp_path: Path,
) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    ident = await api.queue_task(
        "wait_for_file", path=str(gate), started=str(started), labels=["one"]
    )
    lease = await running_lease(controller, ident, started)
    assert controller.tasks is not None
    core = controller.tasks.core
    async with asyncio.timeout(scaled(10)):
        while core.active[ident].message != "waiting":  # n1's own progress came in
            await asyncio.sleep(0.02)
    forged = wire.TaskReport(progress=[wire.TaskProgress(lease, 99.0, "forged by n2", 7)])
    for _ in range(3):
        await forger.publish(
            subjects.node_in("n2", subjects.TASK_REPORT_VERB),
            wire.encode(forged),
            headers=wire.HEADERS,
        )
    await counted(controller, FOREIGN, 3)
    # Only n1's own reports ("waiting", 50 %) ever reached the instance.
    inst = core.active[ident]
    assert (inst.progress, inst.message) == (50.0, "waiting") and inst.worker != 7
    gate.write_text("done")
    assert (await api.wait(ident, scaled(15))).status == "complete"


def creds_for(config: Config, name: str) -> Path:
    path = config.data_path / f"{name}.creds"
    path.write_text(Authority.load(config.data_path).enroll(name))
    return path


async def test_a_command_report_from_a_node_that_is_not_a_target_is_refused(
    controller: Controller, config: Config
) -> None:
    nodes = []
    for name in ("c1", "c2"):
        node = Node(config, name, creds=creds_for(config, name))
        await node.start(wait_for_bus=scaled(5))
        await asyncio.wait_for(node.wait_joined(), scaled(10))
        nodes.append(node)
    forger = await bus.connect(
        config,
        "node-c2",
        creds=config.data_path / "c2.creds",
        inbox_prefix=subjects.inbox_prefix("c2"),
    )
    client = await Client.connect(config)
    try:
        # A command only c1 runs (GET of every parameter), settled before the forgery.
        handle = await client.get("c1")
        await handle.wait(scaled(10))
        assert set(handle.nodes) == {"c1"}
        caught = controller.commands.book.commands[handle.serial]
        real = caught.outcomes["c1"].state
        for state in ("running", "done"):
            report = wire.CommandReport(serial=handle.serial, state=state, result="forged by c2")
            await forger.publish(
                subjects.node_in("c2", "out"), wire.encode(report), headers=wire.HEADERS
            )
        async with asyncio.timeout(scaled(10)):
            while controller.commands.counters.get("rejected.not-target", 0) < 2:
                await asyncio.sleep(0.02)
        assert set(caught.outcomes) == {"c1"} and caught.outcomes["c1"].state == real
        stats = await client.stats()
        assert stats.counters["commands.rejected.not-target"] == 2
        detail = await client.command_detail(handle.serial)
        assert [(o.node, o.result) for o in detail.outcomes] == [
            ("c1", caught.outcomes["c1"].result)
        ]
    finally:
        await client.close()
        await forger.close()
        for node in nodes:
            await node.stop()
