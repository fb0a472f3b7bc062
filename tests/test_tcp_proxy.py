"""The tests' cuttable TCP proxy (tests/tcp_proxy.py) against a real echo server: it forwards,
a blackhole holds traffic (and new connections) until restored, a reset breaks connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from conftest import scaled
from tcp_proxy import TcpProxy


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    """An echo server's port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy reset it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
def proxy(echo: int) -> Iterator[TcpProxy]:
    """A proxy to the echo server."""
    p = TcpProxy("127.0.0.1", echo).start()
    try:
        yield p
    finally:
        p.close()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await reader.readexactly(len(data))


async def test_a_blackhole_holds_traffic_until_restored(proxy: TcpProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(roundtrip(reader, writer, b"one"), scaled(5)) == b"one"
    proxy.cut("blackhole")
    writer.write(b"two")
    echoed = asyncio.create_task(reader.readexactly(3))
    done, _ = await asyncio.wait({echoed}, timeout=0.5)  # silence: nothing comes back
    assert not done
    late_reader, late_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    late = asyncio.create_task(roundtrip(late_reader, late_writer, b"new"))
    done, _ = await asyncio.wait({late}, timeout=0.3)  # a new connection is held too
    assert not done
    proxy.restore()
    assert await asyncio.wait_for(echoed, scaled(5)) == b"two"
    assert await asyncio.wait_for(late, scaled(5)) == b"new"
    for w in (writer, late_writer):
        w.close()


async def test_a_reset_breaks_open_and_new_connections_until_restored(proxy: TcpProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(roundtrip(reader, writer, b"one"), scaled(5)) == b"one"
    proxy.cut("reset")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(roundtrip(reader, writer, b"two"), scaled(5))

    async def new() -> bytes:  # reset as it connects, or at once after
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        return await roundtrip(reader, writer, b"new")

    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(new(), scaled(5))
    proxy.restore()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await asyncio.wait_for(roundtrip(reader, writer, b"back"), scaled(5)) == b"back"
    writer.close()
