"""Blocking twins of the async API, for scripts, Django views and notebooks.

A thin wrapper, never a second implementation: each call is the async method run on one
background event loop that this module owns (a daemon thread started on first use), and
:func:`twin` derives every blocking method of :class:`Client` from the async one::

    from corral.sync import Client
    with Client("nats://127.0.0.1:4222", creds="admin.creds") as client:
        task_id = client.queue_task("MyTask", foo="bar")
        for node in client.nodes():
            print(node.name, node.status)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from corral import client as _async
from corral import group as _group
from corral import loops
from corral._client_functions import ApiFunctions
from corral.client import ClassOrInstance
from corral.config import Config
from corral.errors import UsageError
from corral.outcomes import CommandHandle

__all__ = ["Client", "Group", "call", "twin"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _portal() -> asyncio.AbstractEventLoop:
    """The background loop, started once per process."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = loops.new_event_loop()  # uvloop where it is installed
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


async def _anext(iterator: AsyncIterator[T]) -> T:
    return await anext(iterator)


class _Iterator(Iterator[Any]):
    """A blocking iterator over an async iterator that lives on the portal loop."""

    def __init__(self, inner: AsyncIterator[Any]) -> None:
        self._inner = inner

    def __next__(self) -> Any:
        try:
            return call(_anext(self._inner))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """End the iteration (and its subscription)."""
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            call(aclose())


def _blocking(name: str, method: Callable[..., Any], owner: str) -> Callable[..., Any]:
    """The blocking twin of coroutine (or async generator) method ``name``."""
    agen = inspect.isasyncgenfunction(method)

    def blocking(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            started = getattr(self._inner, name)(*args, **kwargs)  # binds, runs nothing yet
        except TypeError as exc:  # say it of the class the caller used
            raise TypeError(
                str(exc).replace(method.__qualname__, f"{type(self).__name__}.{name}")
            ) from None
        return _Iterator(started) if agen else call(started)

    blocking.__name__ = name
    blocking.__qualname__ = f"{owner}.{name}"
    source = f"{method.__module__}.{method.__qualname__}"
    blocking.__doc__ = f"Blocking :meth:`{source}`.\n\n{method.__doc__ or ''}"
    with contextlib.suppress(TypeError, ValueError):
        blocking.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return blocking


def twin(async_cls: type[Any]) -> Callable[[type[T]], type[T]]:
    """Give the decorated class a blocking method for every public coroutine (and async
    iterator) method of ``async_cls`` it does not define itself: the one way corral derives
    its blocking API. The class keeps the async object in ``self._inner``."""

    def decorate(cls: type[T]) -> type[T]:
        for name, method in inspect.getmembers(async_cls):
            if name.startswith("_") or name in cls.__dict__:
                continue
            if inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method):
                setattr(cls, name, _blocking(name, method, cls.__name__))
        return cls

    return decorate


@twin(_async.Client)
class Client:
    """Blocking :class:`corral.Client`: the same methods and arguments, each call run on the
    background loop. Create it like the async one (an address) or with :meth:`connect`.

    Methods returning an async iterator (``events``) return a blocking one here;
    :meth:`command` and :meth:`send` block until every node's outcome is settled.

    Raises:
        UsageError, NoKey, AuthenticationFailed: as :class:`corral.Client`.
    """

    _inner: _async.Client

    def __init__(self, address: str | Sequence[str] | None = None, **options: Any) -> None:
        self._inner = _async.Client(address, **options)

    def __repr__(self) -> str:
        return repr(self._inner).replace("<Client", f"<{type(self).__name__}", 1)

    def __getattr__(self, name: str) -> Any:
        # Plain attributes of the async client (address, url, timeout, config, identity);
        # methods the twin does not have stay AttributeErrors.
        missing = AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name.startswith("_") or callable(getattr(type(self._inner), name, None)):
            raise missing
        try:
            return getattr(self._inner, name)
        except AttributeError:
            raise missing from None

    @classmethod
    def _of(cls, inner: _async.Client) -> Client:
        self = cls.__new__(cls)
        self._inner = inner
        return self

    @classmethod
    def _connect_to(
        cls, config: Config, *, creds: Path | None = None, wait: float = 0.0, timeout: float = 5.0
    ) -> Client:
        """Connect to the configured bus now; see :meth:`corral.Client.connect`.

        Raises:
            ConfigError, AuthError, BusUnavailable: as the async twin.
        """
        return cls._of(call(_async.Client.connect(config, creds=creds, wait=wait, timeout=timeout)))

    def _announce(self) -> dict[str, int]:
        """The API function ``connect``: the controller announces itself now."""
        return call(ApiFunctions.connect(self._inner))

    if TYPE_CHECKING:  # typed as the classmethod, the common use

        @classmethod
        def connect(
            cls,
            config: Config,
            *,
            creds: Path | None = None,
            wait: float = 0.0,
            timeout: float = 5.0,
        ) -> Client: ...
    else:
        #: ``sync.Client.connect(config)`` connects; ``client.connect()`` is the API function.
        connect = ClassOrInstance(_connect_to, _announce)

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

    def open(self) -> Client:
        """Connect now (the bus; HTTP connects on the first call); see
        :meth:`corral.Client.open`.

        Raises:
            ConfigError, AuthError, BusUnavailable: as the async twin.
        """
        call(self._inner.open())
        return self

    def stream(self, node: str, stream: str, window: int = 100) -> Any:
        """Data streams are async only: use :meth:`corral.Client.stream`.

        Raises:
            UsageError: always.
        """
        raise UsageError("data streams are read with the async corral.Client (async with)")

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
