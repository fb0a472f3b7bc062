"""Idempotent submission: a key answers its first answer, across retries and restarts.

Real controller, real store (SQLite file and PostgreSQL), real HTTP connections; a TCP proxy
between client and controller drops a reply to play the connection that breaks mid-call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest

from conftest import scaled
from corral import AsyncController
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller, idempotency
from corral.errors import Disconnected, IdempotencyKeyReused, Refused
from corral.node import Node
from corral.records import IdempotencyRow
from corral.store import Store, open_store
from corral.store.idempotency import find_key
from corral.tokens import Role, create_token
from tasks_fixtures import start_task_node
from test_commands import _wait_consumers, start_node


@pytest.fixture
def config(config: Config, store_url: str) -> Config:
    """On SQLite, and on PostgreSQL when CORRAL_TEST_POSTGRES_DSN is set."""
    return msgspec.structs.replace(config, store=store_url)


@pytest.fixture
async def w1(controller: Controller, config: Config) -> AsyncIterator[Node]:
    node = await start_task_node(config, "w1", slots=1)
    try:
        await offered(controller, "w1")
        yield node
    finally:
        await node.stop()


async def offered(controller: Controller, name: str) -> None:
    assert controller.tasks is not None
    async with asyncio.timeout(scaled(15)):
        while name not in controller.tasks.core.nodes:
            await asyncio.sleep(0.02)


async def instances(store: Store, key: str) -> int:
    """How many instances of task ``key`` the store holds."""
    return (await store.tasks.page(key=key)).total


async def token(controller: Controller) -> str:
    assert controller.store is not None
    return (await create_token(controller.store, Role.OPERATE, "submitter"))[1]


async def post(url: str, text: str, function: str, body: object, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {text}"}
    if key is not None:
        headers["idempotency-key"] = key
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await http.post(f"/{function}", json=body, headers=headers)


async def test_the_same_key_twice_queues_once_and_answers_the_same(
    controller: Controller, w1: Node
) -> None:
    assert controller.api is not None and controller.store is not None
    text, url = await token(controller), controller.api.url
    first = await post(url, text, "queue_task", {"task_key": "echo", "args": {"value": 1}}, "k1")
    again = await post(url, text, "queue_task", {"task_key": "echo", "args": {"value": 1}}, "k1")
    assert first.status_code == again.status_code == 200, first.text
    assert first.json() == again.json()
    assert await instances(controller.store, "echo") == 1
    # queue_tasks too: the ids of the first call, nothing queued the second time.
    body = {"task_key": "noop", "args": [{}, {}, {}]}
    many = [(await post(url, text, "queue_tasks", body, "k2")).json() for _ in range(2)]
    assert many[0] == many[1] and len(many[0]["instance_ids"]) == 3
    assert await instances(controller.store, "noop") == 3
    # run_task: a repeat waits for the instance the first call queued.
    body = {"task_key": "add", "args": {"a": 2, "b": 3}}
    ran = [(await post(url, text, "run_task", body, "k-run")).json() for _ in range(2)]
    assert ran[0]["id"] == ran[1]["id"] and ran[0]["result"] == 5
    assert await instances(controller.store, "add") == 1
    # Without a key every call is its own submission.
    for _ in range(2):
        assert (await post(url, text, "queue_task", {"task_key": "noop"}, None)).status_code == 200
    assert await instances(controller.store, "noop") == 5


async def test_concurrent_calls_with_one_key_queue_once(controller: Controller, w1: Node) -> None:
    assert controller.api is not None and controller.store is not None
    text, url = await token(controller), controller.api.url
    replies = await asyncio.gather(
        *(post(url, text, "queue_task", {"task_key": "noop"}, "same") for _ in range(8))
    )
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["instance_id"] for r in replies}) == 1
    assert await instances(controller.store, "noop") == 1


async def test_a_key_sent_with_another_request_is_422(controller: Controller, w1: Node) -> None:
    assert controller.api is not None and controller.store is not None
    text, url = await token(controller), controller.api.url
    ok = await post(url, text, "queue_task", {"task_key": "echo", "args": {"value": 1}}, "k3")
    assert ok.status_code == 200
    other = await post(url, text, "queue_task", {"task_key": "echo", "args": {"value": 2}}, "k3")
    assert other.status_code == 422, other.text
    assert other.json()["code"] == -3 and "another request" in other.json()["error"]
    elsewhere = await post(url, text, "queue_tasks", {"task_key": "echo", "args": [{}]}, "k3")
    assert elsewhere.status_code == 422 and "queue_task" in elsewhere.json()["error"]
    bad = await post(url, text, "queue_task", {"task_key": "echo"}, "x" * 201)
    assert bad.status_code == 400 and "1 to 200 characters" in bad.json()["error"]
    assert await instances(controller.store, "echo") == 1
    async with httpx.AsyncClient(base_url=url) as raw:  # the header is in the schema
        paths = (await raw.get("/openapi.json")).json()["paths"]
    assert [p["name"] for p in paths["/queue_task"]["post"]["parameters"]] == ["Idempotency-Key"]
    assert "parameters" not in paths["/cancel_task"]["post"]
    # The Python client names the error.
    async with AsyncController(url, text, timeout=scaled(20)) as api:
        with pytest.raises(IdempotencyKeyReused, match="another request"):
            await api.queue_task("echo", value=3, idempotency_key="k3")


@pytest.mark.parametrize("tracked", [1_000, 0], ids=["keys-tracked", "over-the-tracking-cap"])
async def test_the_first_answer_survives_a_controller_restart(
    config: Config, broker: EmbeddedBroker, tracked: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restarted controller learns the stored keys (or, past its tracking cap, looks
    every key up): either way the key is answered from the store, never queued again."""
    monkeypatch.setattr(idempotency, "_TRACKED", tracked)
    first = ControllerService(config)
    await first.start()
    node = await start_task_node(config, "w1", slots=1)
    try:
        await offered(first, "w1")
        text = await token(first)
        assert first.api is not None
        body = {"task_key": "echo", "args": {"value": "x"}}
        answer = await post(first.api.url, text, "queue_task", body, "restart-key")
        assert answer.status_code == 200, answer.text
    finally:
        await first.stop()
    second = ControllerService(config)
    await second.start()
    try:
        assert second.api is not None and second.store is not None
        assert ("untracked" in repr(second.submissions)) == (tracked == 0)
        # No node needs to offer the task again: the answer comes from the store.
        again = await post(second.api.url, text, "queue_task", body, "restart-key")
        assert again.status_code == 200 and again.json() == answer.json()
        assert await instances(second.store, "echo") == 1
        changed = {"task_key": "echo", "args": {"value": "y"}}
        refused = await post(second.api.url, text, "queue_task", changed, "restart-key")
        assert refused.status_code == 422
    finally:
        await node.stop()
        await second.stop()


