"""Blocking twins of the async API, for scripts, Django views and notebooks.

A thin wrapper, never a second implementation: each call is the async method run on one
background event loop that this module owns (a daemon thread started on first use)::

    from corral.sync import Client
    with Client.connect(config) as client:
        for node in client.nodes():
            print(node.name, node.status)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from corral import client as _async
from corral import group as _group
from corral import wire
from corral.config import Config
from corral.outcomes import CommandHandle

__all__ = ["Client", "Group", "call"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _portal() -> asyncio.AbstractEventLoop:
    """The background loop, started once per process."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="corral-sync", daemon=True).start()
            _loop = loop
        return _loop


def call(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and return its result (or raise its error).

    Raises:
        RuntimeError: called from inside the background loop itself (that would deadlock).
    """
    loop = _portal()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError("corral.sync called from its own event loop; await the async API")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


class Client:
    """Blocking :class:`corral.Client`. Create with :meth:`connect`."""

    def __init__(self, inner: _async.Client) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner).replace("<Client", "<sync.Client", 1)

    @classmethod
    def connect(cls, config: Config, *, creds: Path | None = None, wait: float = 0.0) -> Client:
        """Connect as the admin role; see :meth:`corral.Client.connect`.

        Raises:
            ConfigError, AuthError, BusUnavailable: as the async twin.
        """
        return cls(call(_async.Client.connect(config, creds=creds, wait=wait)))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        call(self._inner.close())

    def nodes(self) -> list[wire.NodeView]:
        """Every node in the registry; see :meth:`corral.Client.nodes`.

        Raises:
            ControllerUnavailable, Timeout: as the async twin.
        """
        return call(self._inner.nodes())

    def stats(self) -> wire.StatsReply:
        """The controller's counters; see :meth:`corral.Client.stats`.

        Raises:
            ControllerUnavailable, Timeout: as the async twin.
        """
        return call(self._inner.stats())

    def wait_for(
        self, predicate: Callable[[list[wire.NodeView]], bool], timeout: float
    ) -> list[wire.NodeView]:
        """Block until ``predicate(nodes)`` holds; see :meth:`corral.Client.wait_for`.

        Raises:
            Timeout: it did not hold within ``timeout`` seconds.
        """
        return call(self._inner.wait_for(predicate, timeout))

    def command(
        self,
        targets: str | Sequence[str],
        kind: str = "command",
        name: str = "",
        *,
        args: dict[str, Any] | None = None,
        data: bytes = b"",
        timeout: float = 60.0,
        retire_after: float | None = None,
        wait: float = 60.0,
    ) -> CommandHandle:
        """Send a command and block until every node's outcome is settled.

        See :meth:`corral.Client.command` for the arguments. Returns the handle, settled:
        ``ok``, ``results``, ``failed``, ``outcomes``.

        Raises:
            Timeout: not every node settled within ``wait`` seconds.
            UsageError, Refused, OversizedMessage, AuthError, ControllerUnavailable: as the
                async twin.
        """

        async def send_and_wait() -> CommandHandle:
            handle = await self._inner.command(
                targets,
                kind,
                name,
                args=args,
                data=data,
                timeout=timeout,
                retire_after=retire_after,
            )
            try:
                return await handle.wait(wait)
            finally:
                await handle.close()

        return call(send_and_wait())

    def send(self, targets: str | Sequence[str], command: str, /, **args: Any) -> CommandHandle:
        """COMMAND ``command`` with ``args`` on the targets, waiting up to 60 s for outcomes.

        Raises:
            Timeout, UsageError, Refused, ControllerUnavailable: as :meth:`command`.
        """
        return self.command(targets, "command", command, args=args)

    def commands(self, limit: int = 50, before: int | None = None) -> list[wire.CommandView]:
        """Recent commands, newest first; see :meth:`corral.Client.commands`.

        Raises:
            ControllerUnavailable, Timeout: as the async twin.
        """
        return call(self._inner.commands(limit, before))


class Group:
    """Blocking :class:`corral.group.Group`, for scripts. Create with :meth:`join`."""

    def __init__(self, inner: _group.Group) -> None:
        self._inner = inner

    def __repr__(self) -> str:
        return repr(self._inner).replace("<Group", "<sync.Group", 1)

    @property
    def rank(self) -> int:
        """This member's rank."""
        return self._inner.rank

    @property
    def size(self) -> int:
        """How many members the group has."""
        return self._inner.size

    @classmethod
    def join(
        cls,
        name: str | None = None,
        size: int | None = None,
        rank: int | None = None,
        **options: Any,
    ) -> Group:
        """Join and wait for the group to form; see :meth:`corral.group.Group.join`.

        Raises:
            UsageError, GroupTimeout, GroupRefused, ControllerUnavailable: as the async twin.
        """
        return cls(call(_group.Group.join(name, size, rank, **options)))

    def barrier(self, timeout: float = 30.0) -> _group.Reached:
        """See :meth:`corral.group.Group.barrier`.

        Raises:
            GroupTimeout, GroupRefused: as the async twin.
        """
        return call(self._inner.barrier(timeout))

    def collect(self, value: Any, timeout: float = 30.0) -> list[Any] | None:
        """See :meth:`corral.group.Group.collect`.

        Raises:
            MalformedMessage, GroupTimeout, GroupRefused: as the async twin.
        """
        return call(self._inner.collect(value, timeout))

    def distribute(self, value: Any = None, timeout: float = 30.0) -> Any:
        """See :meth:`corral.group.Group.distribute`.

        Raises:
            MalformedMessage, GroupTimeout, GroupRefused: as the async twin.
        """
        return call(self._inner.distribute(value, timeout))

    def write_data_to(self, rank: int, value: Any, timeout: float = 30.0) -> None:
        """See :meth:`corral.group.Group.write_data_to`.

        Raises:
            UsageError, GroupRefused, MalformedMessage, GroupTimeout: as the async twin.
        """
        call(self._inner.write_data_to(rank, value, timeout))

    def read_data_from(self, rank: int, timeout: float = 30.0) -> Any:
        """See :meth:`corral.group.Group.read_data_from`.

        Raises:
            UsageError, GroupRefused, GroupTimeout: as the async twin.
        """
        return call(self._inner.read_data_from(rank, timeout))

    def info(self, rank: int | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """See :meth:`corral.group.Group.info`.

        Raises:
            UsageError, GroupTimeout: as the async twin.
        """
        return call(self._inner.info(rank, timeout))

    def leave(self) -> None:
        """Leave the group."""
        call(self._inner.leave())

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *_: object) -> None:
        self.leave()
