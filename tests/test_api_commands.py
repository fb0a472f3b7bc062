"""Addressed commands over the controller's HTTP API: send, execute (by role), detail, list."""

from __future__ import annotations

import base64

import httpx
import msgspec

from conftest import scaled
from corral import wire
from corral.client import Client
from corral.config import Config
from corral.controller import Controller as ControllerService
from corral.outcomes import CommandHandle
from corral.tokens import Role
from tasks_fixtures import token_for
from test_commands import _wait_consumers, start_node


async def post(
    controller: ControllerService, token: str, name: str, body: object
) -> httpx.Response:
    assert controller.api is not None
    async with httpx.AsyncClient(base_url=controller.api.url) as http:
        return await http.post(
            f"/{name}", json=body, headers={"authorization": f"Bearer {token}"}, timeout=30
        )


async def settled(config: Config, accepted: object) -> CommandHandle:
    """Follow a command the API accepted until every node's outcome is final."""
    async with await Client.connect(config) as client:
        handle = CommandHandle(client.nc, msgspec.convert(accepted, wire.CommandAccepted), 5.0)
        try:
            return await handle.wait(scaled(10))
        finally:
            await handle.close()


async def test_commands_over_http_by_role_with_the_token_audited(
    controller: ControllerService, config: Config
) -> None:
    node = await start_node(config, "h1")
    try:
        await _wait_consumers(controller, ["h1"])
        operate = await token_for(controller, Role.OPERATE)
        read = await token_for(controller, Role.READ)
        sent = await post(
            controller, operate, "send_command", {"targets": ["h*"], "name": "whoami"}
        )
        assert sent.status_code == 200, sent.text
        accepted = sent.json()
        assert accepted["nodes"] == ["h1"] and accepted["serial"] == 1
        await settled(config, accepted)
        detail = await post(controller, read, "command_detail", {"serial": 1})
        assert detail.json()["outcomes"][0]["result"] == "h1"
        listed = await post(controller, read, "list_commands", {"limit": 5})
        assert [c["serial"] for c in listed.json()] == [1]
        # Roles: a read token may not send; EXECUTE needs the execute role and its own call.
        refused = await post(controller, read, "send_command", {"targets": ["h1"], "name": "x"})
        assert refused.status_code == 403 and refused.json()["code"] == -1
        script = base64.b64encode(b"print(1)").decode()
        forbidden = await post(
            controller, operate, "execute_command", {"targets": ["h1"], "data": script}
        )
        assert forbidden.status_code == 403
        via_send = await post(
            controller, operate, "send_command", {"targets": ["h1"], "kind": "execute"}
        )
        assert via_send.status_code == 400 and "execute_command" in via_send.json()["error"]
        bad = await post(controller, operate, "send_command", {"targets": ["web[1"]})
        assert bad.status_code == 400 and "bad glob" in bad.json()["error"]
        missing = await post(controller, read, "command_detail", {"serial": 99})
        assert missing.status_code == 404 and missing.json()["code"] == -3
        assert controller.store is not None
        (entry,) = [e for e in await controller.store.audit_log() if e.action == "command"]
        assert entry.actor.startswith("api:") and entry.detail["serial"] == 1
    finally:
        await node.stop()


async def test_execute_over_http_runs_where_allowed(
    controller: ControllerService, config: Config
) -> None:
    node = await start_node(config, "x1", allow_execute=True)
    try:
        await _wait_consumers(controller, ["x1"])
        token = await token_for(controller, Role.EXECUTE)
        script = base64.b64encode(b"print('from http')").decode()
        sent = await post(controller, token, "execute_command", {"targets": ["x1"], "data": script})
        assert sent.status_code == 200, sent.text
        handle = await settled(config, sent.json())
        assert handle.outcomes["x1"].stdout == "from http\n"
    finally:
        await node.stop()
