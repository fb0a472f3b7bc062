"""Commands with real node and controller processes: a network cut, kill -9 mid-broadcast."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import Procs, eventually, free_port, scaled
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import CorralError
from corral.outcomes import CommandHandle
from corral.security import Authority

pytestmark = pytest.mark.slow


class Cuttable:
    """A TCP proxy in front of the bus whose links can be cut and restored (a network cut)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.up = True
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", self.port)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.up = False
        for w in self.links:
            w.transport.abort()
        self.links.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


def start_node(procs: Procs, config: Config, name: str, url: str) -> subprocess.Popen[bytes]:
    creds = config.data_path / f"{name}.creds"
    creds.write_text(Authority.load(config.data_path).enroll(name))
    return procs.start(
        "node",
        "--name",
        name,
        "--nats",
        url,
        "--creds",
        str(creds),
        "--handlers",
        "sample_handlers",
        log=name,
    )


def status(name: str, want: str) -> Callable[[list], bool]:  # type: ignore[type-arg]
    return lambda nodes: any(n.name == name and n.status == want for n in nodes)


def applied(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[0]) for line in path.read_text().splitlines()]


async def test_a_node_cut_off_during_100_commands_catches_up_in_order_without_duplicates(
    controller: Controller, config: Config, procs: Procs, tmp_path: Path
) -> None:
    proxy = Cuttable(config.nats_port)
    await proxy.start()
    log = tmp_path / "cut1.log"
    try:
        start_node(procs, config, "cut1", f"tls://127.0.0.1:{proxy.port}")
        async with await Client.connect(config) as client:
            await client.wait_for(status("cut1", "UP"), scaled(15))
            handles: list[CommandHandle] = []
            for i in range(100):
                if i == 30:
                    proxy.cut()
                    await client.wait_for(status("cut1", "DOWN"), scaled(10))
                if i == 70:
                    proxy.restore()
                handles.append(await client.send("cut1", "append", path=str(log), i=i))
            for handle in handles:
                await handle.wait(scaled(30))
            assert all(h.ok for h in handles), [h.failed for h in handles if not h.ok]
            # Its heartbeats report the last serial it applied: it is no longer behind.
            last = handles[-1].serial
            await client.wait_for(
                lambda ns: [(n.status, n.last_serial, n.behind) for n in ns] == [("UP", last, 0)],
                scaled(5),
            )
        # Every command ran once, in serial order, by the same node process.
        assert applied(log) == list(range(100))
        assert len({line.split()[1] for line in log.read_text().splitlines()}) == 1
    finally:
        await proxy.close()


async def test_controller_kill_9_mid_broadcast_serials_continue_and_nothing_runs_twice(
    broker: EmbeddedBroker, config: Config, procs: Procs, tmp_path: Path
) -> None:
    ctl = procs.start("controller", "--nats", config.bus_url, log="controller")
    names = ["b1", "b2", "b3"]
    for name in names:
        start_node(procs, config, name, config.bus_url)
    async with await Client.connect(config, wait=scaled(10)) as client:
        await client.wait_for(
            lambda ns: sorted(n.name for n in ns if n.status == "UP") == names, scaled(20)
        )
        first_id = (await client.stats()).controller
        accepted: list[CommandHandle] = []
        unknown_values: set[int] = set()
        i = 0
        restarted = False
        while len(accepted) < 40:
            if len(accepted) == 15 and not restarted:
                ctl.kill()  # SIGKILL while broadcasts are flowing
                restarted = True
                procs.start("controller", "--nats", config.bus_url, log="controller2")
            try:
                args = {"path": str(tmp_path / "record"), "i": i}
                accepted.append(
                    await client.command("*", "command", "append", args=args, follow=False)
                )
            except CorralError:
                # Not accepted as far as the client knows: not owed. (The killed controller may
                # have committed it before dying, if the client gave up retrying before the
                # next one started: then it runs, once, in its place.)
                unknown_values.add(i)
                await asyncio.sleep(0.05)
            i += 1

        async def new_controller() -> bool:
            with contextlib.suppress(CorralError):
                return (await client.stats()).controller != first_id
            return False

        await eventually(new_controller, scaled(20))
        for handle in accepted:
            await handle.wait(scaled(30))
        serials = [h.serial for h in accepted]
        assert serials == sorted(set(serials))  # strictly increasing across the restart
        assert all(h.ok for h in accepted), [h.counts() for h in accepted if not h.ok]
    # One file for the three nodes (O_APPEND lines), each line tagged with the node's pid.
    per_pid: dict[str, list[int]] = {}
    for line in (tmp_path / "record").read_text().splitlines():
        value, pid = line.split()
        per_pid.setdefault(pid, []).append(int(value))
    owed = [i for i in range(i) if i not in unknown_values]
    assert len(per_pid) == 3
    for values in per_pid.values():
        # Every accepted command once, in order, none twice; nothing the client never sent.
        assert values == sorted(set(values)), values
        assert [v for v in values if v not in unknown_values] == owed, (values, unknown_values)


async def test_corral_up_then_corral_send_ping_reaches_every_local_node(
    config: Config, tmp_path: Path
) -> None:
    import json
    import os
    import signal

    from conftest import child_env, corral_argv

    env = child_env(config)
    with open(tmp_path / "up.log", "wb") as out:
        up = subprocess.Popen(
            corral_argv(config, "up", "--nodes", "2", "--handlers", "sample_handlers"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        async with await Client.connect(config, wait=scaled(15)) as client:
            await client.wait_for(
                lambda ns: sorted(n.name for n in ns if n.status == "UP") == ["node-1", "node-2"],
                scaled(20),
            )

        async def cli(*args: str) -> tuple[int, bytes]:
            proc = await asyncio.create_subprocess_exec(
                *corral_argv(config, *args),
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            stdout, _ = await proc.communicate()
            return proc.returncode or 0, stdout

        code, stdout = await cli("send", "*", "ping", "--json")
        document = json.loads(stdout)
        assert code == 0, document
        assert sorted(o["node"] for o in document["outcomes"]) == ["node-1", "node-2"]
        assert all(o["state"] == "done" and o["result"]["pid"] for o in document["outcomes"])
        code, stdout = await cli("get", "node-*", "gain", "--json")  # from --handlers
        assert code == 0 and [o["result"] for o in json.loads(stdout)["outcomes"]] == [1.0, 1.0]
    finally:
        os.kill(up.pid, signal.SIGINT)
        up.wait(timeout=scaled(20))
