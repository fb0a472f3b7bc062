"""End to end with real processes: kill -9 of nodes and of the controller, `corral up`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from conftest import Procs, child_env, corral_argv, eventually, scaled
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.security import Authority

pytestmark = pytest.mark.slow


def enroll(config: Config, name: str) -> str:
    path = config.data_path / f"{name}.creds"
    path.write_text(Authority.load(config.data_path).enroll(name))
    return str(path)


def start_node(procs: Procs, config: Config, name: str, *extra: str) -> subprocess.Popen[bytes]:
    creds = enroll(config, name)
    return procs.start(
        "node", "--name", name, "--nats", config.bus_url, "--creds", creds, *extra, log=name
    )


def statuses(expected: dict[str, str]) -> Callable[[list], bool]:  # type: ignore[type-arg]
    return lambda nodes: {n.name: n.status for n in nodes} == expected


async def test_kill_9_node_is_down_within_silence_plus_one_second_and_up_on_restart(
    controller: Controller, config: Config, procs: Procs
) -> None:
    node = start_node(procs, config, "k1", "--label", "gpu")
    async with await Client.connect(config) as client:
        await client.wait_for(statuses({"k1": "UP"}), scaled(15))
        node.kill()  # SIGKILL: no goodbye
        killed = time.time()
        await client.wait_for(statuses({"k1": "DOWN"}), scaled(config.down_after + 1))
        assert controller.registry.nodes["k1"].since - killed <= config.down_after + 1
        start_node(procs, config, "k1", "--label", "gpu")
        (view,) = await client.wait_for(statuses({"k1": "UP"}), scaled(15))
        assert view.labels == ("gpu",) and view.pid != node.pid


async def test_a_crashed_node_restarted_at_once_gets_its_name_back(
    controller: Controller, config: Config, procs: Procs
) -> None:
    node = start_node(procs, config, "quick")
    async with await Client.connect(config) as client:
        await client.wait_for(statuses({"quick": "UP"}), scaled(15))
        node.kill()
        await asyncio.to_thread(node.wait)
        again = start_node(procs, config, "quick")  # well within down_after
        (view,) = await client.wait_for(
            lambda ns: [(n.name, n.status, n.pid) for n in ns] == [("quick", "UP", again.pid)],
            scaled(config.down_after + 10),
        )
        assert again.poll() is None


async def test_kill_9_controller_restart_keeps_registry_and_nodes_reattach(
    broker: EmbeddedBroker, config: Config, procs: Procs
) -> None:
    ctl = procs.start("controller", "--nats", config.bus_url, log="controller")
    nodes = {name: start_node(procs, config, name, "--sink") for name in ("r1", "r2")}
    async with await Client.connect(config, wait=scaled(10)) as client:
        await client.wait_for(statuses({"r1": "UP", "r2": "UP"}), scaled(15))
        first = (await client.stats()).controller
        ctl.kill()
        ctl.wait()
        procs.start("controller", "--nats", config.bus_url, log="controller2")

        async def new_controller_rejoined() -> bool:
            try:
                stats = await client.stats()
            except Exception:
                return False
            return stats.controller != first and stats.counters.get("join", 0) >= 2

        await eventually(new_controller_rejoined, scaled(15))
        views = await client.wait_for(statuses({"r1": "UP", "r2": "UP"}), scaled(5))
    # Same node processes, never restarted, with what they said at their first join.
    assert {v.name: v.pid for v in views} == {n: p.pid for n, p in nodes.items()}
    assert all(p.poll() is None for p in nodes.values())
    assert all(v.attributes == {"sink": True} for v in views)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_corral_up_leaves_no_process_behind(
    config: Config, tmp_path: os.PathLike[str], sig: signal.Signals
) -> None:
    out = open(os.path.join(tmp_path, "up.log"), "wb")  # noqa: SIM115
    up = subprocess.Popen(
        corral_argv(config, "up", "--nodes", "2"),
        env=child_env(config),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        async with await Client.connect(config, wait=scaled(15)) as client:
            await client.wait_for(statuses({"node-1": "UP", "node-2": "UP"}), scaled(20))
        children = psutil.Process(up.pid).children(recursive=True)
        names = sorted(" ".join(c.cmdline()) for c in children)
        assert len(children) == 4, names  # nats-server, controller, two nodes
        up.send_signal(sig)
        assert up.wait(scaled(30)) == 0
        gone, alive = psutil.wait_procs(children, timeout=scaled(5))
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        out.close()
    log = Path(tmp_path, "up.log").read_text()
    assert "every child process has exited" in log


async def test_revoked_node_process_stops_with_a_clear_error(
    controller: Controller, config: Config, procs: Procs
) -> None:
    node = start_node(procs, config, "rv")
    async with await Client.connect(config) as client:
        await client.wait_for(statuses({"rv": "UP"}), scaled(15))
        # In a thread: the controller runs in this test's event loop and must keep serving.
        revoke = await asyncio.to_thread(
            subprocess.run,
            corral_argv(config, "revoke", "rv"),
            env=child_env(config),
            capture_output=True,
            timeout=scaled(30),
        )
        assert revoke.returncode == 0, revoke.stderr
        assert b"revoked rv" in revoke.stdout
        assert await asyncio.to_thread(node.wait, scaled(10)) == 1
        await client.wait_for(statuses({"rv": "REVOKED"}), scaled(5))
    assert "credential was probably revoked" in procs.log("rv")
    assert controller.store is not None
    entries = await controller.store.audit_log()
    assert [(e.action, e.target) for e in entries] == [("revoke", "rv")], revoke
