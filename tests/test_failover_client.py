"""A client given several addresses uses the one that answers (a real controller, a real bus):
HTTP URLs of which one refuses connections, bus URLs of which one has no server."""

from __future__ import annotations

import asyncio

import pytest

from conftest import free_port, scaled
from corral import AsyncController, Client, Controller
from corral.config import Config
from corral.controller import Controller as ControllerService
from corral.errors import UsageError
from corral.tokens import Role
from tasks_fixtures import node, token_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("node")


async def test_http_addresses_one_of_them_down(controller: ControllerService) -> None:
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncController(f"{dead},{controller.api.url}", token, timeout=scaled(20)) as c:
        task_id = await c.queue_task("add", {"a": 2, "b": 3})
        assert (await c.wait(task_id, timeout=scaled(20))).result == 5
        assert c.address == controller.api.url


async def test_the_blocking_client_takes_a_list(controller: ControllerService) -> None:
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    dead = f"http://127.0.0.1:{free_port()}"

    def use() -> str:  # in a thread: the controller runs on this test's loop
        with Controller(f"{controller.api.url}, {dead}", token, timeout=scaled(20)) as c:
            c.list_queue()
            return c.address

    assert await asyncio.to_thread(use) == controller.api.url


async def test_bus_urls_of_one_cluster_one_server_down(config: Config) -> None:
    dead = f"tls://127.0.0.1:{free_port()}"
    async with Client([dead, config.bus_url], config=config, timeout=scaled(20)) as c:
        assert [n.name for n in await c.nodes()] == ["w1"]
        assert c.nc.connected_url is not None
        assert c.nc.connected_url.port == config.nats_port


def test_bus_and_http_addresses_do_not_mix(config: Config) -> None:
    with pytest.raises(UsageError, match="mixes bus and HTTP"):
        Client(["http://127.0.0.1:1", config.bus_url], config=config)
