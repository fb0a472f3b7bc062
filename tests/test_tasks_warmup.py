"""A controller that has just started (or taken over) has not heard its nodes' task offers yet:
a submission for a key its nodes have not offered *yet* is asked again, not refused (#13)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from conftest import scaled
from corral import AsyncController
from corral.app import ControllerService
from corral.config import Config
from corral.controller import Controller
from corral.errors import RetryLater, UnknownTask
from corral.tokens import Role
from tasks_fixtures import offered, start_task_node, token_for


async def test_after_a_restart_a_key_not_offered_yet_is_asked_again_not_refused(
    controller: Controller, config: Config
) -> None:
    node = await start_task_node(config, "w1")
    try:
        await offered(controller, "w1")
        await controller.stop()
        again = ControllerService(config)  # the same store: w1 is UP there, with slots
        await again.start()
        try:
            assert again.tasks is not None and again.api is not None
            if "w1" not in again.tasks.core.nodes:  # its workers have not re-offered yet
                with pytest.raises(RetryLater, match="still offering their tasks") as caught:
                    await again.tasks.queue("echo", [msgspec.msgpack.encode({"value": 1})])
                assert caught.value.retry_after > 0 and caught.value.status == 503
            token = await token_for(again, Role.OPERATE)
            async with AsyncController(again.api.url, token, timeout=scaled(20)) as api:
                ident = await api.queue_task("echo", value="late")  # asked again as told
                assert (await api.result(ident, scaled(20)))["value"] == "late"
                await offered(again, "w1")
                # Once every node has offered its tasks, an unknown key is refused at once.
                with pytest.raises(UnknownTask, match="no node offers task 'nope'"):
                    await asyncio.wait_for(api.queue_task("nope"), scaled(2))
        finally:
            await again.stop()
    finally:
        await node.stop()
