"""corral on a three-server NATS cluster (JetStream replicas 3): kill -9 one server, even the
controller's, and the nodes, the controller and the clients carry on (commands and tasks)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from conftest import PG_DSN_ENV, scaled
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


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_DSN_ENV), reason=f"{PG_DSN_ENV} not set")
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_the_leader_rides_through_the_loss_of_its_nats_server(
    config: Config, cluster: NatsCluster, store_url: str
) -> None:
    """Two controllers on PostgreSQL (issue #13): the leader's server goes away; the leader
    moves to another server and keeps the lease (a reconnect is no partition: it does not
    step down), and commands and tasks sent afterwards complete."""
    config = msgspec.structs.replace(cluster_config(config, cluster), store=store_url, lease=2.0)
    controllers = [ControllerService(config), ControllerService(config)]
    nodes = []
    try:
        for controller in controllers:
            await controller.start()
        leading = [c for c in controllers if c.leadership and c.leadership.leading]
        assert len(leading) == 1
        leader = leading[0]
        assert leader.leadership is not None and leader.nc is not None
        epoch = leader.leadership.epoch
        nodes = [await start_task_node(config, name) for name in ("c1", "c2")]
        for node in nodes:
            await offered(leader, node.name)
        async with await Client.connect(config, timeout=scaled(20)) as client:
            assert sorted(await ping_all(client)) == ["c1", "c2"]
            assert leader.nc.connected_url is not None
            victim = cluster.ports.index(leader.nc.connected_url.port)
            cluster.kill(victim)

            async with asyncio.timeout(scaled(30)):
                while True:
                    try:
                        results = await ping_all(client)
                        break
                    except Exception:  # noqa: BLE001 - reconnecting; the deadline bounds it
                        await asyncio.sleep(0.2)
            assert sorted(results) == ["c1", "c2"]
            ids = [await client.queue_task("add", {"a": i, "b": i}) for i in range(3)]
            for i, task_id in enumerate(ids):
                assert (await client.wait(task_id, timeout=scaled(30))).result == 2 * i
            assert leader.nc.connected_url.port != cluster.ports[victim]
            # Still the one leader, at the same epoch: no takeover for a reconnect.
            assert leader.leadership.leading and leader.leadership.epoch == epoch
            assert [c for c in controllers if c.leadership and c.leadership.leading] == [leader]
    finally:
        for node in nodes:
            await node.stop()
        # The standby first: it would take over while the leader stops.
        for controller in sorted(
            controllers, key=lambda c: bool(c.leadership and c.leadership.leading)
        ):
            await controller.stop()
