"""The bus round trip a controller watches (corral.bus.RoundTrip, issue #13), against a real
nats-server reached through a proxy the test cuts: it answers, times out across a silent
partition, and answers again once it heals, without the connection being reset by the late
PONG (nats-py's own ``flush(timeout)`` cancels the PONG's future, and a late PONG then fails
its read loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from conftest import scaled
from corral import bus
from corral.broker import EmbeddedBroker
from corral.config import Config
from tcp_proxy import TcpProxy


@pytest.fixture
async def proxied(
    config: Config, broker: EmbeddedBroker
) -> AsyncIterator[tuple[TcpProxy, bus.NATS]]:
    """A controller's bus connection that reaches the nats-server through a cuttable proxy."""
    host, port = broker.url.split("://", 1)[1].rsplit(":", 1)
    proxy = TcpProxy(host, int(port)).start()
    scheme = broker.url.split("://", 1)[0]
    nc = await bus.connect(
        msgspec.structs.replace(config, nats_url=f"{scheme}://127.0.0.1:{proxy.port}"),
        "controller",
        wait=scaled(10),
    )
    try:
        yield proxy, nc
    finally:
        await nc.close()
        proxy.close()


async def test_a_round_trip_times_out_across_a_partition_and_answers_once_healed(
    proxied: tuple[TcpProxy, bus.NATS],
) -> None:
    proxy, nc = proxied
    ping = bus.RoundTrip(nc)
    try:
        await ping(scaled(5))
        proxy.cut("blackhole")
        with pytest.raises(TimeoutError):
            await ping(0.5)
        with pytest.raises(TimeoutError):
            await ping(0.3)  # the same ping, still unanswered
        proxy.restore()
        await ping(scaled(5))
        await ping(scaled(5))
        assert nc.is_connected and nc.stats["reconnects"] == 0
    finally:
        ping.close()


async def test_closing_with_a_ping_in_flight_leaves_the_connection_working(
    proxied: tuple[TcpProxy, bus.NATS],
) -> None:
    """A controller's stop forgets the ping in flight; its PONG, arriving after, must not
    break the connection the stop still flushes (cancelling the ping did: 10 s, then an error)."""
    proxy, nc = proxied
    ping = bus.RoundTrip(nc)
    proxy.cut("blackhole")  # the PONG is held until the test lets it through
    with pytest.raises(TimeoutError):
        await ping(0.2)
    ping.close()  # the stop: the ping is still waiting for its PONG
    proxy.restore()  # ... which now arrives
    await nc.flush(timeout=scaled(5))  # the read loop lived through it
    assert nc.is_connected and nc.stats["reconnects"] == 0
