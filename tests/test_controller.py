"""The controller and nodes over a real nats-server, in one process (fast paths).

The kill -9 scenarios with real processes are in test_processes.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest

from conftest import eventually, scaled
from corral import bus, subjects, wire
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import (
    DuplicateName,
    MalformedMessage,
    OversizedMessage,
    Refused,
    UsageError,
    VersionMismatch,
)
from corral.node import Node
from corral.security import Authority
from corral.store import open_store


@pytest.fixture
def config(config: Config, store_url: str) -> Config:
    """Every test here runs on SQLite, and on PostgreSQL when CORRAL_TEST_POSTGRES_DSN is set."""
    return msgspec.structs.replace(config, store=store_url)


@pytest.fixture
async def client(controller: Controller, config: Config) -> AsyncIterator[Client]:
    c = await Client.connect(config)
    try:
        yield c
    finally:
        await c.close()


def creds_for(config: Config, name: str) -> str:
    """Enroll ``name`` with the test authority and write its credential file."""
    path = config.data_path / f"{name}.creds"
    path.write_text(Authority.load(config.data_path).enroll(name))
    return str(path)


async def start_node(config: Config, name: str, **kw: object) -> Node:
    from pathlib import Path

    node = Node(config, name, creds=Path(creds_for(config, name)), **kw)  # type: ignore[arg-type]
    await node.start(wait_for_bus=scaled(5))
    return node


def status_of(name: str, status: str) -> Callable[[list[wire.NodeView]], bool]:
    return lambda nodes: any(n.name == name and n.status == status for n in nodes)


async def test_node_joins_with_everything_it_says_about_itself(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(
        config,
        "web1",
        labels=("gpu", "rack1"),
        interfaces=("eth1",),
        attributes={"sink": True, "room": "B"},
        slots=4,
    )
    try:
        await asyncio.wait_for(node.joined.wait(), scaled(5))
        (view,) = await client.nodes()
        assert view.name == "web1" and view.status == "UP"
        assert view.labels == ("gpu", "rack1") and view.interfaces == ("eth1",)
        assert view.attributes == {"sink": True, "room": "B"}
        assert view.slots == 4 and view.pid > 0 and view.host and view.version
        # The join was persisted before it was acknowledged.
        store = await open_store(config.store_url)
        try:
            row = await store.get_node("web1")
            assert row is not None and row.status == "UP" and row.labels == ("gpu", "rack1")
        finally:
            await store.close()
    finally:
        await node.stop()


async def test_silent_node_goes_down_then_up_and_every_transition_is_recorded(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "n1")
    await asyncio.wait_for(node.joined.wait(), scaled(5))
    # Cut the node off the bus without a goodbye: its heartbeats stop.
    hb_task = node._tasks[1]
    hb_task.cancel()
    await client.wait_for(status_of("n1", "DOWN"), scaled(config.down_after + 2))
    node._tasks[1] = asyncio.create_task(node._heartbeat_loop())
    await client.wait_for(status_of("n1", "UP"), scaled(5))
    await node.stop()
    await client.wait_for(status_of("n1", "LEFT"), scaled(5))
    await controller.commits.flush()
    assert controller.store is not None
    history = [(t.old, t.new) for t in reversed(await controller.store.transitions("n1"))]
    assert history == [("", "UP"), ("UP", "DOWN"), ("DOWN", "UP"), ("UP", "LEFT")]


async def test_second_live_node_with_the_same_name_is_refused_naming_the_holder(
    controller: Controller, config: Config
) -> None:
    first = await start_node(config, "dup")
    await asyncio.wait_for(first.joined.wait(), scaled(5))
    second = await start_node(config, "dup")
    try:
        await asyncio.wait_for(second._done.wait(), scaled(5))
        assert isinstance(second._failure, DuplicateName)
        assert f"pid {first._join_message().pid}" in str(second._failure)
        assert "choose another --name" in str(second._failure)
        assert first.joined.is_set()
    finally:
        await second.stop()
        await first.stop()


async def test_node_started_before_the_controller_joins_when_it_appears(
    broker: EmbeddedBroker, config: Config
) -> None:
    node = await start_node(config, "early")
    try:
        assert not node.joined.is_set()
        controller = ControllerService(config)
        await controller.start()
        try:
            await asyncio.wait_for(node.joined.wait(), scaled(5))
            assert controller.registry.nodes["early"].status == "UP"
        finally:
            await controller.stop()
    finally:
        await node.stop()


async def test_nodes_reattach_after_a_controller_restart(
    broker: EmbeddedBroker, config: Config
) -> None:
    first = ControllerService(config)
    await first.start()
    node = await start_node(config, "stay")
    await asyncio.wait_for(node.joined.wait(), scaled(5))
    await first.stop()
    second = ControllerService(config)
    await second.start()
    try:
        assert second.registry.nodes["stay"].status == "UP"  # loaded from the store
        async with await Client.connect(config) as c:
            # The node re-joins on the new controller's announcement, without a restart.
            await asyncio.wait_for(node.wait_joined(second.id), scaled(5))
            nodes = await c.nodes()
            assert [(n.name, n.status) for n in nodes] == [("stay", "UP")]
    finally:
        await node.stop()
        await second.stop()


async def _raw_request(
    config: Config, name: str, verb: str, data: bytes, headers: dict[str, str] | None
) -> wire.ErrorReply | wire.JoinReply:
    from pathlib import Path

    nc = await bus.connect(
        config,
        f"node-{name}",
        creds=Path(creds_for(config, name)),
        inbox_prefix=subjects.inbox_prefix(name),
    )
    try:
        reply = await nc.request(
            subjects.node_in(name, verb), data, timeout=scaled(5), headers=headers
        )
        return msgspec.msgpack.decode(reply.data, type=wire.ErrorReply | wire.JoinReply)
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("data", "headers", "code", "error"),
    [
        (b"\xc1garbage", wire.HEADERS, "malformed", MalformedMessage),
        (wire.encode(wire.Heartbeat(instance="x")), wire.HEADERS, "malformed", MalformedMessage),
        (wire.encode(wire.Join(instance="x")), {"Corral-Proto": "9.0"}, "version", VersionMismatch),
        (wire.encode(wire.Join(instance="x")), None, "version", VersionMismatch),
        (b"\x00" * (64 * 1024 + 1), wire.HEADERS, "oversized", OversizedMessage),
    ],
    ids=["garbage", "wrong-type", "major-version", "no-header", "oversized"],
)
async def test_bad_join_messages_get_a_clear_error_reply_and_a_counter(
    controller: Controller,
    config: Config,
    data: bytes,
    headers: dict[str, str] | None,
    code: str,
    error: type[Exception],
) -> None:
    reply = await _raw_request(config, "bad", "join", data, headers)
    assert isinstance(reply, wire.ErrorReply)
    assert reply.code == code and reply.error
    with pytest.raises(error):
        wire.raise_for_error(reply)
    assert controller.counters[f"rejected.{code}"] == 1
    assert "bad" not in controller.registry.nodes
    # The controller still serves a good join afterwards.
    good = await _raw_request(
        config, "bad", "join", wire.encode(wire.Join(instance="i")), wire.HEADERS
    )
    assert isinstance(good, wire.JoinReply)


async def test_stats_count_handled_and_rejected_messages(
    controller: Controller, client: Client, config: Config
) -> None:
    await _raw_request(config, "s1", "join", b"\xc1", wire.HEADERS)
    node = await start_node(config, "s2")
    await asyncio.wait_for(node.joined.wait(), scaled(5))
    await node.stop()
    stats = await client.stats()
    assert stats.controller == controller.id
    assert stats.counters["join"] >= 1 and stats.counters["rejected.malformed"] == 1


async def test_registry_survives_the_controller_on_its_store(
    broker: EmbeddedBroker, config: Config
) -> None:
    controller = ControllerService(config)
    await controller.start()
    node = await start_node(config, "kept", labels=("a",))
    try:
        await asyncio.wait_for(node.wait_joined(), scaled(5))
    finally:
        await node.stop()
        await controller.stop()
    store = await open_store(config.store_url)
    try:
        row = await store.get_node("kept")
        assert row is not None and row.status == "LEFT" and row.labels == ("a",)
        assert [t.new for t in await store.transitions("kept")] == ["LEFT", "UP"]
    finally:
        await store.close()


async def test_a_second_controller_is_refused_on_sqlite_and_a_standby_on_postgresql(
    controller: Controller, config: Config
) -> None:
    """SQLite: the OS lock beside the file refuses a second controller (several controllers
    need PostgreSQL; tests/test_leadership.py)."""
    second = ControllerService(config)
    if controller.store is not None and controller.store.backend == "postgresql":
        await second.start()  # PostgreSQL: a standby (the lease, not a lock, decides)
        try:
            assert second.leadership is not None and not second.leadership.leading
            assert second.leadership.leader_id == controller.id
        finally:
            await second.stop()
        return
    with pytest.raises(Refused, match=f"another controller \\(pid {os.getpid()}\\)"):
        await second.start()


async def test_a_controller_without_an_app_factory_serves_the_bus_and_no_http(
    broker: EmbeddedBroker, config: Config
) -> None:
    """The controller knows nothing of HTTP: only corral.app's factory adds the API."""
    controller = Controller(config)  # api_port is 0 (any port), but no HTTP factory
    with pytest.raises(UsageError, match="has not started"):
        controller.parts()
    await controller.start()
    try:
        assert controller.api is None
        parts = controller.parts()
        assert parts.registry is controller.registry and parts.store is controller.store
        async with await Client.connect(config) as client:
            stats = await client.stats()
        assert stats.controller == controller.id
    finally:
        await controller.stop()


