"""The client's HTTP transport (httpx) against small real servers: keep-alive, a closed idle
connection, chunked and close-delimited replies, an unreachable server, a dropped call that
changes state (never sent twice) next to a read (sent again); several addresses: the leader
followed, a refusing address skipped, a leader not given never called."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from conftest import free_port
from corral import AsyncController
from corral.errors import Disconnected, NotLeader, RemoteError

Reply = Callable[[int], bytes]
TOKEN = "crl_0123456789ab_" + "s" * 43  # well-formed; these servers never check it


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Reply, bool], Awaitable[tuple[str, list[int]]]]]:
    """Start a server answering every request with ``reply(n)``; ``close`` after each."""
    servers: list[asyncio.Server] = []

    async def start(reply: Reply, close: bool) -> tuple[str, list[int]]:
        seen: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(0)
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                length = [
                    int(line.split(b":")[1]) for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ]  # fmt: skip
                await reader.readexactly(length[0] if length else 0)
                seen[-1] += 1
                writer.write(reply(sum(seen)))
                await writer.drain()
                if close:
                    break
            writer.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}", seen

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_keep_alive_reuses_one_connection(server) -> None:  # type: ignore[no-untyped-def]
    url, seen = await server(lambda n: ok(b"[%d]" % n), False)
    async with AsyncController(url, TOKEN) as c:
        assert [await c.call("f") for _ in range(3)] == [[1], [2], [3]]
    assert seen == [3]  # three requests, one connection


async def test_a_connection_the_server_closed_is_replaced(server) -> None:  # type: ignore[no-untyped-def]
    # A read is safe to send again on a new connection (a POST that changes state is not:
    # tests/test_idempotency.py).
    url, seen = await server(lambda n: ok(b"%d" % n), True)
    async with AsyncController(url, TOKEN) as c:
        assert await c.call("list_queue") == 1
        assert await c.call("list_queue") == 2
    assert seen == [1, 1]


async def test_chunked_and_close_delimited_replies(server) -> None:  # type: ignore[no-untyped-def]
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n"
    )
    url, _ = await server(lambda n: chunked, False)
    async with AsyncController(url, TOKEN) as c:
        assert await c.call("f") == [1, 2]
    url, _ = await server(lambda n: b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n[7]", True)
    async with AsyncController(url, TOKEN) as c:
        assert await c.call("f") == [7]


async def test_error_replies_and_an_unreachable_server(server) -> None:  # type: ignore[no-untyped-def]
    body = b'{"code": -3, "error": "no"}'
    url, _ = await server(lambda n: ok(body).replace(b"200 OK", b"400 Bad Request"), False)
    async with AsyncController(url, TOKEN) as c:
        with pytest.raises(RemoteError, match="no"):
            await c.call("f")
    async with AsyncController(f"http://127.0.0.1:{free_port()}", TOKEN) as c:
        with pytest.raises(Disconnected, match="cannot reach"):
            await c.call("f")


async def test_a_call_that_changes_state_is_never_sent_twice(server) -> None:  # type: ignore[no-untyped-def]
    # The server reads each request and drops the connection without a reply.
    url, seen = await server(lambda n: b"", True)
    async with AsyncController(url, TOKEN, timeout=1.0) as c:
        with pytest.raises(Disconnected):
            await c.call("node_edit", values={"id": "n1"})
        assert sum(seen) == 1  # sent once
        with pytest.raises(Disconnected):
            await c.call("list_queue")
        assert sum(seen) > 2  # a read is sent again (until the client's timeout)


def not_leader(leader: str) -> bytes:
    body = b'{"code": -2, "error": "a standby", "kind": "NotLeader", "leader": "%s"}' % (
        leader.encode()
    )
    return ok(body).replace(b"200 OK", b"503 Service Unavailable")


async def test_several_addresses_skip_one_that_refuses_connections(server) -> None:  # type: ignore[no-untyped-def]
    url, seen = await server(lambda n: ok(b"[%d]" % n), False)
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncController(f"{dead},{url}", TOKEN) as c:
        # Refused: nothing was sent, so even a call that changes state goes on to the next.
        assert await c.call("node_edit", values={"id": "n1"}) == [1]
        assert c.address == url  # and the next calls go straight there
        assert await c.call("node_edit", values={"id": "n1"}) == [2]
    assert seen == [2]
    async with AsyncController([dead, f"http://127.0.0.1:{free_port()}"], TOKEN) as c:
        with pytest.raises(Disconnected, match="none of .* answers"):
            await c.call("node_edit", values={"id": "n1"})


async def test_a_standby_sends_every_call_on_to_the_leader(server) -> None:  # type: ignore[no-untyped-def]
    leader, at_leader = await server(lambda n: ok(b"[%d]" % n), False)
    standby, at_standby = await server(lambda n: not_leader(leader), False)
    async with AsyncController([standby, leader], TOKEN) as c:
        assert await c.call("node_edit", values={"id": "n1"}) == [1]
        assert c.address == leader
        assert await c.call("list_queue") == [2]
    assert (sum(at_standby), sum(at_leader)) == (1, 2)


async def test_a_leader_not_given_is_never_called(server) -> None:  # type: ignore[no-untyped-def]
    # The token goes only to the addresses given, whatever a server names as its leader.
    elsewhere, at_elsewhere = await server(lambda n: ok(b"[0]"), False)
    standby, at_standby = await server(lambda n: not_leader(elsewhere), False)
    async with AsyncController(standby, TOKEN, timeout=1.0) as c:
        with pytest.raises(NotLeader) as raised:
            await c.call("node_edit", values={"id": "n1"})
        assert raised.value.leader == elsewhere
    assert sum(at_standby) == 1 and sum(at_elsewhere) == 0


async def test_a_dropped_call_that_changes_state_is_not_sent_to_the_next(server) -> None:  # type: ignore[no-untyped-def]
    dropping, at_dropping = await server(lambda n: b"", True)
    other, at_other = await server(lambda n: ok(b"[%d]" % n), False)
    async with AsyncController([dropping, other], TOKEN, timeout=2.0) as c:
        with pytest.raises(Disconnected):
            await c.call("node_edit", values={"id": "n1"})
        assert (sum(at_dropping), sum(at_other)) == (1, 0)  # it may have run: not sent again
        assert c.address == other  # the next call goes elsewhere
        assert await c.call("list_queue") == [1]
