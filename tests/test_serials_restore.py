"""Serials never go backwards: a controller started on an older or empty store (a restored
backup, a move to another database) issues serials above every serial a node applied, and
every UP node runs the next command (issue #12).

Real nats-server, real SQLite files (and PostgreSQL when configured), nodes in this process
that keep running (and keep their applied serial) across the controller's restarts.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from conftest import scaled
from corral import bus, subjects, wire
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import ControllerUnavailable
from corral.node import Node
from corral.security import ADMIN_INBOX
from test_commands import _wait_consumers, creds_for, run, start_node

AHEAD = "commands.serials.ahead-of-store"


async def following(client: Client, controller: Controller) -> None:
    """Wait until ``client``'s requests reach ``controller`` (not the one before it)."""
    async with asyncio.timeout(scaled(10)):
        while True:
            try:
                if (await client.stats()).controller == controller.id:
                    return
            except ControllerUnavailable:
                pass
            await asyncio.sleep(0.05)


class Fleet:
    """Nodes n1 and n2 that outlive the controllers a test starts and stops one by one."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.nodes: list[Node] = []
        self.client: Client | None = None
        self.controller: Controller | None = None

    async def start_controller(
        self, config: Config | None = None, *, wait_nodes: bool = True
    ) -> Controller:
        self.controller = ControllerService(config or self.config)
        await self.controller.start()
        if self.client is None:
            self.client = await Client.connect(self.config)
        await following(self.client, self.controller)
        if not wait_nodes:
            return self.controller
        if not self.nodes:
            self.nodes = [await start_node(self.config, n) for n in ("n1", "n2")]
        for node in self.nodes:
            await asyncio.wait_for(node.wait_joined(self.controller.id), scaled(10))
        await _wait_consumers(self.controller, ["n1", "n2"])
        return self.controller

    async def stop_controller(self) -> None:
        assert self.controller is not None
        await self.controller.stop()
        self.controller = None

    async def send_to_all(self) -> int:
        """A command every node runs; returns its serial."""
        assert self.client is not None
        handle = await run(self.client, "*")
        assert handle.results == {"n1": "n1", "n2": "n2"}, handle.outcomes
        return int(handle.serial)

    def applied(self) -> int:
        return max(n.last_serial for n in self.nodes)

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
        if self.client is not None:
            await self.client.close()
        if self.controller is not None:
            await self.controller.stop()


@pytest.fixture
async def fleet(config: Config, broker: EmbeddedBroker) -> AsyncIterator[Fleet]:
    f = Fleet(config)
    try:
        yield f
    finally:
        await f.close()


def backup(db: Path, to: Path) -> None:
    """A consistent copy of a SQLite store (the sqlite3 backup API)."""
    with sqlite3.connect(db) as src, sqlite3.connect(to) as dst:
        src.backup(dst)


def restore(copy: Path, db: Path) -> None:
    """Put an older copy back in place of the store (the controller is stopped)."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(copy.read_bytes())


async def delete_command_stream(config: Config) -> None:
    """As if the bus were new too: the command log is gone."""
    nc = await bus.connect(config, "controller")
    try:
        await nc.jetstream().delete_stream(subjects.COMMAND_STREAM)
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("bus_too", "at_once"),
    [(False, False), (True, False), (True, True)],
    ids=["same-bus", "new-bus", "new-bus-sent-before-any-node-rejoins"],
)
async def test_after_restoring_an_older_backup_every_up_node_runs_the_next_command(
    fleet: Fleet,
    config: Config,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    bus_too: bool,
    at_once: bool,
) -> None:
    db = Path(config.store_url)
    await fleet.start_controller()
    first = await fleet.send_to_all()
    await fleet.stop_controller()
    old = tmp_path / "backup.db"
    backup(db, old)  # what the operator copied away, before the next commands
    await fleet.start_controller()
    sent = [await fleet.send_to_all() for _ in range(4)]
    assert sent == list(range(first + 1, first + 5))
    await fleet.stop_controller()
    applied = fleet.applied()
    assert applied == sent[-1]
    restore(old, db)
    if bus_too:
        await delete_command_stream(config)
    caplog.set_level(logging.WARNING, "corral.controller.commands")
    # Sent at once, the command waits until the nodes' heartbeats said what they applied.
    controller = await fleet.start_controller(wait_nodes=not at_once)
    assert fleet.client is not None
    handle = await run(fleet.client, "*")
    assert handle.serial > applied
    assert {n: o.state for n, o in handle.outcomes.items()} == {"n1": "done", "n2": "done"}
    assert handle.results == {"n1": "n1", "n2": "n2"}
    assert all(n.last_serial == handle.serial for n in fleet.nodes)
    # Said loudly, and counted.
    assert (await fleet.client.stats()).counters[AHEAD] >= 1
    warned = [r.getMessage() for r in caplog.records if "the store was restored" in r.getMessage()]
    assert warned and f"the store's highest is {first}" in warned[0]
    assert f"serials continue from {applied + 1}" in " ".join(warned)
    assert controller.commands.book.last_serial == handle.serial
    # And the next one follows on.
    assert (await run(fleet.client, "n1")).serial == handle.serial + 1


