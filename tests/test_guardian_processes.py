"""Guardians as real processes: the shipped suspension + manager example, kill -9, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conftest import Procs, child_env, corral_argv, scaled
from corral import wire
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.guardian import GuardianClient

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "guardian"
NODES = ("SUS_MC1", "SUS_MC2", "SUS_MC3")


@pytest.fixture
async def client(broker: EmbeddedBroker, config: Config) -> AsyncIterator[GuardianClient]:
    c = await GuardianClient.connect(config, by="alice")
    try:
        yield c
    finally:
        await c.close()


def cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``corral ARGS`` (call through asyncio.to_thread)."""
    return subprocess.run(
        corral_argv(config, *args),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def until(
    client: GuardianClient,
    name: str,
    ok: Callable[[wire.GuardianView], bool],
    timeout: float = 30,
) -> wire.GuardianView:
    """Watch ``name`` (its stored view first) until a view satisfies ``ok``."""

    async def watch() -> wire.GuardianView:
        async with contextlib.aclosing(client.watch(name, history=False)) as views:
            async for view in views:
                if view is not None and ok(view):
                    return view
        raise AssertionError("watch ended")

    return await asyncio.wait_for(watch(), scaled(timeout))


async def start_example(procs: Procs, client: GuardianClient, tmp: Path) -> Path:
    """Three suspensions and their manager IMC, running from a copy of the examples."""
    for f in ("suspension.py", "manager.py"):
        shutil.copy(EXAMPLES / f, tmp / f)
    for name in NODES:
        procs.start("guardian", "run", str(tmp / "suspension.py"), "--name", name, log=name)
    for name in NODES:
        await until(client, name, lambda v: v.alive and v.arrived)
    procs.start("guardian", "run", str(tmp / "manager.py"), "--name", "IMC", log="IMC")
    await until(client, "IMC", lambda v: v.alive and v.arrived and v.state == "DOWN")
    return tmp


async def test_example_manager_aligns_three_suspensions_and_recovers_a_fault(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    tmp = await start_example(procs, client, tmp_path)
    for name in NODES:
        view = await client.view(name)
        assert (view.mode, view.manager, view.state) == ("MANAGED", "IMC", "DOWN")
    result = await asyncio.to_thread(
        cli, config, "guardian", "request", "IMC", "ALIGNED", "--wait", str(scaled(30))
    )
    assert result.returncode == 0, result.stderr
    assert "IMC: ALIGNED -> ALIGNED  AUTO  OK  arrived" in result.stdout
    for name in NODES:
        view = await client.view(name)
        assert (view.state, view.arrived, view.status) == ("ALIGNED", True, "OK")

    # Inject a watchdog trip in SUS_MC2: it jumps to TRIPPED and, MANAGED, stalls there; the
    # manager's ALIGNED.run() revives it and it walks back up.
    before = await client.view("SUS_MC2")
    (tmp / "SUS_MC2.fault").touch()
    stalled = await until(client, "SUS_MC2", lambda v: v.stalled)
    assert stalled.state == "TRIPPED" and stalled.status == "STALLED"
    view = await until(
        client, "SUS_MC2", lambda v: v.seq > stalled.seq and v.arrived and v.state == "ALIGNED"
    )
    assert view.status == "OK" and view.seq > before.seq
    assert not (tmp / "SUS_MC2.fault").exists()
    assert (await until(client, "IMC", lambda v: v.arrived)).state == "ALIGNED"

    # `list` shows them all; `graph` prints DOT with the current state filled.
    listing = await asyncio.to_thread(cli, config, "guardian", "list")
    assert listing.returncode == 0, listing.stderr
    for name in (*NODES, "IMC"):
        assert name in listing.stdout
    assert listing.stdout.count("MANAGED") == 3  # the table may wrap "(IMC)" on a narrow tty
    dot = await asyncio.to_thread(cli, config, "guardian", "graph", "SUS_MC1")
    assert dot.returncode == 0, dot.stderr
    assert dot.stdout.startswith('digraph "SUS_MC1"')
    assert '"ALIGNED" [style="rounded,filled", fillcolor="palegreen"]' in dot.stdout


async def test_checker_reports_a_killed_node_and_a_persons_mode_change(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    await start_example(procs, client, tmp_path)
    await client.request("IMC", "ALIGNED")
    await until(client, "IMC", lambda v: v.arrived and v.state == "ALIGNED")

    # A person takes SUS_MC3 back: the checker reports it; fail_return jumps IMC to DOWN.
    result = await asyncio.to_thread(cli, config, "guardian", "mode", "SUS_MC3", "AUTO")
    assert result.returncode == 0, result.stderr
    view = await until(client, "IMC", lambda v: any("SUS_MC3: mode" in n for n in v.notifications))
    assert "SUS_MC3: mode changed to AUTO (by a person)" in view.notifications
    assert view.state in ("DOWN", "DAMPED", "ALIGNED")  # it jumped; where it is now varies
    await until(client, "IMC", lambda v: v.state == "DOWN")

    # kill -9 SUS_MC1: no goodbye. IMC reports a connection error within the bound.
    victim = procs.started[0]
    victim.kill()
    killed = time.monotonic()
    view = await until(
        client, "IMC", lambda v: any("SUS_MC1: connection error" in n for n in v.notifications)
    )
    detected = time.monotonic() - killed
    # The silence bound, the last heartbeat's age, and room for a cycle, a put and a watch.
    bound = config.down_after + config.heartbeat_interval + 1.5
    assert detected <= scaled(bound), f"detected after {detected:.2f}s"
    assert view.state == "DOWN" and view.status == "NOTIFICATION"
    listing = await asyncio.to_thread(cli, config, "guardian", "list")
    assert "CONNECTION_ERROR" in listing.stdout


async def test_cli_errors_are_clear(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(cli, config, "guardian", "request", "NOBODY", "DOWN")
    assert result.returncode == 1
    assert "no guardian named 'NOBODY' is running" in result.stderr.replace("\n", " ")
    shutil.copy(EXAMPLES / "suspension.py", tmp_path / "suspension.py")
    procs.start("guardian", "run", str(tmp_path / "suspension.py"), "--name", "S1", log="S1")
    await until(client, "S1", lambda v: v.alive)
    result = await asyncio.to_thread(cli, config, "guardian", "request", "S1", "TRIPPED")
    assert result.returncode == 1
    assert "cannot be requested" in result.stderr
    result = await asyncio.to_thread(
        cli, config, "guardian", "run", str(tmp_path / "nope.py"), "--name", "S2"
    )
    assert result.returncode == 2 and "not found" in result.stderr


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
async def test_graph_renders_svg_with_graphviz(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "suspension.py", tmp_path / "suspension.py")
    procs.start("guardian", "run", str(tmp_path / "suspension.py"), "--name", "S1", log="S1")
    await until(client, "S1", lambda v: v.alive)
    svg = tmp_path / "s1.svg"
    result = await asyncio.to_thread(cli, config, "guardian", "graph", "S1", "-o", str(svg))
    assert result.returncode == 0, result.stderr
    assert "<svg" in svg.read_text()


BROKEN_STATE = """

class BROKEN(GuardState):
    def main(self):
        raise RuntimeError("coil driver unplugged")


edges.append(("SAFE", "BROKEN"))
"""


async def test_a_guardian_process_walks_survives_its_code_raising_and_a_bad_reload(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    path = tmp_path / "suspension.py"
    path.write_text((EXAMPLES / "suspension.py").read_text() + BROKEN_STATE)
    procs.start("guardian", "run", str(path), "--name", "S1", log="S1")
    await until(client, "S1", lambda v: v.alive and v.arrived and v.state == "DOWN")
    # The shortest path, walked by the process: the CLI waits until it arrived.
    result = await asyncio.to_thread(
        cli, config, "guardian", "request", "S1", "ALIGNED", "--wait", str(scaled(20))
    )
    assert result.returncode == 0, result.stderr
    assert "S1: ALIGNED -> ALIGNED  AUTO  OK  arrived" in result.stdout
    # State code raising: ERROR with the traceback; the process keeps serving.
    await client.request("S1", "BROKEN")
    view = await until(client, "S1", lambda v: v.status == "ERROR")
    assert view.state == "BROKEN" and "RuntimeError: coil driver unplugged" in view.error
    # A module that fails to import: the old code keeps running, the error is shown.
    path.write_text(path.read_text() + "\nimport no_such_module_here\n")
    result = await asyncio.to_thread(cli, config, "guardian", "reload", "S1")
    assert result.returncode == 1
    assert "No module named 'no_such_module_here'" in result.stderr
    view = await client.view("S1")
    assert view.state == "BROKEN" and "no_such_module_here" in view.load_error
    result = await asyncio.to_thread(
        cli, config, "guardian", "request", "S1", "DOWN", "--wait", str(scaled(20))
    )
    assert result.returncode == 0, result.stderr
    assert "S1: DOWN -> DOWN  AUTO  OK  arrived" in result.stdout
    assert "reload failed (previous code running)" in result.stdout
    assert procs.started[0].poll() is None  # alive throughout
