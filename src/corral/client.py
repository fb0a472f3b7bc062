"""``corral.Client``: the controller's API and the bus, over ``nats://`` or ``http(s)://``.

>>> async with Client("nats://127.0.0.1:4222", creds="admin.creds") as client:  # doctest: +SKIP
...     task_id = await client.queue_task("MyTask", foo="bar")
...     print((await client.wait(task_id)).result)
...     for node in await client.nodes():                    # bus only
...         print(node.name, node.status)

One client, two transports. Every controller API function (the table
:data:`corral.controller.functions.FUNCTIONS`) is a typed method that works over either: the
bus (NATS request/reply, msgpack; authenticated by the credential, the fast path) or HTTP
(JSON through httpx; authenticated by an API token, for firewalls and other languages).
What only the bus has — node events, data streams, ``wait_for``, agents, commands whose
handle follows outcomes live — raises :class:`~corral.errors.UsageError` on an HTTP client.
Failures raise the same exceptions over both. :mod:`corral.sync` has the blocking twin.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import msgspec

from corral import api_models as m
from corral import bus
from corral._client_bus import BusMethods
from corral._client_commands import Commands
from corral._client_functions import ApiFunctions
from corral._transport_bus import BusTransport
from corral.config import Config, load_config
from corral.errors import (
    Disconnected,
    FunctionNotFound,
    NoKey,
    RetryLater,
    UsageError,
)
from corral.tokens import load_token, read_token

if TYPE_CHECKING:
    from corral._transport_http import HttpTransport

__all__ = ["ATTEMPT", "ClassOrInstance", "Client", "split_addresses"]

#: seconds one attempt of a submission may take when the client has several controllers'
#: addresses, before it is sent again (with its key) to the next
ATTEMPT = 5.0

_BUS = ("nats", "tls")
_HTTP = ("http", "https")


def _token(token: str | None, config: Config | None) -> str:
    """An API token from ``token=``, ``CORRAL_API_TOKEN`` or the local admin token file."""
    env = os.environ.get("CORRAL_API_TOKEN")
    if token:
        found: str | None = load_token(token, "the token given (token= or --token)")
    elif env:
        found = load_token(env, "CORRAL_API_TOKEN")
    else:
        found = read_token(config or load_config()[0])
    if not found:
        raise NoKey(
            "no API token: pass token=..., set CORRAL_API_TOKEN, or create one with "
            "`corral token create --role operate` (or connect over nats:// with a credential)"
        )
    return found


def split_addresses(address: str | Sequence[str] | None) -> list[str]:
    """The addresses in ``address``: a list of them, or one string separated by commas."""
    if not address:
        return []
    parts = address.split(",") if isinstance(address, str) else list(address)
    return [part.strip() for part in parts if part.strip()]


def _scheme(addresses: list[str]) -> str:
    """The one scheme family of ``addresses`` (``nats`` for the bus's, ``http`` for HTTP's).

    Raises:
        UsageError: an unknown scheme, or bus and HTTP addresses mixed.
    """
    kinds = set()
    for one in addresses:
        scheme = one.partition("://")[0].lower()
        if scheme not in _BUS + _HTTP:
            raise UsageError(
                f"cannot connect to {one!r}: give nats://host:port or tls://host:port (the "
                "bus) or http(s)://host:port (the HTTP API)"
            )
        kinds.add("nats" if scheme in _BUS else "http")
    if len(kinds) > 1:
        raise UsageError(
            f"{', '.join(addresses)} mixes bus and HTTP addresses: give the servers of one "
            "NATS cluster, or the API URLs of the controllers"
        )
    return kinds.pop() if kinds else ""


class ClassOrInstance:
    """A name that means one thing on the class and another on an instance.

    ``Client.connect(config)`` (the class) connects to the bus, as it always has;
    ``client.connect()`` (an instance) is Pydra's API function of that name.
    """

    def __init__(self, on_class: Any, on_instance: Callable[..., Any]) -> None:
        self.on_class = on_class
        self.on_instance = on_instance
        self.__doc__ = on_class.__func__.__doc__ if hasattr(on_class, "__func__") else None

    def __get__(self, obj: Any, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self.on_class.__get__(owner, owner)
        return self.on_instance.__get__(obj, owner)


class Client(ApiFunctions, Commands, BusMethods):
    """The controller's API over the bus or HTTP, and the bus's events, streams and commands.

    Args:
        address: ``nats://host:port`` or ``tls://host:port`` (the bus), ``http(s)://host:port``
            (the HTTP API). Default: the configured bus (``bus_url``). Several addresses of
            one kind (a list, or one string with commas) fail over: bus URLs are the servers
            of one NATS cluster; HTTP URLs are the controllers of one fleet, and calls go to
            whichever leads (see docs/operations.md, "Several controllers").
        token: For HTTP: an API token or a file holding one; default ``CORRAL_API_TOKEN`` or
            the local admin token file.
        creds: For the bus: the credentials file (default ``<data_dir>/auth/admin.creds``).
        ca: For ``tls://``: the CA file to trust (default: the configured one).
        timeout: Seconds a call may take (a ``wait`` adds its own timeout).
        config: Configuration to take the defaults from (default: ``load_config()``).
        wait: For the bus: seconds to keep trying while it is unreachable, when connecting.

    Raises:
        UsageError: an address is neither ``nats://``, ``tls://`` nor ``http(s)://``, or
            bus and HTTP addresses are mixed.
        NoKey: HTTP without a token given or found.
        AuthenticationFailed: the token (or the file it names) is malformed.
    """

    def __init__(
        self,
        address: str | Sequence[str] | None = None,
        *,
        token: str | None = None,
        creds: str | Path | None = None,
        ca: str | Path | None = None,
        timeout: float = 30.0,
        config: Config | None = None,
        wait: float = 0.0,
    ) -> None:
        addresses = split_addresses(address)
        if not addresses or (config is None and not addresses[0].startswith(_HTTP)):
            config = config or load_config()[0]
        addresses = addresses or split_addresses(config.bus_url if config else "")
        scheme = _scheme(addresses)
        address = ",".join(addresses)
        self.timeout = timeout
        self.config = config or Config()
        self.transport: BusTransport | HttpTransport
        if scheme == "nats":
            assert config is not None
            if address != config.bus_url or ca is not None:
                ca_file = str(ca) if ca is not None else config.ca
                config = msgspec.structs.replace(config, nats_url=address, ca=ca_file)
                self.config = config
            path = Path(creds).expanduser() if creds is not None else None
            self.transport = BusTransport(config, path, timeout, wait=wait)
            self.identity = self.transport.identity
        elif scheme == "http":
            # httpx loads only for HTTP clients: nodes and bus clients import corral without it
            from corral._transport_http import HttpTransport

            self.transport = HttpTransport(addresses, _token(token, config), timeout)
            self.identity = "api"
        else:
            raise UsageError(
                f"cannot connect to {address!r}: give nats://host:port or tls://host:port (the "
                "bus) or http(s)://host:port (the HTTP API)"
            )
        #: who the audit log names for commands sent with :meth:`command` (bus)
        self.actor = f"{getpass.getuser()}@{socket.gethostname()} ({self.identity})"

    @property
    def address(self) -> str:
        """Where this client connects (``nats://...`` or ``http://...``)."""
        return self.transport.address

    @property
    def addresses(self) -> list[str]:
        """Every address given (several: the controllers of one fleet, or one NATS cluster's
        servers)."""
        transport = self.transport
        if isinstance(transport, BusTransport):
            return split_addresses(transport.address)
        return list(transport.addresses)

    @property
    def url(self) -> str:
        """The address (the HTTP client's old name for it)."""
        return self.transport.address

    def __repr__(self) -> str:
        state = ""
        if isinstance(self.transport, BusTransport):
            nc = self.transport.opened
            state = " connected" if nc is not None and nc.is_connected else " not connected"
        return f"<{type(self).__name__} {self.address}{state}>"

    @classmethod
    async def _connect_to(
        cls, config: Config, *, creds: Path | None = None, wait: float = 0.0, timeout: float = 5.0
    ) -> Client:
        """Connect to the configured bus now (the CLI's way in).

        Args:
            config: Where the bus is and how to trust it.
            creds: The credentials file (default ``<data_dir>/auth/admin.creds``).
            wait: Seconds to keep trying while the bus is unreachable.
            timeout: Seconds a request may take.

        Raises:
            ConfigError: no credentials file.
            AuthError: the credential was refused.
            BusUnavailable: the bus could not be reached.
        """
        client = cls(config.bus_url, creds=creds, config=config, wait=wait, timeout=timeout)
        await client.open()
        return client

    #: ``Client.connect(config)`` connects to the bus (the CLI's way in); on a client,
    #: ``client.connect()`` is the API function (the controller announces itself now).
    if TYPE_CHECKING:  # typed as the classmethod, the common use

        @classmethod
        async def connect(  # type: ignore[override]
            cls,
            config: Config,
            *,
            creds: Path | None = None,
            wait: float = 0.0,
            timeout: float = 5.0,
        ) -> Client: ...
    else:
        connect = ClassOrInstance(_connect_to, ApiFunctions.connect)

    async def open(self) -> Self:
        """Connect now (the bus; HTTP connects on the first call). Returns the client.

        Raises:
            ConfigError, AuthError, BusUnavailable: as :meth:`connect`.
        """
        if isinstance(self.transport, BusTransport):
            await self.transport.connection()
        return self

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        await self.transport.close()

    @property
    def nc(self) -> bus.NATS:
        """The open bus connection (bus clients, after :meth:`open`).

        Raises:
            UsageError: an HTTP client, or a bus client not yet connected.
        """
        transport = self._bus_transport("nc")
        nc = transport.opened
        if nc is None:
            raise UsageError("the client is not connected yet: `await client.open()` first")
        return nc

    def _bus_transport(self, method: str) -> BusTransport:
        if not isinstance(self.transport, BusTransport):
            raise UsageError(
                f"{method} needs the bus: connect over nats:// (corral.Client("
                f"'nats://host:4222', creds=...)); {self.address} is the HTTP API"
            )
        return self.transport

    async def _bus_connection(self, method: str) -> bus.NATS:
        return await self._bus_transport(method).connection()

    async def call(
        self, function: str, reply: Any = Any, call_timeout: float | None = None, /, **kwargs: Any
    ) -> Any:
        """Call API function ``function`` with keyword arguments; decode the reply as ``reply``.

        A submission (``queue_task``, ``queue_tasks``, ``run_task``, ``send_command``,
        ``execute_command``) carries an idempotency key: ``idempotency_key=`` or a new uuid4.
        While the controller cannot be reached or the connection drops, a submission or a
        read is sent again (with the same key, with backoff, within the client's timeout);
        the controller answers a repeated key with its first answer. Nothing else is sent
        twice. With several addresses, an attempt of a submission that is not answered
        within :data:`ATTEMPT` seconds is sent again, to the next (a paused leader holds it
        otherwise for the whole timeout).

        Args:
            function: The API function's name.
            reply: The type to decode the reply into.
            call_timeout: Seconds the call may take (default: the client's timeout).
            kwargs: The function's arguments (and ``idempotency_key`` for a submission).

        Raises:
            ControllerError: a subclass for the error code the controller answered with.
            IdempotencyKeyReused: the key was sent before with another request.
            Disconnected: the controller could not be reached.
            RetryLater: the controller kept saying "not yet" (a submission or a read is asked
                again as it says, within the client's timeout).
            Timeout: a ``wait`` ran out of time.
            UsageError: ``idempotency_key`` given to a call that is not a submission.
        """
        if not function.isidentifier():
            raise FunctionNotFound(f"{function!r} cannot name an API function", 404)
        key = kwargs.pop("idempotency_key", None)
        timeout = call_timeout or self.timeout
        if function in m.KEYED:
            key = key or str(uuid.uuid4())
        elif key is not None:
            raise UsageError(f"{function} takes no idempotency_key: only submissions do")
        if key is None and function not in m.READS:
            return await self.transport.call(function, kwargs, reply, timeout, None)
        deadline = time.monotonic() + timeout  # call_timeout bounds the whole call
        delay = 0.05
        if key is not None and call_timeout is None and len(self.addresses) > 1:
            # A controller that does not answer a submission soon may be paused or cut off
            # while another takes over: send it again (same key) elsewhere.
            timeout = min(timeout, ATTEMPT)
        while True:
            wait = delay
            try:
                return await self.transport.call(function, kwargs, reply, timeout, key)
            except Disconnected:
                # Nothing or everything was done: the key makes the next attempt safe.
                if time.monotonic() + delay >= deadline:
                    raise
            except RetryLater as exc:
                # Refused without doing anything (a controller just started or took over):
                # asked again when it says.
                wait = max(exc.retry_after, delay)
                if time.monotonic() + wait >= deadline:
                    raise
            await asyncio.sleep(wait)
            delay = min(delay * 2, 1.0)
