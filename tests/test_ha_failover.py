"""Several controllers on PostgreSQL, as real processes: kill -9 the leader while a client
submits tasks through every controller's address; each submission that was answered is kept
and runs, and the client carries on at the new leader (skipped without
``CORRAL_TEST_POSTGRES_DSN``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import PG_DSN_ENV, child_env, corral_argv, free_port, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import CorralError
from corral.store import open_store
from corral.tokens import Role, create_token
from tasks_fixtures import start_task_node

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_DSN_ENV), reason=f"{PG_DSN_ENV} not set"),
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
]

LEASE = 2.0


class Controllers:
    """``corral controller`` processes on one store and bus, each on its own API port."""

    def __init__(self, config: Config, store: str, bus: str, count: int, logs: Path) -> None:
        self.config, self.store, self.bus, self.logs = config, store, bus, logs
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count

    @property
    def urls(self) -> list[str]:
        """Every controller's API URL."""
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, i: int) -> None:
        """Start controller ``i`` (a standby until it takes the lease)."""
        self.logs.mkdir(exist_ok=True)
        env = {
            **child_env(self.config),
            "CORRAL_API_PORT": str(self.ports[i]),
            "CORRAL_LEASE": str(LEASE),
        }
        argv = corral_argv(self.config, "controller", "--nats", self.bus, "--store", self.store)
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


async def test_kill_9_of_the_leader_loses_no_answered_submission(
    config: Config, controllers: Controllers, token: str
) -> None:
    first = await controllers.leader(scaled(30))
    node = await start_task_node(config, "w1")
    answered: list[int] = []
    failed: list[str] = []
    stop = asyncio.Event()
    try:
        # The leader first: a standby answers reads from the store (no scheduler's view).
        urls = sorted(controllers.urls, key=lambda url: url != controllers.urls[first])
        async with AsyncController(urls, token, timeout=scaled(20)) as client:
            await offered(client, "add", scaled(30))

            async def submit() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        answered.append(await client.queue_task("add", {"a": i, "b": 1}))
                    except CorralError as exc:  # the client's bound ran out: say it, go on
                        failed.append(str(exc))

            traffic = asyncio.create_task(submit())
            while len(answered) < 5:
                await asyncio.sleep(0.05)  # let traffic flow to the first leader
            killed = time.monotonic()
            count_before = len(answered)
            controllers.kill(first)
            second = await controllers.leader(scaled(LEASE + 20), other_than=first)
            async with asyncio.timeout(scaled(30)):  # submissions answered by the new leader
                while len(answered) < count_before + 5:
                    await asyncio.sleep(0.05)
            took = time.monotonic() - killed
            stop.set()
            await traffic
            assert second != first and not failed, failed
            assert client.address == controllers.urls[second]
            for i, task_id in enumerate(answered, 1):  # each answered one is kept and runs
                assert (await client.wait(task_id, timeout=scaled(30))).result == i + 1
            print(f"{len(answered)} answered; new leader taking writes {took:.2f}s after kill")
    finally:
        stop.set()
        await node.stop()
