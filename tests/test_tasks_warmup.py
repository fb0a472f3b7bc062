"""A controller that has just started (or taken over) has not heard its nodes' task offers yet:
a submission for a key nobody offered *yet* is asked again, not refused (#13)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from conftest import scaled
from corral import AsyncController
from corral.config import Config
from corral.controller import Controller
from corral.errors import RetryLater
from corral.tokens import Role
from tasks_fixtures import start_task_node, token_for


@pytest.fixture
def config(config: Config) -> Config:
    # A silence long enough for a node with worker processes to start inside it.
    return msgspec.structs.replace(config, down_after=scaled(8))


async def test_a_key_offered_soon_after_a_start_is_queued_not_refused(
    controller: Controller, config: Config
) -> None:
    assert controller.api is not None and controller.tasks is not None
    token = await token_for(controller, Role.OPERATE)
    async with AsyncController(controller.api.url, token, timeout=scaled(20)) as api:
        # Straight to the controller: "not yet", with when to ask again.
        with pytest.raises(RetryLater, match="still offering their tasks") as caught:
            await controller.tasks.queue("echo", [msgspec.msgpack.encode({"value": 1})])
        assert caught.value.retry_after > 0 and caught.value.status == 503
        # A client asks again as told; the node offering the key comes meanwhile.
        queued = asyncio.create_task(api.queue_task("echo", value="late"))
        node = await start_task_node(config, "w1")
        try:
            ident = await asyncio.wait_for(queued, scaled(20))
            assert (await api.result(ident, scaled(20)))["value"] == "late"
        finally:
            await node.stop()