class DroppingProxy:
    """A TCP proxy that forwards HTTP requests and loses the replies to chosen ones.

    Requests are numbered from 1 in the order they arrive; the reply to a number in
    ``drop`` is not forwarded: the client's connection is reset instead, after the
    controller has acted on the request.
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.requests = 0
        self.drop: set[int] = set()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        current = 0

        async def forward_requests() -> None:
            nonlocal current
            while data := await reader.read(65536):
                if data.startswith(b"POST /"):
                    self.requests += 1
                    current = self.requests
                up_writer.write(data)
                await up_writer.drain()

        async def forward_replies() -> None:
            while data := await up_reader.read(65536):
                if current in self.drop:
                    writer.transport.abort()  # the reply is lost with the connection
                    return
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(Exception):
            await asyncio.wait(
                [asyncio.create_task(forward_requests()), asyncio.create_task(forward_replies())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        writer.transport.abort()
        up_writer.close()


@pytest.fixture
async def proxy(controller: Controller) -> AsyncIterator[DroppingProxy]:
    assert controller.api is not None
    url = httpx.URL(controller.api.url)
    p = DroppingProxy(url.host, url.port or 80)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_a_client_retry_across_a_dropped_connection_queues_once(
    controller: Controller, w1: Node, proxy: DroppingProxy
) -> None:
    assert controller.store is not None
    proxy.drop = {1}
    async with AsyncController(proxy.url, await token(controller), timeout=scaled(20)) as api:
        ident = await api.queue_task("echo", value="once")
        proxy.drop.add(3)
        ids = await api.queue_tasks("noop", [{}, {}])
    assert proxy.requests == 4  # each submission was sent twice, with one key
    assert await instances(controller.store, "echo") == 1
    assert await instances(controller.store, "noop") == 2
    found = await controller.store.tasks.get(ident)
    assert found is not None and found.key == "echo"
    assert len(ids) == 2 and controller.submissions.repeats == 2


async def test_a_call_without_a_key_is_never_sent_twice(
    controller: Controller, w1: Node, proxy: DroppingProxy
) -> None:
    assert controller.store is not None
    async with AsyncController(proxy.url, await token(controller), timeout=scaled(20)) as api:
        await api.node_status()  # the connection is now kept alive
        proxy.drop = {2}
        with pytest.raises(Disconnected):
            await api.node_edit({"id": "w1", "labels": ["edited"]})
    assert proxy.requests == 2  # not re-sent on a new connection
    async with asyncio.timeout(scaled(10)):  # the audit entry rides the next group commit
        while not (
            edits := [e for e in await controller.store.audit_log() if e.action == "node_edit"]
        ):
            await asyncio.sleep(0.05)
    assert len(edits) == 1


async def test_a_command_sent_twice_on_the_bus_with_one_key_is_recorded_once(
    controller: Controller, config: Config
) -> None:
    node = await start_node(config, "b1")
    try:
        await _wait_consumers(controller, ["b1"])
        async with await Client.connect(config) as client:
            first = await client.command("b1", "command", "whoami", idempotency_key="bus-key")
            again = await client.command("b1", "command", "whoami", idempotency_key="bus-key")
            assert first.serial == again.serial == 1
            with pytest.raises(Refused, match="another request"):
                await client.command(
                    "b1", "command", "whoami", args={"suffix": "!"}, idempotency_key="bus-key"
                )
            assert (await first.wait(scaled(10))).ok
            for handle in (first, again):
                await handle.close()
    finally:
        await node.stop()
    assert controller.commands.book.last_serial == 1
    assert controller.store is not None
    assert len([e for e in await controller.store.audit_log() if e.action == "command"]) == 1


async def test_expired_keys_are_forgotten_and_pruned(store_url: str) -> None:
    async with await open_store(store_url) as store:

        def row(key: str, created: float) -> IdempotencyRow:
            return IdempotencyRow("token:t", key, "send_command", "h", b"{}", created)

        await store.commit(idempotency=[row("old", 100.0), row("new", 200.0)])
        # A lookup ignores a key older than the window, pruned or not.
        assert await find_key(store, "token:t", "old", since=150.0) is None
        assert await find_key(store, "token:t", "new", since=150.0) is not None
        assert await find_key(store, "token:other", "new", since=0.0) is None  # per caller
        # An expired key sent again before it was pruned: the new answer replaces it.
        await store.commit(idempotency=[row("old", 300.0)])
        assert (await find_key(store, "token:t", "old", since=250.0)) == row("old", 300.0)
        await store.commit(prune_keys_before=250.0)
        assert await find_key(store, "token:t", "new", since=0.0) is None
        assert await find_key(store, "token:t", "old", since=0.0) is not None


async def test_the_bus_client_sends_again_with_its_key_until_a_controller_answers(
    config: Config, broker: EmbeddedBroker
) -> None:
    first = ControllerService(config)
    await first.start()
    node = await start_node(config, "b2")
    try:
        await _wait_consumers(first, ["b2"])
    finally:
        await first.stop()  # b2 stays in the store: the next controller knows it
    async with await Client.connect(config) as client:
        client.timeout = scaled(2)
        sending = asyncio.create_task(client.command("b2", "command", "whoami"))
        # No controller answers now: the client keeps trying with the same key until one does.
        second = ControllerService(config)
        await second.start()
        try:
            handle = await asyncio.wait_for(sending, scaled(20))
            assert handle.serial == second.commands.book.last_serial
            await handle.close()
        finally:
            await second.stop()
            await node.stop()
    async with await open_store(config.store_url) as store:
        commands = [e for e in await store.audit_log() if e.action == "command"]
    assert len(commands) == 1


async def test_a_key_past_the_window_is_pruned_and_queues_anew(
    config: Config, broker: EmbeddedBroker
) -> None:
    config = msgspec.structs.replace(config, idempotency_window=scaled(1.0))
    controller = ControllerService(config)
    await controller.start()
    node = await start_task_node(config, "w1", slots=1)
    try:
        await offered(controller, "w1")
        assert controller.api is not None and controller.store is not None
        text, url = await token(controller), controller.api.url
        body = {"task_key": "noop"}
        first = (await post(url, text, "queue_task", body, "short-lived")).json()
        caller = "token:" + text.split("_")[1]  # crl_<id>_<secret>
        # The controller's group commit prunes it once the window has passed.
        async with asyncio.timeout(scaled(10)):
            while await find_key(controller.store, caller, "short-lived", since=0.0):
                await asyncio.sleep(0.05)
        second = (await post(url, text, "queue_task", body, "short-lived")).json()
        assert second["instance_id"] != first["instance_id"]
        assert await instances(controller.store, "noop") == 2
    finally:
        await node.stop()
        await controller.stop()
