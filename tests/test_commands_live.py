"""Live command delivery end to end: gaps filled from the controller, catch-up requests
checked, final reports confirmed in batches (real nats-server, real controller and nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from conftest import scaled
from corral import bus, subjects, wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import Refused, Timeout
from corral.node import Node
from test_commands import _wait_consumers, creds_for, run, start_node

__all__: list[str] = []


@pytest.fixture
def config(config: Config, store_url: str) -> Config:
    """SQLite, and PostgreSQL when CORRAL_TEST_POSTGRES_DSN is set."""
    return msgspec.structs.replace(config, store=store_url)


@pytest.fixture
async def client(controller: Controller, config: Config) -> AsyncIterator[Client]:
    c = await Client.connect(config)
    try:
        yield c
    finally:
        await c.close()


def _applied(node: Node) -> list[int]:
    """Record every serial ``node`` applies from now on."""
    seen: list[int] = []
    original = node.commands.on_applied

    def record(serial: int) -> None:
        seen.append(serial)
        original(serial)

    node.commands.on_applied = record
    return seen


async def test_a_lost_live_message_is_fetched_and_applied_in_order_once(
    controller: Controller, client: Client, config: Config
) -> None:
    nodes = [await start_node(config, "gap1"), await start_node(config, "gap2")]
    try:
        await _wait_consumers(controller, ["gap1", "gap2"])
        await run(client, "*")
        gap2 = nodes[1]
        applied = _applied(gap2)
        # gap2 stops hearing the live subject (as in a network cut): what is sent meanwhile
        # is lost to it, the bodies of commands to it alone included.
        live = gap2.commands._subs[1]
        assert live.subject == subjects.LIVE_COMMANDS
        await live.unsubscribe()
        missed = [
            await client.set("*", "gain", "2.0"),
            await client.send("gap2", "whoami", suffix="-direct"),
            await client.set("*", "gain", "3.0"),
        ]
        gap2.commands._subs[1] = await gap2.nc.subscribe(  # type: ignore[union-attr]
            subjects.LIVE_COMMANDS, cb=gap2.commands._on_live
        )
        # The next command shows the gap (or the announcement did): gap2 fetches the three
        # and runs them in order, once.
        got = await (await client.get("*", "gain")).wait(scaled(10))
        assert got.results == {"gap1": 3.0, "gap2": 3.0}  # the SETs ran before the GET
        for handle in missed:
            await handle.wait(scaled(10))
            assert handle.ok, handle.failed
        assert missed[1].results == {"gap2": "gap2-direct"}
        serials = [m.serial for m in missed] + [got.serial]
        assert applied == serials  # in serial order, each exactly once
        assert controller.commands.counters.get("catchup", 0) >= 1
    finally:
        for node in nodes:
            await node.stop()


async def test_a_lost_last_message_is_fetched_after_the_announcement(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "tip1")
    try:
        await _wait_consumers(controller, ["tip1"])
        live = node.commands._subs[1]
        await live.unsubscribe()
        handle = await client.send("*", "whoami")
        node.commands._subs[1] = await node.nc.subscribe(  # type: ignore[union-attr]
            subjects.LIVE_COMMANDS, cb=node.commands._on_live
        )
        # Nothing follows it: the controller's announcements name its serial.
        await handle.wait(scaled(15))
        assert handle.results == {"tip1": "tip1"}
    finally:
        await node.stop()


async def _node_connection(config: Config, name: str) -> Any:
    return await bus.connect(
        config,
        f"node-{name}",
        creds=creds_for(config, name),
        inbox_prefix=subjects.inbox_prefix(name),
        wait=scaled(5),
    )


async def test_catch_up_answers_a_node_its_own_commands_and_refuses_the_rest(
    controller: Controller, client: Client, config: Config
) -> None:
    nodes = [await start_node(config, "cu1"), await start_node(config, "cu2")]
    try:
        await _wait_consumers(controller, ["cu1", "cu2"])
        mine = await run(client, "cu1", suffix="-secret")
        theirs = await run(client, "cu2")
        both = await run(client, "*")
        nc = await _node_connection(config, "cu1")
        try:
            subject = subjects.node_in("cu1", subjects.CATCHUP_VERB)
            ask = wire.CatchUp(after=mine.serial - 1, upto=both.serial)
            reply = await bus.request(nc, subject, ask, wire.CatchUpReply, timeout=scaled(5))
            got = [msgspec.msgpack.decode(b, type=wire.NodeCommand).serial for b in reply.commands]
            assert got == [mine.serial, both.serial] and reply.covered == both.serial
            assert theirs.serial not in got  # another node's command is not answered
            # The same from the store, once the controller's memory no longer has them.
            controller.commands.stream.recent.clear()
            again = await bus.request(nc, subject, ask, wire.CatchUpReply, timeout=scaled(5))
            assert again == reply
            # Out of range: beyond the last serial, empty, backwards, negative.
            last = controller.commands.stream.last_live
            for after, upto in ((0, last + 1), (5, 5), (6, 2), (-1, 1)):
                with pytest.raises(Refused, match="catch-up"):
                    await bus.request(
                        nc,
                        subject,
                        wire.CatchUp(after=after, upto=upto),
                        wire.CatchUpReply,
                        timeout=scaled(5),
                    )
            assert controller.commands.counters["catchup.refused"] == 4
            # Asking as another node: the bus refuses to carry it (its credential).
            other = subjects.node_in("cu2", subjects.CATCHUP_VERB)
            with pytest.raises(Timeout):
                await bus.request(nc, other, ask, wire.CatchUpReply, timeout=scaled(1))
        finally:
            await nc.close()
    finally:
        for node in nodes:
            await node.stop()


async def test_final_reports_are_confirmed_in_batches(
    controller: Controller, client: Client, config: Config
) -> None:
    nodes = [await start_node(config, f"ack{i}") for i in range(3)]
    # node -> serials confirmed to it alone; serials confirmed to every node at once
    alone: list[tuple[str, tuple[int, ...]]] = []
    shared: list[tuple[int, ...]] = []
    riding: set[int] = set()  # on live commands, at no extra message

    async def on_ack(msg: Any) -> None:
        ack = wire.decode(msg.data, wire.ReportAck, msg.headers)
        alone.append((msg.subject.split(".")[2], ack.serials))

    async def on_live(msg: Any) -> None:
        live = wire.decode(msg.data, wire.LiveCommand | wire.ReportAck, msg.headers)  # type: ignore[arg-type]
        if isinstance(live, wire.ReportAck):
            shared.append(live.serials)
        else:
            riding.update(live.settled)

    assert controller.nc is not None
    subs = [
        await controller.nc.subscribe(subjects.report_acks("*"), cb=on_ack),
        await controller.nc.subscribe(subjects.LIVE_COMMANDS, cb=on_live),
    ]
    try:
        await _wait_consumers(controller, [n.name for n in nodes])
        # Sent one after the other: each settles before the next, which carries it.
        sequential = [await run(client, "*") for _ in range(10)]
        # A slow node: the others' reports are confirmed to them alone, together.
        handles = [await client.send("ack0", "slow", seconds=0.6)]
        handles += [await client.send("*", "whoami") for _ in range(5)]
        for handle in handles:
            await handle.wait(scaled(10))

        async def all_confirmed() -> None:
            while any(n.commands.core.outbox for n in nodes):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_confirmed(), scaled(10))
        everyone = riding | {s for serials in shared for s in serials}
        assert {h.serial for h in sequential} <= everyone
        for node in nodes:
            mine = {s for name, serials in alone if name == node.name for s in serials}
            for handle in sequential + handles:
                if node.name in handle.nodes:
                    assert handle.serial in everyone | mine
        # 3 nodes x 16 commands: 48 final reports, confirmed in far fewer messages.
        assert len(alone) + len(shared) <= 12, (alone, shared)
        assert controller.commands.counters.get("rejected.stale-outcome", 0) == 0
    finally:
        for sub in subs:
            await sub.unsubscribe()
        for node in nodes:
            await node.stop()
