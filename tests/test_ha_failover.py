"""Several controllers on PostgreSQL, as real processes: kill -9 the leader while a client
submits tasks through every controller's address; each submission that was answered is kept
and runs, and the client carries on at the new leader (skipped without
``CORRAL_TEST_POSTGRES_DSN``)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from conftest import PG_DSN_ENV, scaled
from corral import AsyncController
from corral.config import Config
from corral.errors import CorralError
from ha_fixtures import LEASE, Controllers, offered
from ha_fixtures import controllers as controllers  # noqa: F401 - fixture
from ha_fixtures import token as token  # noqa: F401 - fixture
from tasks_fixtures import start_task_node

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_DSN_ENV), reason=f"{PG_DSN_ENV} not set"),
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
]


async def test_kill_9_of_the_leader_loses_no_answered_submission(
    config: Config, controllers: Controllers, token: str
) -> None:
    first = await controllers.leader(scaled(30))
    node = await start_task_node(config, "w1")
    answered: list[int] = []
    failed: list[str] = []
    stop = asyncio.Event()
    try:
        # The leader first: a standby answers reads from the store (no scheduler's view).
        urls = sorted(controllers.urls, key=lambda url: url != controllers.urls[first])
        async with AsyncController(urls, token, timeout=scaled(20)) as client:
            await offered(client, "add", scaled(30))

            async def submit() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        answered.append(await client.queue_task("add", {"a": i, "b": 1}))
                    except CorralError as exc:  # the client's bound ran out: say it, go on
                        failed.append(str(exc))

            traffic = asyncio.create_task(submit())
            while len(answered) < 5:
                await asyncio.sleep(0.05)  # let traffic flow to the first leader
            killed = time.monotonic()
            count_before = len(answered)
            controllers.kill(first)
            second = await controllers.leader(scaled(LEASE + 20), other_than=first)
            async with asyncio.timeout(scaled(30)):  # submissions answered by the new leader
                while len(answered) < count_before + 5:
                    await asyncio.sleep(0.05)
            took = time.monotonic() - killed
            stop.set()
            await traffic
            assert second != first and not failed, failed
            assert client.address == controllers.urls[second]
            for i, task_id in enumerate(answered, 1):  # each answered one is kept and runs
                assert (await client.wait(task_id, timeout=scaled(30))).result == i + 1
            print(f"{len(answered)} answered; new leader taking writes {took:.2f}s after kill")
    finally:
        stop.set()
        await node.stop()