async def test_the_shipped_controller_serves_the_api_and_the_dashboard(
    controller: ControllerService,
) -> None:
    import httpx

    assert controller.api is not None
    async with httpx.AsyncClient(base_url=controller.api.url, timeout=scaled(20)) as http:
        api = await http.post("/node_list", json={})
        page = await http.get("/ui/login")
    assert api.status_code == 401  # the API is there, behind its token check
    assert page.status_code == 200 and "password" in page.text.lower()


async def test_the_latest_reports_reach_a_restarted_controller_again(
    broker: EmbeddedBroker, config: Config
) -> None:
    """SEER REPORT across a restart (or a takeover): the new controller has each node's latest
    value of every topic once the node joined it, before the node reports again."""
    first = ControllerService(config)
    await first.start()
    node = await start_node(config, "sensor")
    try:
        await asyncio.wait_for(node.joined.wait(), scaled(5))
        await node.report("temperature", 20.5)
        await node.report("temperature", 21.0)  # only the latest is sent again
        await node.report("door", "open")

        def held(ctl: ControllerService) -> dict[str, object]:
            return {t: e.value for (n, t), e in ctl.reports.latest.items() if n == "sensor"}

        def holds(ctl: ControllerService) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return held(ctl) == {"temperature": 21.0, "door": "open"}

            return check

        await eventually(holds(first), scaled(5))
        sent_at = first.reports.latest[("sensor", "temperature")].at
        await first.stop()
        second = ControllerService(config)
        await second.start()
        try:
            # Reports are not stored: what the new controller has, the node sent it again
            # when it joined (without that, the test fails here).
            await asyncio.wait_for(node.wait_joined(second.id), scaled(5))
            await eventually(holds(second), scaled(5))
            # Sent again with the time it was taken, not the time of the re-join.
            assert second.reports.latest[("sensor", "temperature")].at == sent_at
        finally:
            await second.stop()
    finally:
        await node.stop()
