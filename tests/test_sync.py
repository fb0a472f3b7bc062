"""The blocking twin runs the async client on a background loop."""

from __future__ import annotations

import asyncio

import pytest

from corral import sync
from corral.config import Config
from corral.controller import Controller
from corral.errors import Timeout


async def test_sync_client_reads_the_registry_from_a_thread(
    controller: Controller, config: Config
) -> None:
    def script() -> tuple[list[str], str]:
        with sync.Client.connect(config) as client:
            names = [n.name for n in client.nodes()]
            with pytest.raises(Timeout):
                client.wait_for(lambda nodes: len(nodes) == 1, timeout=0.3)
            return names, client.stats().controller

    # The controller lives in this loop; the "script" blocks in its own thread.
    names, controller_id = await asyncio.to_thread(script)
    assert names == [] and controller_id == controller.id


async def test_calling_sync_from_its_own_loop_is_refused() -> None:
    async def inner() -> None:
        with pytest.raises(RuntimeError, match="await the async API"):
            sync.call(asyncio.sleep(0))

    sync.call(inner())


async def test_sync_client_sends_a_command_and_blocks_until_settled(
    controller: Controller, config: Config
) -> None:
    from pathlib import Path

    from corral.node import Node
    from corral.node.handlers import Handlers
    from corral.security import Authority

    creds = config.data_path / "s1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("s1"))
    work = config.data_path / "nodes" / "s1"
    handlers = Handlers(work, commands={"double": lambda x: 2 * x})
    node = Node(config, "s1", creds=Path(creds), handlers=handlers, work_dir=work)
    await node.start(wait_for_bus=5)
    await node.wait_joined()

    def script() -> tuple[dict[str, object], int]:
        with sync.Client.connect(config) as client:
            handle = client.send("s1", "double", x=21)
            return handle.results, client.commands(limit=1)[0].serial

    try:
        results, last = await asyncio.to_thread(script)
    finally:
        await node.stop()
    assert results == {"s1": 42} and last == 1