@pytest.mark.parametrize("bus_too", [False, True], ids=["same-bus", "new-bus"])
async def test_a_move_to_an_empty_store_continues_the_serials(
    store_url: str, fleet: Fleet, config: Config, bus_too: bool
) -> None:
    """SQLite to a new (empty) store: a fresh file, or PostgreSQL when configured (the
    database outlives the fleet: ``store_url`` comes first)."""
    await fleet.start_controller()
    for _ in range(3):
        await fleet.send_to_all()
    await fleet.stop_controller()
    applied = fleet.applied()
    if bus_too:
        await delete_command_stream(config)
    moved = msgspec.structs.replace(
        config, store=store_url if store_url.startswith("postgres") else f"{store_url}.new"
    )
    await fleet.start_controller(moved)
    assert fleet.client is not None
    handle = await run(fleet.client, "*")
    assert handle.serial > applied
    assert handle.results == {"n1": "n1", "n2": "n2"}


async def test_a_node_claiming_an_absurd_serial_is_ignored(
    fleet: Fleet, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    controller = await fleet.start_controller()
    before = controller.commands.book.last_serial
    caplog.set_level(logging.WARNING, "corral.controller.commands")
    nc = await bus.connect(
        config,
        "node-n1",
        creds=config.data_path / "n1.creds",
        inbox_prefix=subjects.inbox_prefix("n1"),
    )
    try:
        beat = wire.Heartbeat(instance=fleet.nodes[0].instance, last_serial=2**63 - 1)
        await nc.publish(subjects.node_in("n1", "hb"), wire.encode(beat), headers=wire.HEADERS)
        async with asyncio.timeout(scaled(10)):
            while controller.commands.counters.get("serials.refused-claim", 0) < 1:
                await asyncio.sleep(0.02)
    finally:
        await nc.close()
    assert "above any serial corral issues" in caplog.text
    assert await fleet.send_to_all() == before + 1


@pytest.fixture
def slow_beats(config: Config) -> Config:
    """Heartbeats 2 s apart: the controller's settling window is 5 s, so a node started in
    this test joins, and a command is sent, well inside it."""
    config.heartbeat_interval = 2.0
    config.down_after = 8.0
    return config


async def test_a_command_sent_before_a_silent_node_speaks_waits_for_its_heartbeat(
    slow_beats: Config, controller: Controller
) -> None:
    """Empty store, empty stream: n2 applied 100 under an earlier controller and has not
    spoken yet when a command arrives; its heartbeat comes within the settling window."""
    config = slow_beats
    n1 = await start_node(config, "n1")
    admin = await bus.connect(config, "admin", inbox_prefix=ADMIN_INBOX)
    n2 = await bus.connect(
        config,
        "node-n2",
        creds=creds_for(config, "n2"),
        inbox_prefix=subjects.inbox_prefix("n2"),
    )
    try:
        assert not controller.commands.settled.is_set()
        request = wire.CommandRequest(targets=["n1"], name="whoami", actor="test")
        sent = asyncio.ensure_future(
            admin.request(
                subjects.ctl_as("send", "admin"),
                wire.encode(request),
                timeout=scaled(10),
                headers=wire.HEADERS,
            )
        )
        await admin.flush()  # the send is at the server before the heartbeat
        beat = wire.Heartbeat(instance="an-earlier-n2", last_serial=100)
        await n2.publish(subjects.node_in("n2", "hb"), wire.encode(beat), headers=wire.HEADERS)
        await n2.flush()
        reply = await sent
        accepted = wire.decode(reply.data, wire.CommandAccepted, reply.headers)
        assert accepted.serial == 101
        async with asyncio.timeout(scaled(10)):
            while n1.last_serial != 101:
                await asyncio.sleep(0.02)
    finally:
        await admin.close()
        await n2.close()
        await n1.stop()
