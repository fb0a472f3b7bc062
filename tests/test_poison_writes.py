"""Issue #12, poison-proof writes, end to end: one bad value never stalls the controller.

Each repro of the issue on a real controller, nodes and nats-server, on SQLite and
PostgreSQL: a NUL in a task argument name, in a task's failure, in a node_edit label, in a
command's name, arguments or output. Then a store locked by another process (a transient
failure, for real): the write waits, is retried and goes through; past the bound the caller
is told, and nothing it asked for happens later.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest

from conftest import scaled
from corral import AsyncController, wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import UsageError
from corral.node import Node
from corral.tokens import Role
from tasks_fixtures import api, node, token_for  # noqa: F401 - fixtures
from test_api_commands import post, settled
from test_commands import _wait_consumers, start_node
from test_controller import _raw_request


@pytest.fixture
def config(config: Config, store_url: str) -> Config:
    """The controller's store on SQLite or on PostgreSQL (where a NUL is refused in text)."""
    return msgspec.structs.replace(config, store=store_url)


@pytest.fixture
async def h1(controller: Controller, config: Config) -> AsyncIterator[Node]:
    """Node ``h1`` serving the test handlers and shell commands, its consumer ready."""
    n = await start_node(config, "h1", allow_shell=True)
    try:
        await _wait_consumers(controller, ["h1"])
        yield n
    finally:
        await n.stop()


def _as_stored(controller: Controller, text: str) -> str:
    """What the store keeps of ``text``: PostgreSQL cannot hold a NUL, it is escaped."""
    assert controller.store is not None
    return text.replace("\x00", "\\x00") if controller.store.backend == "postgresql" else text


@pytest.mark.usefixtures("node")
async def test_a_nul_in_an_argument_name_is_refused_and_one_in_a_failure_is_stored(
    controller: Controller,
    api: AsyncController,  # noqa: F811 - fixture
) -> None:
    operate = await token_for(controller, Role.OPERATE)
    refused = await post(
        controller, operate, "queue_task", {"task_key": "echo", "args": {"k\u0000": 1}}
    )
    assert refused.status_code == 422, refused.text
    assert "argument name 'k\\x00'" in refused.json()["error"]
    # The chain, without the edge: a task whose failure text holds a NUL.
    ident = await api.queue_task("boom", {"message": "bad\x00byte"})
    failed = await api.wait(ident, scaled(20))
    assert failed.status == "failed" and "bad\x00byte" in failed.error
    assert controller.tasks is not None and controller.tasks.store is not None
    await controller.tasks.settled()  # a wait answers before the final commit; reads wait
    stored = await controller.tasks.store.get(ident)
    assert stored is not None and stored.status == "failed"
    assert _as_stored(controller, "bad\x00byte") in stored.error
    assert _as_stored(controller, "bad\x00byte") in stored.traceback
    # The writer is not stuck: the next task is queued, runs and is stored.
    again = await api.queue_task("add", {"a": 1, "b": 2})
    assert (await api.wait(again, scaled(20))).result == 3


@pytest.mark.usefixtures("node")
async def test_a_nul_in_a_node_edit_label_is_refused_and_later_edits_are_stored(
    controller: Controller,
    api: AsyncController,  # noqa: F811 - fixture
) -> None:
    operate = await token_for(controller, Role.OPERATE)
    label = await post(
        controller, operate, "node_edit", {"values": {"id": "w1", "labels": ["gpu\u0000"]}}
    )
    assert label.status_code == 422, label.text
    assert "label 'gpu\\x00'" in label.json()["error"]
    key = await post(
        controller, operate, "node_edit", {"values": {"id": "w1", "attributes": {"a\nb": 1}}}
    )
    assert key.status_code == 422 and "attribute name" in key.json()["error"]
    assert controller.registry.nodes["w1"].labels == ()
    view = await api.node_edit({"id": "w1", "labels": ["gpu"]})
    assert view.labels == ["gpu"]
    assert controller.store is not None
    async with asyncio.timeout(scaled(10)):
        while (record := await controller.store.get_node("w1")) is None or record.labels != (
            "gpu",
        ):
            await asyncio.sleep(0.05)


async def test_nul_in_a_command_is_refused_and_nul_in_its_output_is_stored(
    controller: Controller, config: Config, h1: Node
) -> None:
    operate = await token_for(controller, Role.OPERATE)
    for body, field in [
        ({"targets": ["h1"], "name": "who\u0000ami"}, "name 'who\\x00ami'"),
        ({"targets": ["h1"], "name": "whoami", "args": {"s\u0000": "x"}}, "argument name"),
        ({"targets": ["h\u00001"], "name": "whoami"}, "target"),
    ]:
        refused = await post(controller, operate, "send_command", body)
        assert refused.status_code == 422, refused.text
        assert field in refused.json()["error"]
    async with await Client.connect(config) as client:
        with pytest.raises(UsageError, match="name 'who\\\\x00ami'"):
            await client.send("h1", "who\x00ami")
        with pytest.raises(UsageError, match="argument name"):
            await client.command("h1", "command", "whoami", args={"s\x00": 1})
    # A node's output with a NUL (the outcome row): stored, escaped on PostgreSQL.
    sent = await post(
        controller,
        operate,
        "send_command",
        {"targets": ["h1"], "kind": "shell", "args": {"cmd": "printf 'a\\000b'"}},
    )
    assert sent.status_code == 200, sent.text
    await settled(config, sent.json())
    serial = sent.json()["serial"]
    assert controller.store is not None
    async with asyncio.timeout(scaled(10)):
        while True:
            found = await controller.store.get_command(serial)
            if found is not None and found[1][0].state == "done":
                break
            await asyncio.sleep(0.05)
    assert found[1][0].stdout == _as_stored(controller, "a\x00b")
    # Later commands are fine.
    later = await post(controller, operate, "send_command", {"targets": ["h1"], "name": "whoami"})
    assert later.status_code == 200
    outcome = await settled(config, later.json())
    assert outcome.outcomes["h1"].result == "h1"


