"""kill -9 of the controller while clients submit: every submission is queued exactly once.

Before idempotency keys, a call whose connection dropped in the kill either failed though its
task had been queued, or was sent again and queued twice. Now the client re-sends it with
its key until the restarted controller answers, and the answer is the first one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import msgspec
import pytest

from conftest import Procs, eventually, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import Disconnected, RemoteError
from corral.store import open_store
from test_tasks_processes import (  # noqa: F401 - fixtures
    api_config,
    client,
    start_controller,
    start_node,
    token,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def config(config: Config, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """On SQLite, and on PostgreSQL when CORRAL_TEST_POSTGRES_DSN is set (children too)."""
    monkeypatch.setenv("CORRAL_STORE", store_url)
    yield msgspec.structs.replace(config, store=store_url)


async def test_submissions_across_a_controller_kill_9_are_queued_exactly_once(
    broker: EmbeddedBroker,
    api_config: Config,  # noqa: F811
    procs: Procs,
    client: AsyncController,  # noqa: F811
) -> None:
    controller = start_controller(procs, api_config)
    start_node(procs, api_config, "k1", slots=4)
    await eventually(lambda: offered_by_noop(client), scaled(30), ignoring=(Disconnected,))
    returned: list[int] = []
    refused = 0
    stop = asyncio.Event()

    async def submitter() -> None:
        nonlocal refused
        while not stop.is_set():
            try:
                returned.append(await client.queue_task("noop"))
            except RemoteError:  # the restarted controller has not heard the node yet
                refused += 1
                await asyncio.sleep(0.05)

    loops = [asyncio.create_task(submitter()) for _ in range(6)]
    try:
        await eventually(
            lambda: _at_least(returned, 30, loops), scaled(30), ignoring=(Disconnected,)
        )
        controller.kill()  # SIGKILL with calls in flight
        controller.wait()
        before = len(returned)
        start_controller(procs, api_config)
        await eventually(
            lambda: _at_least(returned, before + 30, loops), scaled(60), ignoring=(Disconnected,)
        )
    finally:
        stop.set()
        await asyncio.gather(*loops)
    assert len(set(returned)) == len(returned)  # no call answered with another's instance
    async with await open_store(api_config.store_url) as store:
        stored = (await store.tasks.page(key="noop", per_page=1)).total
    # Every instance in the store was answered to exactly one call: none queued twice, none
    # queued by a call that reported failure.
    assert stored == len(returned), (stored, len(returned), refused)


async def offered_by_noop(api: AsyncController) -> bool:
    return bool(await api.list_tasks(keys=["noop"]))


async def _at_least(values: list[int], count: int, loops: list[asyncio.Task[None]]) -> bool:
    """True once ``count`` calls returned; a submitter's failure (Disconnected) is raised."""
    for loop in loops:
        if loop.done() and loop.exception() is not None:
            raise AssertionError(f"a submission failed: {loop.exception()!r}")
    return len(values) >= count
