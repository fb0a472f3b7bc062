"""`corral up` supervises its controller: kill -9 it and the bus, the nodes and their
connections stay; the controller is started again and answers (real processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conftest import PG_DSN_ENV, child_env, corral_argv, free_port, scaled
from corral.client import Client
from corral.config import Config

pytestmark = pytest.mark.slow


class Lines:
    """The stderr of a running process, line by line, with a wait for a line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self.changed:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self.changed.notify_all()

    async def wait_for(self, text: str, timeout: float, after: int = 0) -> int:
        """Wait for a line (from index ``after``) containing ``text``; return its index."""
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                await self.changed.wait()

    def __str__(self) -> str:
        return "\n".join(self.lines)


def children_of(pid: int) -> dict[str, int]:
    """The direct children of ``pid``: their role (controller, node-1, nats-server) -> pid."""
    found: dict[str, int] = {}
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        words = [a.decode() for a in argv]
        if any(w.endswith("nats-server") for w in words):
            found["nats-server"] = int(child)
        elif "controller" in words:
            found["controller"] = int(child)
        elif "node" in words:
            found[words[words.index("--name") + 1]] = int(child)
    return found


@pytest.fixture
async def up(config: Config) -> AsyncIterator[tuple[asyncio.subprocess.Process, Lines]]:
    """`corral up --nodes 1` without a terminal, stopped with SIGTERM at the end."""
    env = {**child_env(config), "CORRAL_API_PORT": str(free_port())}
    proc = await asyncio.create_subprocess_exec(
        *corral_argv(config, "up", "--nodes", "1"),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines = Lines(proc)
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        lines.reader.cancel()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
async def test_kill_9_of_the_controller_keeps_the_bus_and_restarts_it(
    config: Config, up: tuple[asyncio.subprocess.Process, Lines]
) -> None:
    proc, lines = up
    await lines.wait_for("node-1 UP", scaled(40))
    before = children_of(proc.pid)
    assert {"nats-server", "controller", "node-1"} <= before.keys(), before
    async with await Client.connect(config, timeout=scaled(20)) as client:
        assert [n.name for n in await client.nodes()] == ["node-1"]
        killed = time.monotonic()
        os.kill(before["controller"], signal.SIGKILL)
        await lines.wait_for("controller exited (status -9); starting it again", scaled(10))
        # A read is retried while no controller answers: it is answered by the new one.
        page = await client.node_list()
        answered = time.monotonic() - killed
        assert [(n.name, str(n.status)) for n in page.items] == [("node-1", "UP")]
        assert client.nc.is_connected and client.nc.stats["reconnects"] == 0
        after = children_of(proc.pid)
        assert after["nats-server"] == before["nats-server"], "the bus was restarted"
        assert after["node-1"] == before["node-1"]
        assert after["controller"] != before["controller"]
        print(f"the API answered {answered:.2f}s after the kill")
    # A node never lost the bus: it did not log a disconnection.
    node_log = (config.data_path / "logs" / "node-1.log").read_text()
    assert "disconnected" not in node_log.lower(), node_log[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), scaled(30)) == 0, str(lines)
    await lines.reader
    assert "stopped: every child process has exited" in str(lines)
    for pid in after.values():
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        ), f"{pid} still runs"


async def test_more_controllers_need_a_shared_store(config: Config) -> None:
    proc = await asyncio.create_subprocess_exec(
        *corral_argv(config, "up", "--controllers", "2"),
        env=child_env(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), scaled(30))
    assert proc.returncode == 2
    assert "--store postgresql://" in stderr.decode()


def api_port_owner(pid: int, port: int) -> int:
    """The controller child of ``pid`` started with ``CORRAL_API_PORT=port``."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if b"controller" in argv and f"CORRAL_API_PORT={port}".encode() in environ:
            return int(child)
    raise LookupError(f"no child of {pid} serves port {port}")


async def roles(urls: list[str]) -> list[str]:
    """Each controller's role from /healthz ("" when it does not answer)."""
    found = []
    async with httpx.AsyncClient(timeout=1.0) as http:
        for url in urls:
            try:
                found.append(str((await http.get(f"{url}/healthz")).json().get("role", "")))
            except (httpx.HTTPError, ValueError):
                found.append("")
    return found


async def epoch(url: str) -> int:
    """The fencing epoch a controller's /healthz reports."""
    async with httpx.AsyncClient(timeout=5.0) as http:
        return int((await http.get(f"{url}/healthz")).json()["epoch"])


async def until_roles(urls: list[str], want: list[str], timeout: float) -> None:
    """Wait until the controllers' roles, in some order, are ``want``."""
    async with asyncio.timeout(timeout):
        while sorted(await roles(urls)) != sorted(want):
            await asyncio.sleep(0.1)  # other processes: ask their /healthz again


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_DSN_ENV), reason=f"{PG_DSN_ENV} not set")
@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_two_controllers_a_leader_and_a_standby_that_takes_over(
    config: Config, store_url: str
) -> None:
    port = free_port()
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    env = {**child_env(config), "CORRAL_API_PORT": str(port), "CORRAL_LEASE": "2"}
    argv = corral_argv(config, "up", "--nodes", "1", "--controllers", "2", "--store", store_url)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    lines = Lines(proc)
    try:
        await lines.wait_for(f"controllers {urls[0]}, {urls[1]}", scaled(40))
        await until_roles(urls, ["leader", "standby"], scaled(30))
        leader = (await roles(urls)).index("leader")
        before = await epoch(urls[0])
        name = "controller" if leader == 0 else "controller-2"
        os.kill(api_port_owner(proc.pid, port + leader), signal.SIGKILL)
        await lines.wait_for(f"{name} exited (status -9); starting it again", scaled(10))
        # A new leader (either one: the restarted controller competes for the lease too).
        await until_roles(urls, ["leader", "standby"], scaled(30))
        assert await epoch(urls[0]) > before
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(30)) == 0, str(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        lines.reader.cancel()
