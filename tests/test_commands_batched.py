"""Several command reports in one message, end to end (real nats-server, controller and
nodes): what a node ran together goes in one message, and such a message speaks only for the
node whose subject it came on, like a single report (issue #14)."""

from __future__ import annotations

from typing import Any

import msgspec

from conftest import eventually, scaled
from corral import bus, subjects, wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.states import CommandState
from test_commands import _wait_consumers, creds_for, start_node
from test_commands import client as client  # noqa: F401 - fixture

__all__: list[str] = []

_out = msgspec.msgpack.Decoder(wire.CommandReport | wire.CommandReports)


async def _watch_out(controller: Controller, node: str) -> list[Any]:
    """Record every message on ``node``'s report subject, decoded."""
    seen: list[Any] = []

    async def on_out(msg: Any) -> None:
        seen.append(_out.decode(msg.data))

    assert controller.nc is not None
    await controller.nc.subscribe(subjects.node_in(node, "out"), cb=on_out)
    await controller.nc.flush()
    return seen


async def test_commands_run_together_are_reported_in_one_message(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "bat1")
    try:
        await _wait_consumers(controller, ["bat1"])
        assert node.commands.report_batch == wire.MAX_BATCHED_REPORTS  # the join reply said so
        seen = await _watch_out(controller, "bat1")
        # Quick commands queued behind a slow one run together once it ends.
        slow = await client.send("bat1", "slow", seconds=0.5)
        quick = [await client.set("bat1", "gain", str(i)) for i in range(5)]
        for handle in [slow, *quick]:
            await handle.wait(scaled(10))
            assert handle.ok, handle.failed
        assert [h.results["bat1"] for h in quick] == [0.0, 1.0, 2.0, 3.0, 4.0]
        batches = [m for m in seen if isinstance(m, wire.CommandReports)]
        assert batches, seen
        finals = [(r.serial, r.state) for r in batches[-1].reports]
        # the slow one's final report first, then the quick ones in serial order
        assert finals == [(h.serial, CommandState.DONE) for h in [slow, *quick]]
        stats = await client.stats()
        assert not [k for k in stats.counters if k.startswith("commands.rejected")]
        # Confirmed like single reports: the outbox empties.
        await eventually(lambda: _true(not node.commands.core.outbox), scaled(10))
    finally:
        await node.stop()


async def test_a_node_sends_single_reports_to_a_controller_that_takes_no_batches(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "old1")
    try:
        await _wait_consumers(controller, ["old1"])
        node.commands.report_batch = 0  # what an older controller's join reply says
        seen = await _watch_out(controller, "old1")
        slow = await client.send("old1", "slow", seconds=0.5)
        quick = [await client.set("old1", "gain", str(i)) for i in range(3)]
        for handle in [slow, *quick]:
            assert (await handle.wait(scaled(10))).ok
        assert seen and all(isinstance(m, wire.CommandReport) for m in seen)
    finally:
        await node.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_batch_speaks_only_for_its_own_node_and_bad_batches_are_refused(
    controller: Controller, client: Client, config: Config
) -> None:
    victim = await start_node(config, "v1")
    forger_node = await start_node(config, "f1")
    forger = await bus.connect(
        config,
        "node-f1",
        creds=creds_for(config, "f1"),
        inbox_prefix=subjects.inbox_prefix("f1"),
    )
    try:
        await _wait_consumers(controller, ["v1", "f1"])
        hold = scaled(4)  # both still run while the forgeries arrive
        theirs = await client.send("v1", "slow", seconds=hold)
        mine = await client.send("f1", "slow", seconds=hold)
        book = controller.commands.book.commands
        before = book[theirs.serial].outcomes["v1"].state

        def rejected(key: str) -> int:
            return controller.commands.counters.get(key, 0)

        def batch(*reports: wire.CommandReport) -> bytes:
            return wire.encode(wire.CommandReports(reports=list(reports)))

        forged = wire.CommandReport(serial=theirs.serial, state=CommandState.DONE, result="x")
        # 1. A batch on f1's subject claiming v1's command: refused, report by report.
        await forger.publish(subjects.node_in("f1", "out"), batch(forged, forged))
        await eventually(lambda: _true(rejected("rejected.not-target") == 2), scaled(10))
        assert set(book[theirs.serial].outcomes) == {"v1"}
        assert book[theirs.serial].outcomes["v1"].state == before
        # 2. The same on v1's subject: the bus does not carry it (f1's credential).
        await forger.publish(subjects.node_in("v1", "out"), batch(forged))
        await forger.flush()
        # 3. More reports than a controller takes: refused whole, none applied, though
        # they are f1's own.
        own = wire.CommandReport(serial=mine.serial, state=CommandState.DONE, result="early")
        too_many = [own] * (wire.MAX_BATCHED_REPORTS + 1)
        await forger.publish(subjects.node_in("f1", "out"), batch(*too_many))
        # 4. Malformed: a report without a state, an unknown state, not a list.
        for data in (
            msgspec.msgpack.encode(
                {"type": "CommandReports", "reports": [{"serial": 1}], "proto": "1.0"}
            ),
            msgspec.msgpack.encode(
                {
                    "type": "CommandReports",
                    "reports": [{"type": "CommandReport", "serial": 1, "state": "won"}],
                    "proto": "1.0",
                }
            ),
            msgspec.msgpack.encode({"type": "CommandReports", "reports": 7, "proto": "1.0"}),
            # 5. Over the size limit for the subject.
            batch(
                wire.CommandReport(
                    serial=mine.serial,
                    state=CommandState.DONE,
                    result="y" * config.max_command_bytes,
                )
            ),
        ):
            await forger.publish(subjects.node_in("f1", "out"), data)
        await forger.flush()

        async def counted() -> bool:
            stats = await client.stats()
            c = stats.counters
            return c.get("rejected.oversized", 0) >= 2 and c.get("rejected.malformed", 0) >= 3

        await eventually(counted, scaled(10))
        assert book[mine.serial].outcomes["f1"].state != CommandState.DONE
        assert book[theirs.serial].outcomes["v1"].state == before
        assert rejected("rejected.not-target") == 2  # the one on v1's subject never came
        # The real outcomes still arrive.
        for handle in (theirs, mine):
            done = await handle.wait(scaled(10))
            assert done.ok and set(done.results.values()) == {hold}
    finally:
        await forger.close()
        for node in (victim, forger_node):
            await node.stop()


async def test_a_report_batch_is_refused_by_its_version(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "ver1")
    nc = await bus.connect(
        config,
        "node-ver1",
        creds=creds_for(config, "ver1"),
        inbox_prefix=subjects.inbox_prefix("ver1"),
    )
    try:
        await _wait_consumers(controller, ["ver1"])
        handle = await client.send("ver1", "slow", seconds=2)
        report = wire.CommandReport(serial=handle.serial, state=CommandState.FAILED, error="no")
        newer = wire.CommandReports(reports=[report], proto="2.0")
        await nc.publish(subjects.node_in("ver1", "out"), wire.encode(newer))
        await nc.flush()

        async def counted() -> bool:
            return any(k.startswith("rejected.version") for k in (await client.stats()).counters)

        await eventually(counted, scaled(10))
        assert (await handle.wait(scaled(10))).ok
    finally:
        await nc.close()
        await node.stop()
