"""A task's ``ctx.map`` in flight through kill -9 of the controller (issue #13).

The controller and the node are ``corral`` subprocesses; the controller is restarted on the
same store (a standby taking over is in test_map_takeover_ha.py). Each subtask leaves a mark per run
and waits for its own gate file, so the test decides which items end before the kill.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Procs, eventually, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import Disconnected
from test_tasks_processes import api_config as api_config  # noqa: F401 - fixture
from test_tasks_processes import client as client  # noqa: F401 - fixture
from test_tasks_processes import start_controller, start_node, write_atomically
from test_tasks_processes import token as token  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


async def offers(client: AsyncController, key: str) -> bool:
    """Whether the controller knows a node offering task ``key``."""
    return any(view.key == key and view.nodes for view in await client.list_tasks())


def runs(gates: Path) -> dict[int, int]:
    """How many times each item's subtask has started."""
    counts: dict[int, int] = {}
    for mark in gates.glob("ran-*"):
        item = int(mark.name.split("-")[1])
        counts[item] = counts.get(item, 0) + 1
    return counts


async def children(client: AsyncController, parent: int) -> dict[int, str]:
    """The parent's subtasks' statuses, by item."""
    page = await client.task_history("gated_square", per_page=100)
    return {c.item or 0: c.status for c in page.items if c.parent == parent}


async def check_children(client: AsyncController, parent: int, n: int) -> None:
    """Each subtask of ``parent`` completed in one attempt, and ran once."""
    page = await client.task_history("gated_square", per_page=100)
    mine = sorted((c for c in page.items if c.parent == parent), key=lambda c: c.item or 0)
    assert [c.item for c in mine] == list(range(n))
    for child in mine:
        assert (child.status, child.attempts, len(child.history)) == ("complete", 1, 1), child


async def kill_9_mid_map(
    procs: Procs, config: Config, client: AsyncController, gates: Path, n: int, ended: int
) -> int:
    """Queue ``gated_squares`` of ``n`` items whose first ``ended`` end (their gates open), wait
    until those ended and the next one runs, then ``kill -9`` the controller and start it again
    on the same SQLite file. Returns the parent's id."""
    controller = start_controller(procs, config)
    start_node(procs, config, "m1", slots=2)
    await eventually(lambda: offers(client, "gated_squares"), scaled(30), ignoring=(Disconnected,))
    gates.mkdir()
    for x in range(ended):
        write_atomically(gates / str(x), "go")
    ident = await client.queue_task("gated_squares", n=n, gates=str(gates))

    async def halfway() -> bool:
        done = await children(client, ident)
        return all(done.get(x) == "complete" for x in range(ended)) and ended in runs(gates)

    await eventually(halfway, scaled(30), ignoring=(Disconnected,))
    controller.kill()  # SIGKILL: the map lived in its memory only
    controller.wait()
    start_controller(procs, config)
    return ident


async def test_a_map_in_flight_completes_after_kill_9_of_the_controller(
    broker: EmbeddedBroker,
    api_config: Config,  # noqa: F811
    procs: Procs,
    client: AsyncController,  # noqa: F811
    tmp_path: Path,
) -> None:
    gates = tmp_path / "gates"
    ident = await kill_9_mid_map(procs, api_config, client, gates, n=4, ended=2)
    for x in (2, 3):
        write_atomically(gates / str(x), "go")
    final = await client.wait(ident, scaled(60))
    assert (final.status, final.result) == ("complete", [0, 1, 4, 9]), final.error
    assert final.attempts == 1  # the parent was not re-run either
    await check_children(client, ident, 4)
    assert runs(gates) == {0: 1, 1: 1, 2: 1, 3: 1}  # nothing ended before ran again


async def test_cancelling_a_mapping_parent_after_kill_9_of_the_controller_cancels_its_children(
    broker: EmbeddedBroker,
    api_config: Config,  # noqa: F811
    procs: Procs,
    client: AsyncController,  # noqa: F811
    tmp_path: Path,
) -> None:
    gates = tmp_path / "gates"
    ident = await kill_9_mid_map(procs, api_config, client, gates, n=3, ended=1)
    await eventually(lambda: offers(client, "gated_squares"), scaled(30), ignoring=(Disconnected,))
    await client.cancel_task(ident, force=True)
    parent = await client.wait(ident, scaled(30))
    assert parent.status == "cancelled"

    async def ended() -> bool:
        return set((await children(client, ident)).values()) == {"complete", "cancelled"}

    await eventually(ended, scaled(30), ignoring=(Disconnected,))
    statuses = await children(client, ident)
    assert statuses[0] == "complete" and statuses[1] == statuses[2] == "cancelled"
    assert runs(gates).get(0) == 1
