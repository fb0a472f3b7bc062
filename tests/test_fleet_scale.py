"""No false DOWN (issue #14): 200 nodes in one process, a real controller process and
nats-server, broadcasts and tasks flowing while they join and after. The nodes' process is
busy joining its others while the first ones must keep heartbeating; none may be declared
DOWN. Production timings (1 s heartbeats, DOWN after 3 s), not the fast ones of the other
tests: the point is what an operator would see."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from conftest import Procs, scaled
from corral import wire
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.node import Node
from corral.node.daemon import beat_delay
from corral.security import Authority

NODES = 200
TASK_NODES = 2  # each starts a worker process: a few are enough to keep tasks flowing


@pytest.fixture
def config(config: Config) -> Config:
    """The shipped heartbeat and DOWN timings."""
    return msgspec.structs.replace(config, heartbeat_interval=1.0, down_after=3.0)


@pytest.fixture
async def fleet(config: Config) -> AsyncIterator[list[Node]]:
    """``NODES`` nodes in this process (not started), stopped at the end."""
    issued = Authority.load(config.data_path).enroll_many(f"f{i:03d}" for i in range(NODES))
    nodes = []
    for i, (name, text) in enumerate(issued.items()):
        creds = config.data_path / f"{name}.creds"
        creds.write_text(text)
        tasks = ("taskmods.basic",) if i < TASK_NODES else ()
        nodes.append(Node(config, name, creds=creds, slots=1, tasks=tasks))
    try:
        yield nodes
    finally:
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)


async def traffic(client: Client, sent: list[int], tasks: list[int]) -> None:
    """Broadcast a ping to every node and queue a few tasks, over and over, until cancelled."""
    while True:
        with contextlib.suppress(Exception):  # no node UP yet, no task offered yet
            sent.append((await client.send("*", "ping")).serial)
        with contextlib.suppress(Exception):
            tasks += await client.queue_tasks("echo", [{"value": i} for i in range(10)])
        await asyncio.sleep(0.2)  # the traffic's rhythm, not synchronisation


async def test_no_node_goes_down_while_200_join_in_one_process_and_commands_flow(
    config: Config, broker: EmbeddedBroker, procs: Procs, fleet: list[Node]
) -> None:
    procs.start("controller", "--nats", config.bus_url, log="controller")
    events: list[wire.NodeEvent] = []
    async with await Client.connect(config, wait=scaled(10)) as client:
        await client.wait_for(lambda views: True, scaled(20))  # the controller answers

        async def watch() -> None:
            async for event in client.events():
                events.append(event)

        watcher = asyncio.create_task(watch())
        await client.nc.flush()  # the subscription holds before any node starts
        sent: list[int] = []
        tasks: list[int] = []
        flow = asyncio.create_task(traffic(client, sent, tasks))
        try:
            await asyncio.gather(*(n.start(wait_for_bus=scaled(10)) for n in fleet))
            names = {n.name for n in fleet}
            await client.wait_for(
                lambda views: sum(v.status == "UP" and v.name in names for v in views) == NODES,
                scaled(40),
            )
            # Steady state with traffic: twice down_after, so a silence would have shown.
            steady_until = time.monotonic() + 2 * config.down_after
            while time.monotonic() < steady_until:
                await asyncio.sleep(0.5)  # a measurement window, not synchronisation
        finally:
            flow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flow
        last = await client.send("*", "ping")
        await last.wait(scaled(30))
        assert len(last.nodes) == NODES and last.ok, last.failed
        assert sent and tasks, "no command or task flowed"
        finished = await client.wait_many(tasks, timeout=scaled(60))
        assert all(t.status == "complete" for t in finished)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    downs = [e for e in events if e.new == "DOWN"]
    assert downs == [], f"{len(downs)} false DOWN: {downs[:5]}"
    assert sum(e.new == "UP" for e in events) == NODES  # each joined once, never came back


def test_the_nodes_of_one_process_beat_at_the_same_instants() -> None:
    """Whenever a node of the process asks (its start, its last beat, a late wake-up), its
    next beat falls on the process's instants ``phase + k * interval``: one wake-up per
    interval for the whole process, and beats read together at the controller."""
    interval, phase = 1.0, 0.3
    asked_at = (10.25, 10.5, 10.7, 11.1, 10.31)
    assert {round(now + beat_delay(now, phase, interval), 6) for now in asked_at} == {11.3}
    # A timer that fires a little before the instant, or just after it, beat for it: the
    # next is a whole interval later, not a moment later.
    assert round(11.2995 + beat_delay(11.2995, phase, interval), 6) == 12.3
    assert round(11.3001 + beat_delay(11.3001, phase, interval), 6) == 12.3
    # Never sooner than a tenth of an interval, never later than 1.1 intervals.
    delays = [beat_delay(10 + i / 997, phase, interval) for i in range(2000)]
    assert 0.1 <= min(delays) and max(delays) <= 1.1 + 1e-9
