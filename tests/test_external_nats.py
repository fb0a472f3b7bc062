"""An operator's own nats-server, trusting corral through `include nats-auth.conf`."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from conftest import free_port, scaled
from corral import procs
from corral.app import ControllerService
from corral.broker import find_nats_server, wait_listening
from corral.client import Client
from corral.config import Config
from corral.node import Node
from corral.security import Authority


@pytest.fixture
async def external(config: Config, tmp_path: Path) -> AsyncIterator[str]:
    """A plain nats-server (no TLS) configured the way docs/security.md tells operators."""
    port = free_port()
    conf = tmp_path / "operator-nats.conf"
    auth = config.data_path / "auth" / "nats-auth.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"jetstream {{ store_dir: {json.dumps(str(tmp_path / 'js'))} }}\n"
        # nats-server resolves include paths relative to the including file.
        f"include {json.dumps(os.path.relpath(auth, conf.parent))}\n"
    )
    proc = procs.spawn([find_nats_server(), "-c", str(conf)], log=tmp_path / "nats.log")
    try:
        await wait_listening(proc, "127.0.0.1", port, scaled(10), tmp_path / "nats.log")
        yield f"nats://127.0.0.1:{port}"
    finally:
        procs.stop(proc)


async def test_controller_and_nodes_on_an_external_nats(config: Config, external: str) -> None:
    config = msgspec.structs.replace(config, nats_url=external)
    creds = config.data_path / "ext1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("ext1"))
    controller = ControllerService(config)
    await controller.start()
    node = Node(config, "ext1", creds=creds, interfaces=("eth0",))
    try:
        await node.start()
        await asyncio.wait_for(node.wait_joined(), scaled(5))
        async with await Client.connect(config) as client:
            (view,) = await client.nodes()
            assert (view.name, view.status, view.interfaces) == ("ext1", "UP", ("eth0",))
    finally:
        await node.stop()
        await controller.stop()
