"""Fixtures shared by the task and API tests: a node with task workers, tokens, a client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conftest import scaled
from corral import AsyncController
from corral.config import Config
from corral.controller import Controller
from corral.node import Node
from corral.security import Authority
from corral.tokens import Role, create_token


async def start_task_node(config: Config, name: str, slots: int = 2, **options: object) -> Node:
    """A node in this process whose worker processes load ``taskmods.basic``."""
    creds = config.data_path / f"{name}.creds"
    creds.write_text(Authority.load(config.data_path).enroll(name))
    node = Node(config, name, slots=slots, creds=creds, tasks=("taskmods.basic",), **options)  # type: ignore[arg-type]
    await node.start()
    return node


async def offered(controller: Controller, node: str, timeout: float = 15) -> None:
    """Wait until ``node``'s workers have said hello to the controller's scheduler."""
    assert controller.tasks is not None
    async with asyncio.timeout(scaled(timeout)):
        while node not in controller.tasks.core.nodes:
            await asyncio.sleep(0.02)


@pytest.fixture
async def node(controller: Controller, config: Config) -> AsyncIterator[Node]:
    """Node ``w1`` with two worker slots, its workers known to the scheduler."""
    n = await start_task_node(config, "w1")
    try:
        await offered(controller, "w1")
        yield n
    finally:
        await n.stop()


async def token_for(controller: Controller, role: Role) -> str:
    """A fresh API token with ``role``."""
    assert controller.store is not None
    _, text = await create_token(controller.store, role, f"test-{role.value}")
    return text


@pytest.fixture
async def api(controller: Controller) -> AsyncIterator[AsyncController]:
    """An operate-role client of the in-process controller's API."""
    assert controller.api is not None
    client = AsyncController(
        controller.api.url, await token_for(controller, Role.OPERATE), timeout=scaled(20)
    )
    try:
        yield client
    finally:
        await client.close()
