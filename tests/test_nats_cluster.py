"""corral on a three-server NATS cluster (JetStream replicas 3): kill -9 one server, even the
controller's, and the nodes, the controller and the clients carry on (commands and tasks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import scaled
from corral import subjects
from corral.app import ControllerService
from corral.client import Client
from corral.config import Config
from nats_cluster import NatsCluster, cluster_config
from tasks_fixtures import offered, start_task_node

pytestmark = pytest.mark.slow


@pytest.fixture
async def cluster(config: Config, tmp_path: Path) -> AsyncIterator[NatsCluster]:
    """A running three-server cluster, stopped at the end of the test."""
    c = NatsCluster(config, tmp_path / "nats-cluster")
    try:
        await c.start_all()
        yield c
    finally:
        c.stop_all()


async def ping_all(client: Client) -> dict[str, object]:
    handle = await client.send("*", "ping")
    await handle.wait(scaled(20))
    assert handle.ok, handle.failed
    return handle.results


async def test_losing_one_nats_server_loses_nothing(config: Config, cluster: NatsCluster) -> None:
    config = cluster_config(config, cluster)
    controller = ControllerService(config)
    await controller.start()
    nodes = []
    try:
        nodes = [await start_task_node(config, name) for name in ("c1", "c2")]
        for node in nodes:
            await offered(controller, node.name)
        async with await Client.connect(config, timeout=scaled(20)) as client:
            assert controller.nc is not None
            info = await controller.nc.jetstream().stream_info(subjects.COMMAND_STREAM)
            assert info.config.num_replicas == 3
            assert sorted(await ping_all(client)) == ["c1", "c2"]
            first = await client.queue_task("add", {"a": 1, "b": 2})
            assert (await client.wait(first, timeout=scaled(20))).result == 3

            # The server the controller is connected to goes away at once.
            assert controller.nc.connected_url is not None
            victim = cluster.ports.index(controller.nc.connected_url.port)
            cluster.kill(victim)

            async with asyncio.timeout(scaled(30)):  # commands: every node, each once
                while True:
                    try:
                        results = await ping_all(client)
                        break
                    except Exception:  # noqa: BLE001 - reconnecting; the deadline bounds it
                        await asyncio.sleep(0.2)
            assert sorted(results) == ["c1", "c2"]
            ids = [await client.queue_task("add", {"a": i, "b": i}) for i in range(5)]
            for i, task_id in enumerate(ids):
                assert (await client.wait(task_id, timeout=scaled(30))).result == 2 * i
            assert controller.nc.connected_url.port != cluster.ports[victim]
    finally:
        for node in nodes:
            await node.stop()
        await controller.stop()
