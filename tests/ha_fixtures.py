"""Several controllers as real processes on one PostgreSQL store and bus (tests of #13)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import child_env, corral_argv, free_port
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.store import open_store
from corral.tokens import Role, create_token

__all__ = ["LEASE", "Controllers", "controllers", "offered", "token"]

LEASE = 2.0


class Controllers:
    """``corral controller`` processes on one store and bus, each on its own API port.

    ``stores[i]`` and ``buses[i]`` are where controller ``i`` reaches them (the same for all
    unless a test sends one through a proxy it can cut)."""

    def __init__(self, config: Config, store: str, bus: str, count: int, logs: Path) -> None:
        self.config, self.store, self.bus, self.logs = config, store, bus, logs
        self.stores, self.buses = [store] * count, [bus] * count
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    @property
    def urls(self) -> list[str]:
        """Every controller's API URL."""
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, i: int) -> None:
        """Start controller ``i`` (a standby until it takes the lease)."""
        self.logs.mkdir(exist_ok=True)
        if self.procs[i] is not None and self.procs[i].poll() is None:  # type: ignore[union-attr]
            raise RuntimeError(f"controller {i} runs already")
        env = {
            **child_env(self.config),
            "CORRAL_API_PORT": str(self.ports[i]),
            "CORRAL_LEASE": str(LEASE),
        }
        argv = corral_argv(
            self.config, "controller", "--nats", self.buses[i], "--store", self.stores[i]
        )
        with open(self.logs / f"controller-{i}.log", "ab") as out:
            self.procs[i] = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    async def leader(self, timeout: float, other_than: int | None = None) -> int:
        """The index of the controller whose /healthz says it leads (waiting for one)."""
        async with httpx.AsyncClient(timeout=1.0) as http, asyncio.timeout(timeout):
            while True:
                for i, url in enumerate(self.urls):
                    if i == other_than or self.procs[i] is None:
                        continue
                    try:
                        health = (await http.get(f"{url}/healthz")).json()
                    except (httpx.HTTPError, ValueError):
                        continue
                    if health.get("role") == "leader":
                        return i
                await asyncio.sleep(0.1)  # polling /healthz: the controllers are other processes

    async def health(self, i: int) -> dict[str, object]:
        """Controller ``i``'s /healthz ({} when it does not answer: stopped or restarting)."""
        async with httpx.AsyncClient(timeout=1.0) as http:
            try:
                found: dict[str, object] = (await http.get(f"{self.urls[i]}/healthz")).json()
                return found
            except (httpx.HTTPError, ValueError):
                return {}

    def kill(self, i: int) -> None:
        """SIGKILL controller ``i``."""
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """Kill every controller still running."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


async def offered(client: AsyncController, key: str, timeout: float) -> None:
    """Wait until the leading controller knows a node offering task ``key``."""
    async with asyncio.timeout(timeout):
        while not any(view.key == key and view.nodes for view in await client.list_tasks()):
            await asyncio.sleep(0.1)  # the controller is another process: ask again


@pytest.fixture
def controllers(
    config: Config, broker: EmbeddedBroker, store_url: str, tmp_path: Path
) -> Iterator[Controllers]:
    """Two controllers on the test's PostgreSQL database and bus."""
    group = Controllers(config, store_url, broker.url, 2, tmp_path / "logs")
    try:
        for i in range(2):
            group.start(i)
        yield group
    finally:
        group.stop()


@pytest.fixture
async def token(store_url: str) -> AsyncIterator[str]:
    """An operate token in the shared store."""
    async with await open_store(store_url) as store:
        _, text = await create_token(store, Role.OPERATE, "failover-test")
    yield text
