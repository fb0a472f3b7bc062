"""Partitions of the leading controller (issue #13), as real processes on PostgreSQL and one
bus: the leader reaches the store, or the bus, only through a TCP proxy the test cuts
(tests/tcp_proxy.py, a blackhole: silence, not an error, as across a dead switch).

* Cut from the store: a standby takes over within a lease and 2 s, the old leader steps down
  (it cannot renew), nothing it was asked meanwhile lands, clients given both addresses carry
  on, and once the cut heals it serves again as a standby.
* Cut from the bus: the leader still renews its lease but reaches no node; it lets the lease go
  after a lease without the bus, a standby that has the bus takes over, and the nodes follow.

Skipped without ``CORRAL_TEST_POSTGRES_DSN``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from conftest import PG_DSN_ENV, eventually, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import CorralError
from corral.states import CommandState
from corral.store import open_store
from ha_fixtures import LEASE, Controllers, offered
from ha_fixtures import token as token  # noqa: F401 - fixture
from tasks_fixtures import start_task_node
from tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not os.environ.get(PG_DSN_ENV), reason=f"{PG_DSN_ENV} not set"),
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
]


@pytest.fixture
def group(
    config: Config, broker: EmbeddedBroker, store_url: str, tmp_path: Path
) -> Iterator[Controllers]:
    """Two controllers (not started): the test points one at a proxy first."""
    controllers = Controllers(config, store_url, broker.url, 2, tmp_path / "logs")
    try:
        yield controllers
    finally:
        controllers.stop()


def proxied(url: str, proxy: TcpProxy) -> str:
    """``url`` (a PostgreSQL or NATS URL) through ``proxy``."""
    if url.startswith("nats://") or url.startswith("tls://"):
        scheme = url.split("://", 1)[0]
        return f"{scheme}://127.0.0.1:{proxy.port}"
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


def proxy_to(url: str) -> TcpProxy:
    """A started proxy to the host and port of ``url``."""
    if "://" in url and url.split("://", 1)[0] in ("nats", "tls"):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        return TcpProxy(host, int(port)).start()
    parsed = make_url(url)
    return TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()


async def role(group: Controllers, i: int, wanted: str, timeout: float) -> dict[str, Any]:
    """Controller ``i``'s /healthz once it says ``wanted``."""
    found: dict[str, Any] = {}

    async def check() -> bool:
        found.clear()
        found.update(await group.health(i))
        return found.get("role") == wanted

    await eventually(check, timeout)
    return found


async def pinged(api: AsyncController, timeout: float) -> int:
    """Send ``ping`` to every node and wait until each did it; its serial."""
    accepted = await api.send_command(["*"], "command", "ping")
    assert accepted.nodes, accepted

    async def done() -> bool:
        view = await api.command_detail(accepted.serial)
        return all(o.state == CommandState.DONE for o in view.outcomes) and bool(view.outcomes)

    await eventually(done, timeout, ignoring=(CorralError,))
    return accepted.serial


async def queue_raw(url: str, token: str, a: int) -> tuple[int, dict[str, Any]]:
    """``queue_task add`` once at ``url``, over plain HTTP (a client would go elsewhere)."""
    async with httpx.AsyncClient(timeout=scaled(60)) as web:
        reply = await web.post(
            f"{url}/queue_task",
            json={"task_key": "add", "args": {"a": a, "b": 1}},
            headers={"authorization": f"Bearer {token}", "idempotency-key": os.urandom(8).hex()},
        )
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, {"text": reply.text}


async def check_store(store_url: str, accepted: list[int], serials: list[int]) -> None:
    """The store holds exactly the accepted submissions, and the commands' serials increase
    with the time they were accepted (no command of a deposed leader squeezed in)."""
    async with await open_store(store_url) as store:
        total = (await store.tasks.page(per_page=1)).total
        commands = await store.recent_commands(limit=1000)
    assert total == len(accepted), (total, accepted)
    rows = sorted((row.serial, row.created) for row, _ in commands)
    assert [serial for serial, _ in rows] == sorted(set(serials)), (rows, serials)
    created = [c for _, c in rows]
    assert created == sorted(created), rows


