"""A task's ``ctx.map`` in flight when the leader is killed: the standby takes it over (#13).

Two ``corral controller`` processes on one PostgreSQL store (tests/ha_fixtures.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import PG_DSN_ENV, eventually, scaled
from corral import AsyncController
from corral.config import Config
from ha_fixtures import LEASE, Controllers, offered
from ha_fixtures import controllers as controllers  # noqa: F401 - fixture
from ha_fixtures import token as token  # noqa: F401 - fixture
from tasks_fixtures import start_task_node
from test_map_takeover import check_children, children, runs
from test_tasks_processes import write_atomically

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_DSN_ENV), reason=f"{PG_DSN_ENV} not set"),
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
]


async def test_a_map_in_flight_completes_on_the_standby_that_takes_over(
    config: Config,
    controllers: Controllers,  # noqa: F811
    token: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    first = await controllers.leader(scaled(30))
    node = await start_task_node(config, "m1", slots=2)
    gates = tmp_path / "gates"
    gates.mkdir()
    try:
        urls = sorted(controllers.urls, key=lambda url: url != controllers.urls[first])
        async with AsyncController(urls, token, timeout=scaled(20)) as client:
            await offered(client, "gated_squares", scaled(30))
            write_atomically(gates / "0", "go")
            ident = await client.queue_task("gated_squares", n=3, gates=str(gates))

            async def halfway() -> bool:
                done = await children(client, ident)
                return done.get(0) == "complete" and 1 in runs(gates)

            await eventually(halfway, scaled(30))
            controllers.kill(first)
            await controllers.leader(scaled(LEASE + 20), other_than=first)
            for x in (1, 2):
                write_atomically(gates / str(x), "go")
            final = await client.wait(ident, scaled(60))
            assert (final.status, final.result) == ("complete", [0, 1, 4]), final.error
            await check_children(client, ident, 3)
            assert runs(gates) == {0: 1, 1: 1, 2: 1}
    finally:
        await node.stop()
