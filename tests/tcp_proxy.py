"""A TCP proxy for tests that can be cut: a controller reaches PostgreSQL or NATS only through
it, and the test partitions them.

The proxy runs an event loop of its own in a thread, so that a test's event loop blocked for a
moment (a ``proc.wait()``, a synchronous database call) never stalls the traffic it carries.

Two ways to cut (:meth:`TcpProxy.cut`):

* ``"blackhole"`` (a network partition): nothing is forwarded either way, on the open
  connections and on new ones (accepted, then held); the peers see silence, not an error,
  as across a dead switch. :meth:`TcpProxy.restore` heals it: what waited is delivered, as TCP
  would retransmit it, and held connections are then connected to the target.
* ``"reset"`` (a peer that went away): every open connection is reset, and new ones are reset
  as soon as accepted, until :meth:`TcpProxy.restore`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, Literal

__all__ = ["TcpProxy"]

Mode = Literal["blackhole", "reset"]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
    writer.transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``host:port`` until cut.

    Args:
        host: The target's host.
        port: The target's port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        #: the port the proxy listens on (set by :meth:`start`)
        self.port = 0
        #: how it is cut now (``None``: it forwards)
        self.mode: Mode | None = None
        #: connections accepted so far
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._open: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<TcpProxy :{self.port} -> {self.target[0]}:{self.target[1]} {self.mode or 'open'}>"

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> TcpProxy:
        """Listen on a free port of 127.0.0.1 (see :attr:`port`)."""
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self, mode: Mode = "blackhole") -> None:
        """Stop forwarding (see the module's documentation for the two modes)."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"mode {mode!r}: use 'blackhole' or 'reset'")
        self._run(self._cut(mode))

    async def _cut(self, mode: Mode) -> None:
        assert self._open is not None
        self.mode = mode
        self._open.clear()
        if mode == "reset":
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

    def restore(self) -> None:
        """Forward again: held connections carry on (what waited is delivered)."""
        self._run(self._restore())

    async def _restore(self) -> None:
        assert self._open is not None
        self.mode = None
        self._open.set()

    def close(self) -> None:
        """Close every connection and stop listening (the thread ends)."""
        if not self._thread.is_alive():
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10.0)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        self.accepted += 1
        if self.mode == "reset":
            _reset(writer)
            return
        self._writers.add(writer)
        try:
            await self._open.wait()  # blackholed: accepted, held until restored
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            self._writers.add(up_writer)
            pumps = [
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            ]
            self._tasks.update(pumps)
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in pumps:
                    task.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                self._tasks.difference_update(pumps)
                for w in (writer, up_writer):
                    w.close()
                self._writers.discard(up_writer)
        finally:
            self._writers.discard(writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        try:
            while True:
                await self._open.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await self._open.wait()  # read just as it was cut: held with the rest
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