async def test_a_leader_cut_from_the_store_steps_down_and_a_standby_takes_over(
    config: Config, group: Controllers, store_url: str, token: str
) -> None:
    proxy = proxy_to(store_url)
    group.stores[0] = proxied(store_url, proxy)
    node = None
    try:
        group.start(0)
        first = await role(group, 0, "leader", scaled(30))
        group.start(1)
        await role(group, 1, "standby", scaled(30))
        node = await start_task_node(config, "w1")
        async with AsyncController(group.urls, token, timeout=scaled(20)) as api:
            await offered(api, "add", scaled(30))
            accepted = [await api.queue_task("add", {"a": i, "b": 1}) for i in range(3)]
            serials = [await pinged(api, scaled(20))]

            proxy.cut("blackhole")
            cut = time.monotonic()
            # Calls that reach the cut leader: it cannot store them, and must not later.
            pending = [
                asyncio.create_task(queue_raw(group.urls[0], token, 100 + i)) for i in range(3)
            ]
            second = await role(group, 1, "leader", scaled(LEASE + 20))
            took = time.monotonic() - cut
            assert second["epoch"] == first["epoch"] + 1, (first, second)
            assert took <= scaled(LEASE + 2), took

            async def stepped_down() -> bool:
                return (await group.health(0)).get("role") != "leader"

            await eventually(stepped_down, scaled(LEASE + 10))

            # A client given both addresses carries on at the new leader.
            await offered(api, "add", scaled(30))
            accepted += [await api.queue_task("add", {"a": i, "b": 1}) for i in range(3, 6)]
            serials.append(await pinged(api, scaled(20)))
            assert api.address == group.urls[1]

            # The silent partition turns into refused connections (a firewall's REJECT): the
            # old leader's teardown, which waits to learn whether its write in flight landed,
            # ends; serving again as a standby, it cannot open the store: it waits for it
            # and tries again, it does not exit.
            proxy.cut("reset")
            log = group.logs / "controller-0.log"

            async def failed_to_restart() -> bool:
                return "could not serve again as a standby" in log.read_text()

            await eventually(failed_to_restart, scaled(40))
            proxy.restore()
            again = await role(group, 0, "standby", scaled(40))  # the same process, a standby
            assert again["leader"] == second["leader"], (again, second)
            assert group.procs[0] is not None and group.procs[0].poll() is None
            for outcome in await asyncio.gather(*pending, return_exceptions=True):
                # Refused, or the connection dropped as it stepped down: never accepted.
                if not isinstance(outcome, BaseException):
                    assert outcome[0] != 200, outcome
            for i, task_id in enumerate(accepted):
                assert (await api.wait(task_id, timeout=scaled(30))).result == i % 6 + 1
            print(f"takeover {took:.2f}s after the cut")
    finally:
        proxy.close()
        if node is not None:
            await node.stop()
    await check_store(store_url, accepted, serials)
    async with await open_store(store_url) as store:
        lease = await store.lease.read()
    assert lease.epoch == second["epoch"] and lease.holder == second["leader"]


async def test_a_leader_cut_from_the_bus_lets_the_lease_go_to_a_standby_that_has_it(
    config: Config, group: Controllers, broker: EmbeddedBroker, store_url: str, token: str
) -> None:
    proxy = proxy_to(broker.url)
    group.buses[0] = proxied(broker.url, proxy)
    node = None
    try:
        group.start(0)
        first = await role(group, 0, "leader", scaled(30))
        group.start(1)
        await role(group, 1, "standby", scaled(30))
        node = await start_task_node(config, "w1")
        async with AsyncController(group.urls, token, timeout=scaled(20)) as api:
            await offered(api, "add", scaled(30))
            accepted = [await api.queue_task("add", {"a": 0, "b": 1})]
            serials = [await pinged(api, scaled(20))]

            proxy.cut("blackhole")
            cut = time.monotonic()
            # The cut leader still has its store: what it accepts now is kept, and runs once
            # a leader that reaches the node has taken over.
            accepted.append(await api.queue_task("add", {"a": 1, "b": 1}))
            during = await api.send_command(["*"], "command", "ping")
            serials.append(during.serial)
            second = await role(group, 1, "leader", scaled(LEASE + 20))
            took = time.monotonic() - cut
            assert second["epoch"] == first["epoch"] + 1, (first, second)
            assert took <= scaled(LEASE + 2), took
            assert (await group.health(0)).get("role") != "leader"

            await offered(api, "add", scaled(30))
            accepted += [await api.queue_task("add", {"a": i, "b": 1}) for i in range(2, 4)]
            serials.append(await pinged(api, scaled(20)))
            assert api.address == group.urls[1]

            async def delivered() -> bool:  # the command accepted by the cut leader
                view = await api.command_detail(during.serial)
                return bool(view.outcomes) and all(
                    o.state == CommandState.DONE for o in view.outcomes
                )

            await eventually(delivered, scaled(30), ignoring=(CorralError,))
            for i, task_id in enumerate(accepted):
                assert (await api.wait(task_id, timeout=scaled(30))).result == i + 1

            proxy.restore()
            again = await role(group, 0, "standby", scaled(40))  # the same process, a standby
            assert again["leader"] == second["leader"], (again, second)
            # Deaf, the cut leader took the node's silence for its own, not the node's.
            said = (group.logs / "controller-0.log").read_text()
            assert "DOWN deferred" in said and '"node down"' not in said
            print(f"takeover {took:.2f}s after the cut")
    finally:
        proxy.close()
        if node is not None:
            await node.stop()
    await check_store(store_url, accepted, serials)
