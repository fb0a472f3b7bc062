"""Several controllers on one PostgreSQL store and one bus: one leads, by a lease with a
fencing epoch (issue #13). Real processes, a real nats-server, real PostgreSQL (skipped
without CORRAL_TEST_POSTGRES_DSN); the SQLite lock case runs everywhere.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from conftest import Procs, eventually, free_port, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import Disconnected
from corral.store import open_store
from test_tasks_processes import start_node

pytestmark = pytest.mark.slow

LEASE = 2.0


@pytest.fixture
def config(config: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """A short lease (the default is 5 s) so that takeovers are quick to test."""
    monkeypatch.setenv("CORRAL_LEASE", str(LEASE))
    config.down_after = scaled(2.5)
    yield msgspec.structs.replace(config, lease=LEASE)


@pytest.fixture
def pg_url(store_url: str) -> str:
    """A fresh PostgreSQL database (the store_url fixture skips without one)."""
    return store_url


class Ctl:
    """A `corral controller` process on a port of its own."""

    def __init__(self, procs: Procs, config: Config, name: str, store: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        os.environ["CORRAL_API_PORT"] = str(self.port)
        os.environ["CORRAL_STORE"] = store
        self.proc: subprocess.Popen[bytes] = procs.start(
            "controller", "--nats", config.bus_url, log=name
        )

    async def health(self) -> dict[str, Any] | None:
        try:
            async with httpx.AsyncClient(timeout=1.0) as web:
                reply = await web.get(f"{self.url}/healthz")
        except httpx.HTTPError:
            return None
        return reply.json() if reply.status_code == 200 else None  # type: ignore[no-any-return]

    async def role(self, role: str, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def check() -> bool:
            body = await self.health()
            if body is not None and body["role"] == role:
                found.update(body)
                return True
            return False

        await eventually(check, timeout, ignoring=(Disconnected,))
        return found


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ctl sets CORRAL_API_PORT and CORRAL_STORE for its child: undone after the test."""
    monkeypatch.setenv("CORRAL_API_PORT", "0")
    monkeypatch.setenv("CORRAL_STORE", "")
    yield


async def _token(url: str) -> str:
    from corral.tokens import Role, create_token

    async with await open_store(url) as store:
        _, text = await create_token(store, Role.OPERATE, "test")
    return text


async def _queue(url: str, token: str) -> tuple[int, dict[str, Any]]:
    """``queue_task noop`` once, over plain HTTP (the client would retry a NotLeader)."""
    async with httpx.AsyncClient(timeout=scaled(60)) as web:
        reply = await web.post(
            f"{url}/queue_task",
            json={"task_key": "noop"},
            headers={"authorization": f"Bearer {token}", "idempotency-key": os.urandom(8).hex()},
        )
    try:
        return reply.status_code, reply.json()
    except ValueError:  # not JSON: the server cut short as the deposed leader stepped down
        return reply.status_code, {"text": reply.text}


