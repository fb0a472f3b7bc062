"""From the SEER seed: addressing nodes by an attribute they announced (SEER's ``DAttrib``).

A SEER user sent to "every node with attribute X": here ``attr:role`` (any value) and
``attr:role=db`` (that value), through every door that takes targets: the Python API (async
and blocking), the CLI, HTTP ``send_command`` and the dashboard's command form.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import child_env, corral_argv, scaled
from corral import sync
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import UsageError
from corral.node import Node
from corral.tokens import Role
from dashboard_fixtures import sign_in
from tasks_fixtures import token_for
from test_commands import _wait_consumers, start_node

DB_NODES = ["db1", "db2"]


@pytest.fixture
async def fleet(controller: Controller, config: Config) -> AsyncIterator[dict[str, Node]]:
    nodes = {
        "db1": await start_node(config, "db1", attributes={"role": "db"}),
        "db2": await start_node(config, "db2", attributes={"role": "db", "tier": "1"}),
        "web1": await start_node(config, "web1", attributes={"role": "web"}),
        "plain": await start_node(config, "plain"),
    }
    await _wait_consumers(controller, list(nodes))
    try:
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


async def test_attr_role_db_reaches_exactly_the_db_nodes_from_every_door(
    fleet: dict[str, Node], controller: Controller, config: Config
) -> None:
    # The Python API (async).
    async with await Client.connect(config) as client:
        handle = await (await client.send("attr:role=db", "whoami")).wait(scaled(10))
        assert sorted(handle.nodes) == DB_NODES and handle.results == {n: n for n in DB_NODES}
        anyrole = await (await client.send(["attr:role"], "whoami")).wait(scaled(10))
        assert sorted(anyrole.nodes) == ["db1", "db2", "web1"]  # not "plain"
        with pytest.raises(UsageError, match="bad attribute name.*attr:KEY=VALUE"):
            await client.send("attr:=db", "whoami")

    # The blocking API (corral.sync), as a script would call it.
    def blocking() -> list[str]:
        with sync.Client.connect(config) as c:
            return sorted(c.send("attr:role=db", "whoami").nodes)  # settled already

    assert await asyncio.to_thread(blocking) == DB_NODES

    # The CLI.
    proc = await asyncio.create_subprocess_exec(
        *corral_argv(config, "send", "attr:role=db", "whoami", "--json"),
        env=child_env(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode == 0, err.decode()
    document = json.loads(out)
    assert sorted(document["nodes"]) == DB_NODES
    assert sorted(o["node"] for o in document["outcomes"]) == DB_NODES
    proc = await asyncio.create_subprocess_exec(
        *corral_argv(config, "send", "attr:role=", "whoami"),
        env=child_env(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode != 0
    assert "drop the '='" in (out + err).decode()

    # HTTP send_command.
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    async with httpx.AsyncClient(
        base_url=controller.api.url, headers={"authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        sent = await http.post("/send_command", json={"targets": ["attr:role=db"], "name": "x"})
        assert sent.status_code == 200, sent.text
        assert sorted(sent.json()["nodes"]) == DB_NODES
        bad = await http.post("/send_command", json={"targets": ["attr:role=a b"], "name": "x"})
        assert bad.status_code == 400 and "bad attribute value" in bad.json()["error"]

    # The dashboard's command form (and its hint suggests `*`, which matches every node).
    async with httpx.AsyncClient(base_url=controller.api.url, timeout=scaled(20)) as web:
        csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
        page = (await web.get("/ui/commands")).text
        assert 'placeholder="* (every node)' in page and "or all" not in page
        posted = await web.post(
            "/ui/commands",
            data={"csrf": csrf, "targets": "attr:role=db", "kind": "command", "name": "whoami"},
        )
        assert posted.status_code == 303, posted.text
        serial = int(posted.headers["location"].rsplit("/", 1)[1])
    assert controller.store is not None
    async with asyncio.timeout(scaled(20)):  # the form's command is recorded durably
        while (found := await controller.store.get_command(serial)) is None:
            await asyncio.sleep(0.05)
    assert sorted(found[0].nodes) == DB_NODES and found[0].targets == ["attr:role=db"]
