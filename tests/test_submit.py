"""One submit path for commands: the bus, the HTTP API and the dashboard check alike."""

from __future__ import annotations

import base64
import html

import httpx
import msgspec
import pytest

from conftest import scaled
from corral import bus, subjects, wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import CorralError
from corral.node import Node
from corral.tokens import Role
from dashboard_fixtures import sign_in
from tasks_fixtures import node, token_for  # noqa: F401 - fixtures

#: A retire window no default has: a command that carries it took it from the configuration.
RETIRE = 777.0
#: The largest command (its data) the controller takes, and a script over it.
LIMIT = 4096
BIG = "print(1)\n" * 1000


@pytest.fixture
def config(config: Config) -> Config:
    """The usual test configuration, with a retire window and a size limit of its own."""
    return msgspec.structs.replace(
        config, retire_after=RETIRE, max_command_bytes=LIMIT, max_request_bytes=1024 * 1024
    )


async def by_bus(config: Config, targets: list[str], keyed: bool, code: str) -> str:
    """Send over the bus (keyed, as the client does, or not; EXECUTE with ``code``) with
    the admin credential; the refusal's message."""
    async with await Client.connect(config) as client:
        assert client.identity == "admin"
        request = wire.CommandRequest(
            targets=targets,
            kind="execute" if code else "command",
            name="" if code else "whoami",
            data=code.encode(),
            idempotency_key="k-1" if keyed else "",
        )
        subject = subjects.ctl_as("execute" if code else "send", client.identity)
        with pytest.raises(CorralError) as caught:
            await bus.request(client.nc, subject, request, wire.CommandAccepted, timeout=10)
        return str(caught.value)


async def by_http(
    controller: Controller, web: httpx.AsyncClient, targets: list[str], code: str
) -> str:
    """Send with ``send_command`` (``execute_command`` with ``code``); the refusal's message."""
    token = await token_for(controller, Role.EXECUTE)
    body: dict[str, object] = {"targets": targets, "name": "whoami"}
    if code:
        body = {"targets": targets, "data": base64.b64encode(code.encode()).decode()}
    reply = await web.post(
        "/execute_command" if code else "/send_command",
        json=body,
        headers={"authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 400, reply.text
    return str(reply.json()["error"])


async def by_dashboard(web: httpx.AsyncClient, csrf: str, targets: list[str], code: str) -> str:
    """Send from the command form; the message flashed on the page it returns to."""
    form = {"csrf": csrf, "targets": " ".join(targets), "kind": "command", "name": "whoami"}
    if code:
        form.update(kind="execute", name="", code=code)
    sent = await web.post("/ui/commands", data=form)
    assert sent.status_code == 303 and sent.headers["location"] == "/ui/commands"
    return html.unescape((await web.get("/ui/commands")).text)


@pytest.mark.parametrize(
    ("targets", "code", "expected"),
    [
        (["ghost"], "", "no node matches ghost: check the names with `corral nodes`"),
        (["web[1"], "", "bad glob"),
        # Before, only the HTTP API checked the size, not the dashboard. (The bus's own
        # message limit, max_command_bytes on that subject, refuses it before it is read.)
        (["*"], BIG, f"data of {len(BIG)} bytes exceeds max_command_bytes ({LIMIT})"),
    ],
)
async def test_the_same_bad_command_is_refused_alike_by_bus_http_and_dashboard(
    controller: Controller,
    config: Config,
    web: httpx.AsyncClient,
    targets: list[str],
    code: str,
    expected: str,
) -> None:
    bus_keyed = await by_bus(config, targets, True, code)
    bus_plain = await by_bus(config, targets, False, code)
    over_http = await by_http(controller, web, targets, code)
    assert expected in over_http
    if code:
        for refusal in (bus_keyed, bus_plain):
            assert f"bytes exceeds the {LIMIT}-byte limit for this subject" in refusal
    else:
        assert bus_keyed == bus_plain == over_http
    csrf = await sign_in(web, token=await token_for(controller, Role.EXECUTE))
    assert over_http in await by_dashboard(web, csrf, targets, code)
    assert controller.commands.book.last_serial == 0  # nothing recorded


async def test_every_way_in_takes_the_configured_retire_window(
    controller: Controller,
    config: Config,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    assert controller.store is not None
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    sent = await web.post(
        "/ui/commands", data={"csrf": csrf, "targets": "w1", "kind": "get", "name": "x"}
    )
    assert sent.status_code == 303, sent.text
    from_dashboard = int(sent.headers["location"].rsplit("/", 1)[1])
    token = await token_for(controller, Role.OPERATE)
    reply = await web.post(
        "/send_command",
        json={"targets": ["w1"], "kind": "get", "name": "x"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert reply.status_code == 200, reply.text
    async with await Client.connect(config) as client:
        request = wire.CommandRequest(targets=["w1"], kind="get", name="x")  # no retire_after
        subject = subjects.ctl_as("send", client.identity)
        accepted = await bus.request(
            client.nc, subject, request, wire.CommandAccepted, timeout=scaled(10)
        )
    for serial in (from_dashboard, reply.json()["serial"], accepted.serial):
        found = await controller.store.get_command(serial)
        assert found is not None and found[0].retire_after == RETIRE, serial