async def _noop_offered(client: AsyncController) -> bool:
    views = await client.list_tasks(keys=["noop"])
    return bool(views) and len(views[0].nodes) == 1


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_standby_reads_refuses_writes_and_takes_over_after_kill_9(
    broker: EmbeddedBroker, pg_url: str, config: Config, procs: Procs, env: None
) -> None:
    a = Ctl(procs, config, "a", pg_url)
    leader = await a.role("leader", scaled(30))
    b = Ctl(procs, config, "b", pg_url)
    standby = await b.role("standby", scaled(30))
    assert standby["leader"] == leader["controller"] and standby["epoch"] == leader["epoch"]
    assert standby["leader_address"] == a.url
    start_node(procs, config, "n1")
    token = await _token(pg_url)
    on_a = AsyncController(a.url, token, timeout=scaled(30))
    on_b = AsyncController(b.url, token, timeout=scaled(30))
    try:
        await eventually(lambda: _noop_offered(on_a), scaled(30), ignoring=(Disconnected,))
        first = await on_a.queue_task("noop")
        # The standby answers reads from the store, and writes with the leader's address.
        detail = await on_b.task_history_detail(first)
        assert detail.id == first
        # What only the leader knows live (who offers which task, the workers) it asks the
        # leader for over the bus, the caller's role checked here.
        assert await _noop_offered(on_b)
        (n1,) = [s for s in await on_b.node_status() if s.name == "n1"]
        assert "noop" in n1.keys and len(n1.workers) == 2  # start_node: --slots 2
        status, body = await _queue(b.url, token)
        assert status == 503 and body["kind"] == "NotLeader" and body["leader"] == a.url, body
        # `corral status` (GET /status) lists both, each with its role and epoch.
        seen: dict[str, Any] = {}

        async def both_listed() -> bool:
            async with httpx.AsyncClient(timeout=5.0) as web:
                reply = await web.get(
                    f"{a.url}/status", headers={"authorization": f"Bearer {token}"}
                )
            seen.update({c["id"]: c for c in reply.json()["controllers"]})
            return len(seen) == 2

        await eventually(both_listed, scaled(10), ignoring=(Disconnected,))
        roles = {c["address"]: (c["role"], c["epoch"]) for c in seen.values()}
        assert roles == {a.url: ("leader", leader["epoch"]), b.url: ("standby", leader["epoch"])}
        a.proc.kill()  # SIGKILL: no lease released, the standby waits for its expiry
        killed = time.monotonic()
        took = await b.role("leader", scaled(LEASE + 2 + 5))
        waited = time.monotonic() - killed
        assert took["epoch"] == leader["epoch"] + 1
        assert waited <= scaled(LEASE + 2), waited
        # the node followed
        await eventually(lambda: _noop_offered(on_b), scaled(30), ignoring=(Disconnected,))
        second = await on_b.queue_task("noop")
        assert second > first
    finally:
        await on_a.close()
        await on_b.close()


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
async def test_a_paused_leader_steps_down_and_nothing_it_tries_after_waking_lands(
    broker: EmbeddedBroker, pg_url: str, config: Config, procs: Procs, env: None
) -> None:
    a = Ctl(procs, config, "a", pg_url)
    leader = await a.role("leader", scaled(30))
    b = Ctl(procs, config, "b", pg_url)
    await b.role("standby", scaled(30))
    start_node(procs, config, "n1")
    token = await _token(pg_url)
    on_a = AsyncController(a.url, token, timeout=scaled(60))
    on_b = AsyncController(b.url, token, timeout=scaled(30))
    accepted: list[int] = []
    try:
        await eventually(lambda: _noop_offered(on_a), scaled(30), ignoring=(Disconnected,))
        accepted.append(await on_a.queue_task("noop"))
        a.proc.send_signal(signal.SIGSTOP)
        # Calls that reach the paused leader wait in its socket until it wakes.
        pending = [asyncio.create_task(_queue(a.url, token)) for _ in range(3)]
        took = await b.role("leader", scaled(LEASE + 2 + 5))
        assert took["epoch"] == leader["epoch"] + 1
        await eventually(lambda: _noop_offered(on_b), scaled(30), ignoring=(Disconnected,))
        accepted.append(await on_b.queue_task("noop"))
        a.proc.send_signal(signal.SIGCONT)
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            # Refused (NotLeader, or the connection cut as it stepped down): never accepted.
            if not isinstance(outcome, httpx.HTTPError):
                assert isinstance(outcome, tuple) and outcome[0] != 200, outcome
        again = await a.role("standby", scaled(30))  # same process, a fresh standby
        assert again["leader"] == took["controller"]
        assert a.proc.poll() is None
        accepted.append(await on_b.queue_task("noop"))
    finally:
        await on_a.close()
        await on_b.close()
    async with await open_store(pg_url) as store:
        stored = (await store.tasks.page(key="noop", per_page=1)).total
        lease = await store.lease.read()
    assert stored == len(accepted)  # nothing the deposed leader tried landed
    assert lease.epoch == leader["epoch"] + 1 and lease.holder == took["controller"]
    assert "deposed" in procs.log("a")


async def test_a_second_controller_on_a_sqlite_store_is_refused_while_the_first_is_paused(
    broker: EmbeddedBroker, config: Config, procs: Procs, env: None
) -> None:
    a = Ctl(procs, config, "a", str(config.store_url))
    first = await a.role("leader", scaled(30))
    a.proc.send_signal(signal.SIGSTOP)
    try:
        b = Ctl(procs, config, "b", str(config.store_url))
        assert b.proc.wait(scaled(30)) != 0
        said = procs.log("b")
        assert f"another controller (pid {a.proc.pid})" in said and "kill" in said
    finally:
        a.proc.send_signal(signal.SIGCONT)
    assert (await a.role("leader", scaled(10)))["epoch"] == first["epoch"]
