"""One API, two transports: the same functions through ``corral.Client`` over the bus
(``nats://``, a credential) and over HTTP (``http://``, a token), with the same results, the
same exceptions, the same role gate; on the bus the audit names the credential, never the
payload; submissions keyed; oversized requests refused with an error that says what to do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from conftest import scaled
from corral import Client, sync
from corral.api_client import AsyncController
from corral.config import Config
from corral.controller import Controller
from corral.errors import (
    Disconnected,
    Forbidden,
    IdempotencyKeyReused,
    InvalidArguments,
    NotFound,
    OversizedMessage,
    UsageError,
)
from corral.tokens import Role
from tasks_fixtures import node, token_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("node")


def operator_creds(config: Config) -> Path:
    return config.data_path / "auth" / "operator.creds"


@pytest.fixture(params=["nats", "http"])
async def client(
    request: pytest.FixtureRequest, controller: Controller, config: Config
) -> AsyncIterator[Client]:
    """An operate-role client: the operator credential on the bus, an operate token on HTTP."""
    if request.param == "nats":
        made = Client(
            config.bus_url, creds=operator_creds(config), config=config, timeout=scaled(20)
        )
    else:
        assert controller.api is not None
        made = AsyncController(
            controller.api.url, await token_for(controller, Role.OPERATE), timeout=scaled(20)
        )
    async with made:
        yield made


async def test_tasks_queue_run_wait_cancel(client: Client, tmp_path: Path) -> None:
    first = await client.queue_task("echo", value="a")
    assert (await client.wait(first, scaled(20))).result["value"] == "a"
    assert await client.run("add", a=2, b=3, timeout=scaled(20)) == 5
    ids = await client.queue_tasks("add", [{"a": i, "b": 1} for i in range(5)])
    assert [v.result for v in await client.wait_many(ids, scaled(20))] == [1, 2, 3, 4, 5]
    started = tmp_path / "started"
    blocked = await client.queue_task(
        "wait_for_file", path=str(tmp_path / "never"), started=str(started)
    )
    cancelled = await client.cancel_task(blocked, force=True)
    assert cancelled.id == blocked
    assert (await client.wait(blocked, scaled(20))).status == "cancelled"
    history = await client.task_history("add")
    assert history.total == 6


async def test_nodes_and_commands(client: Client) -> None:
    page = await client.node_list()
    assert "w1" in [n.name for n in page.items]
    accepted = await client.send_command(["w1"], kind="get")
    assert accepted.nodes == ["w1"]
    detail = await client.command_detail(accepted.serial)
    assert detail.serial == accepted.serial and detail.nodes == ["w1"]
    assert [c.serial for c in await client.list_commands(limit=1)] == [accepted.serial]


async def test_the_same_errors_on_both(client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        await client.task_history_detail(987654)
    assert (missing.value.code, missing.value.status) == (-3, 404)
    # operate role (the operator credential, an operate token): no EXECUTE
    with pytest.raises(Forbidden, match="needs 'execute'") as refused:
        await client.execute_command(["w1"], b"print(1)")
    assert (refused.value.code, refused.value.status) == (-1, 403)
    with pytest.raises(InvalidArguments, match="invalid arguments") as invalid:
        await client.call("task_history", key="echo", page=0)
    assert invalid.value.status == 422 and type(invalid.value) is InvalidArguments


async def test_keyed_submissions_answer_the_first_instance(client: Client) -> None:
    one = await client.queue_task("echo", value=1, idempotency_key="k-1")
    again = await client.queue_task("echo", value=1, idempotency_key="k-1")
    assert one == again
    with pytest.raises(IdempotencyKeyReused):
        await client.queue_task("echo", value=2, idempotency_key="k-1")
    assert (await client.task_history("echo")).total == 1


async def test_an_oversized_request_is_refused_with_the_fix(
    client: Client, controller: Controller
) -> None:
    size = controller.config.request_limit + 1
    with pytest.raises(OversizedMessage, match="send less") as caught:
        await client.queue_task("echo", value="z" * size)
    assert caught.value.status == 413
    assert (await client.task_history("echo")).total == 0


async def test_a_keyed_call_is_sent_again_until_a_controller_answers(
    controller: Controller, config: Config
) -> None:
    assert controller.api_bus is not None
    async with Client(
        config.bus_url, creds=operator_creds(config), config=config, timeout=scaled(20)
    ) as c:
        await controller.api_bus.stop()  # nobody answers the API on the bus now
        with pytest.raises(Disconnected, match="no controller answers"):
            await c.node_edit({"id": "w1", "labels": ["x"]})  # no key: never sent twice
        call = asyncio.create_task(c.queue_task("echo", value="late", idempotency_key="late"))
        done, _ = await asyncio.wait({call}, timeout=scaled(0.5))
        assert not done  # refused, and sent again with its key while nobody answers
        await controller.api_bus.start()
        ident = await call
        assert await c.queue_task("echo", value="late", idempotency_key="late") == ident
        assert (await c.task_history("echo")).total == 1
        assert (await c.node_detail("w1")).labels == []


# --- the bus only --------------------------------------------------------------------------


async def test_the_bus_audits_the_credential_never_the_payload(
    controller: Controller, config: Config
) -> None:
    assert controller.store is not None
    async with Client(config.bus_url, creds=operator_creds(config), config=config) as operator:
        queued = await operator.queue_task("echo", value="x")
        # A payload claiming an actor is refused whole (requests take no such field) ...
        subject = "corral.ctl.queue_task.operator"
        forged = msgspec.msgpack.encode({"task_key": "echo", "actor": "root"})
        reply = await operator.nc.request(subject, forged, timeout=scaled(5))
        assert reply.headers is not None and reply.headers["Corral-Status"] == "422"
        # ... and the operator may not ask as the admin: the server drops it, nobody answers.
        operator.transport.identity = "admin"
        with pytest.raises(Disconnected):
            await operator.call("queue_task", None, 1.0, task_key="echo", args={})
    async with asyncio.timeout(scaled(10)):
        while not (
            found := [e for e in await controller.store.audit_log() if e.action == "queue_task"]
        ):
            await asyncio.sleep(0.05)
    assert [(e.actor, e.role, e.target) for e in found] == [("bus:operator", "operate", "echo")]
    assert found[0].detail["instances"] == [queued]


async def test_bus_only_methods_on_http_say_to_use_nats(controller: Controller) -> None:
    assert controller.api is not None
    async with AsyncController(
        controller.api.url, await token_for(controller, Role.READ)
    ) as over_http:
        with pytest.raises(UsageError, match="nats://"):
            await over_http.nodes()
        with pytest.raises(UsageError, match="nats://"):
            await over_http.wait_for(lambda nodes: True, 1)
    with pytest.raises(UsageError, match="nats://host:port"):
        Client("ftp://example.org")


async def test_the_blocking_twin_speaks_the_bus(controller: Controller, config: Config) -> None:
    def script() -> tuple[object, list[str]]:
        with sync.Client(config.bus_url, creds=operator_creds(config), config=config) as c:
            result = c.run("add", a=20, b=22)
            names = [n.name for n in c.nodes()]
            assert set(c.connect()) == {"nodes"}  # on a client: Pydra's API function
            with pytest.raises(AttributeError):
                c.no_such_function  # noqa: B018
            return result, names

    result, names = await asyncio.to_thread(script)
    assert result == 42 and names == ["w1"]
