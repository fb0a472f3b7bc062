"""Fleet hygiene with a real controller, nodes and nats-server: `*` and waits pass over the
nodes that left on purpose, and a node LEFT for ``left_expiry`` is forgotten (a fake clock)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator

import pytest

from conftest import child_env, corral_argv, scaled
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.node import Node
from corral.security import Authority


async def start_node(config: Config, name: str) -> Node:
    creds = config.data_path / f"{name}.creds"
    if not creds.exists():
        creds.write_text(Authority.load(config.data_path).enroll(name))
    node = Node(config, name, creds=creds)
    await node.start(wait_for_bus=scaled(5))
    await asyncio.wait_for(node.wait_joined(), scaled(10))
    return node


async def until_status(controller: Controller, name: str, status: str) -> None:
    async with asyncio.timeout(scaled(10)):
        while (r := controller.registry.nodes.get(name)) is None or r.status != status:
            await asyncio.sleep(0.05)


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        corral_argv(config, *args),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def test_star_and_waits_pass_over_nodes_that_left(
    controller: Controller, config: Config
) -> None:
    n1, n2 = await start_node(config, "n1"), await start_node(config, "n2")
    await n2.stop()
    await until_status(controller, "n2", "LEFT")
    async with await Client.connect(config) as client:
        try:
            # Before: n2 would be waited on until the retire window. Now `*` is n1 only.
            sent = await asyncio.to_thread(cli, config, "send", "*", "ping", "--wait", "3")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            star = await client.send("*", "ping")
            assert star.nodes == ["n1"]
            assert (await star.wait(scaled(10))).ok
            assert (await client.send("n*", "ping")).nodes == ["n1"]
            # Its name still reaches it: it runs when it comes back.
            direct = await client.send("n2", "ping")
            assert direct.nodes == ["n2"]
            views = {v.name: v for v in await client.nodes()}
            assert views["n2"].behind == 0  # left on purpose: behind on nothing
            back = await start_node(config, "n2")
            try:
                assert (await direct.wait(scaled(10))).ok
                # The `*` sent while it was away is not run there, nor refused as a stranger.
                assert "rejected.not-target" not in controller.commands.counters
                assert (await client.command_detail(star.serial)).nodes == ["n1"]
            finally:
                await back.stop()
        finally:
            await n1.stop()


@pytest.fixture
def clock() -> list[float]:
    return [time.time()]


@pytest.fixture
async def timed(
    config: Config, broker: EmbeddedBroker, clock: list[float]
) -> AsyncIterator[Controller]:
    """A controller on a clock the test moves (left_expiry: 1000 s)."""
    config.left_expiry = 1000.0
    c = Controller(config, clock=lambda: clock[0])
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_a_node_left_longer_than_left_expiry_is_forgotten_and_audited(
    timed: Controller, config: Config, clock: list[float]
) -> None:
    node = await start_node(config, "gone1")
    await node.stop()
    await until_status(timed, "gone1", "LEFT")
    clock[0] += 999.0
    assert await timed.expire_left() == []  # not due yet
    assert timed.registry.nodes["gone1"].status == "LEFT"
    clock[0] += 2.0
    async with asyncio.timeout(scaled(10)):
        while "gone1" in timed.registry.nodes:
            await asyncio.sleep(0.05)
    assert timed.store is not None
    async with asyncio.timeout(scaled(10)):
        while not [e for e in await timed.store.audit_log(50) if e.action == "node_expire"]:
            await asyncio.sleep(0.05)
    (entry,) = [e for e in await timed.store.audit_log(50) if e.action == "node_expire"]
    assert (entry.actor, entry.role, entry.target) == ("system", "system", "gone1")
    assert "gone1" not in {r.name for r in await timed.store.load_nodes()}
    # It stopped cleanly: its credential stays, and it may join again as a new node.
    assert Authority.load(config.data_path).is_enrolled("gone1")
    again = await start_node(config, "gone1")
    try:
        assert timed.registry.nodes["gone1"].status == "UP"
    finally:
        await again.stop()
