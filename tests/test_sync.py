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
