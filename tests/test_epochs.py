"""Nodes follow the highest leader epoch they have seen and ignore a deposed leader (#13)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conftest import scaled
from corral import bus, subjects, wire
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.controller import Controller
from corral.node import Node
from corral.node.epochs import EpochFilter
from corral.security import Authority


def test_the_filter_keeps_the_highest_epoch_and_logs_each_lower_one_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = EpochFilter("n1")
    assert seen.accept(0, "announcement") and seen.accept(3, "announcement")
    with caplog.at_level(logging.WARNING, "corral.node"):
        assert not seen.accept(2, "task message")
        assert not seen.accept(2, "task message")
    assert seen.accept(3, "rejoin") and seen.accept(4, "rejoin") and seen.highest == 4
    assert seen.ignored == 2
    assert [r.getMessage() for r in caplog.records] == [
        "ignored a task message of epoch 2, below epoch 3: a deposed controller still talks"
    ]


async def test_a_node_ignores_a_lower_epoch_and_obeys_the_leaders(
    controller: Controller, config: Config
) -> None:
    creds = config.data_path / "e1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("e1"))
    node = Node(config, "e1", creds=creds)
    await node.start()
    try:
        await asyncio.wait_for(node.wait_joined(controller.id), scaled(10))
        assert controller.leadership is not None
        epoch = controller.leadership.epoch
        assert epoch >= 1 and node.epochs.highest == epoch
        nc = controller.nc
        assert isinstance(nc, bus.StampedNATS)
        joins = node.joins
        subject = subjects.node_out("e1", "ctl")
        # A deposed leader (its connection stamps an older epoch) asks the node to re-join.
        nc.stamp = {wire.EPOCH_HEADER: str(epoch - 1)}
        stale = wire.Rejoin(reason="from a deposed leader", epoch=epoch - 1)
        await nc.publish(subject, wire.encode(stale), headers=wire.HEADERS)
        await nc.flush()
        async with asyncio.timeout(scaled(10)):
            while node.epochs.ignored < 1:
                await asyncio.sleep(0.01)
        assert node.joins == joins and node.joined.is_set()
        # The leader's own (its epoch) is obeyed.
        nc.stamp = {wire.EPOCH_HEADER: str(epoch)}
        fresh = wire.Rejoin(reason="from the leader", epoch=epoch)
        await nc.publish(subject, wire.encode(fresh), headers=wire.HEADERS)
        async with asyncio.timeout(scaled(10)):
            while node.joins == joins:
                await asyncio.sleep(0.01)
        assert node.epochs.highest == epoch and node.epochs.ignored == 1
    finally:
        await node.stop()


async def test_a_node_ignores_live_commands_of_a_deposed_leader(
    controller: Controller, config: Config
) -> None:
    creds = config.data_path / "e2.creds"
    creds.write_text(Authority.load(config.data_path).enroll("e2"))
    node = Node(config, "e2", creds=creds)
    await node.start()
    try:
        await asyncio.wait_for(node.wait_joined(controller.id), scaled(10))
        assert controller.leadership is not None
        epoch = controller.leadership.epoch
        nc = controller.nc
        assert isinstance(nc, bus.StampedNATS)
        applied = node.commands.core.last
        serial = controller.commands.book.last_serial + 1
        body = wire.encode(wire.NodeCommand(serial=serial, kind="command", name="noop"))
        forged = wire.LiveCommand(serial=serial, prev=serial - 1, epoch=epoch - 1, body=body)
        nc.stamp = {wire.EPOCH_HEADER: str(epoch - 1)}
        try:
            await nc.publish(subjects.LIVE_COMMANDS, wire.encode(forged), headers=wire.HEADERS)
            await nc.publish(
                subjects.live_commands_for("e2"), wire.encode(forged), headers=wire.HEADERS
            )
            # As a leader sends them since #14: no headers, the epoch in the payload.
            await nc.publish(subjects.LIVE_COMMANDS, wire.encode(forged))
            ack = wire.encode(wire.ReportAck(serials=(serial,), epoch=epoch - 1))
            await nc.publish(subjects.LIVE_COMMANDS, ack)
            await nc.publish(subjects.report_acks("e2"), ack)
            await nc.flush()
        finally:
            nc.stamp = {wire.EPOCH_HEADER: str(epoch)}
        async with asyncio.timeout(scaled(10)):
            while node.epochs.ignored < 5:
                await asyncio.sleep(0.01)
        assert node.commands.core.last == applied and node.epochs.highest == epoch
    finally:
        await node.stop()


async def test_after_a_restore_the_leader_steps_up_above_the_epoch_nodes_have_seen(
    broker: EmbeddedBroker, config: Config
) -> None:
    """A store restored from a backup holds an older epoch than the nodes have seen: they
    ignore its leader, which gives the lease up at their epoch; the next leads above it."""
    first = ControllerService(config)
    await first.start()
    creds = config.data_path / "r1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("r1"))
    node = Node(config, "r1", creds=creds)
    node.epochs.highest = 7  # what it saw before the store was restored
    await node.start()
    try:
        await asyncio.wait_for(first.deposed.wait(), scaled(10))
        await first.stop()
        second = ControllerService(config)
        await second.start()
        try:
            assert second.leadership is not None and second.leadership.epoch == 8
            await asyncio.wait_for(node.wait_joined(second.id), scaled(10))
            assert node.epochs.highest == 8
        finally:
            await second.stop()
    finally:
        await node.stop()