async def test_a_join_with_a_control_character_is_refused_and_one_out_of_range_is_repaired(
    controller: Controller, config: Config
) -> None:
    bad = wire.encode(wire.Join(instance="i1", labels=("gpu\x00",)))
    reply = await _raw_request(config, "j1", "join", bad, wire.HEADERS)
    assert isinstance(reply, wire.ErrorReply) and reply.code == "usage"
    assert "label 'gpu\\x00'" in reply.error
    host = wire.encode(wire.Join(instance="i1", host="h\nx"))
    reply = await _raw_request(config, "j1", "join", host, wire.HEADERS)
    assert isinstance(reply, wire.ErrorReply) and "host" in reply.error
    assert "j1" not in controller.registry.nodes
    # A pid no integer column holds: SQLite raised OverflowError (ending the writer), and
    # PostgreSQL refused the row for ever. The record is stored without it.
    huge = wire.encode(wire.Join(instance="i2", pid=2**64 - 1, labels=("ok",)))
    reply = await _raw_request(config, "j2", "join", huge, wire.HEADERS)
    assert isinstance(reply, wire.JoinReply)
    assert controller.store is not None
    stored = await controller.store.get_node("j2")
    assert stored is not None and stored.labels == ("ok",) and stored.pid == 0
    reply = await _raw_request(
        config, "j3", "join", wire.encode(wire.Join(instance="i3")), wire.HEADERS
    )
    assert isinstance(reply, wire.JoinReply)
    assert await controller.store.get_node("j3") is not None


# --- transient failures ---------------------------------------------------------------------


@pytest.fixture
def locked(config: Config) -> Iterator[sqlite3.Connection]:
    """Another connection to the controller's SQLite file, ready to hold its write lock."""
    if not config.store_url.endswith(".db"):
        pytest.skip("a lock held by another process is a SQLite test")
    holder = sqlite3.connect(config.store_url, isolation_level=None)
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> logging.LogRecord:
    async with asyncio.timeout(scaled(30)):
        while True:
            for record in caplog.records:
                if text in record.getMessage():
                    return record
            await asyncio.sleep(0.05)


async def test_a_locked_store_is_retried_and_the_command_goes_through(
    controller: Controller,
    h1: Node,
    locked: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    operate = await token_for(controller, Role.OPERATE)
    caplog.set_level(logging.ERROR, "corral.controller")
    locked.execute("BEGIN IMMEDIATE")
    call = asyncio.create_task(
        post(controller, operate, "send_command", {"targets": ["h1"], "name": "whoami"})
    )
    record = await _logged(caplog, "store write failed")
    message = record.getMessage()
    assert "locked" in message and "1 commands" in message and "retry 1" in message
    assert not call.done()  # no answer before the command is on disk
    locked.execute("ROLLBACK")
    sent = await asyncio.wait_for(call, scaled(30))
    assert sent.status_code == 200, sent.text
    assert controller.store is not None
    assert await controller.store.get_command(sent.json()["serial"]) is not None


async def test_past_the_bound_the_caller_is_told_and_the_command_is_dropped(
    controller: Controller,
    h1: Node,
    locked: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    operate = await token_for(controller, Role.OPERATE)
    controller.backoff.bound = 0.0  # give up at the first failure
    caplog.set_level(logging.ERROR, "corral.controller")
    locked.execute("BEGIN IMMEDIATE")
    sent = await post(controller, operate, "send_command", {"targets": ["h1"], "name": "whoami"})
    assert sent.status_code == 503, sent.text
    assert "could not write to its store" in sent.json()["error"]
    locked.execute("ROLLBACK")
    later = await post(controller, operate, "send_command", {"targets": ["h1"], "name": "whoami"})
    assert later.status_code == 200, later.text
    assert controller.store is not None
    listed = [row.serial for row, _ in await controller.store.recent_commands()]
    assert listed == [later.json()["serial"]]


@pytest.mark.usefixtures("node")
async def test_past_the_bound_queue_task_is_told_and_its_instance_is_written_later(
    controller: Controller,
    locked: sqlite3.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert controller.tasks is not None and controller.tasks.store is not None
    operate = await token_for(controller, Role.OPERATE)
    controller.tasks.backoff.bound = 0.0
    caplog.set_level(logging.ERROR, "corral.controller.tasks")
    locked.execute("BEGIN IMMEDIATE")
    args = {"a": 1, "b": 2}
    queued = await post(controller, operate, "queue_task", {"task_key": "add", "args": args})
    assert queued.status_code == 503, queued.text
    assert "queued in memory" in queued.json()["error"]
    message = (await _logged(caplog, "task store write failed")).getMessage()
    assert "1 task instance(s), 1 caller(s)" in message and "locked" in message
    locked.execute("ROLLBACK")
    # Kept and retried: once the lock is gone the instance is on disk.
    async with asyncio.timeout(scaled(30)):
        while not await controller.tasks.store.get_many([1]):
            await asyncio.sleep(0.05)
