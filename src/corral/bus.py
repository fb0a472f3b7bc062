"""Connecting to NATS with the right credential, TLS and inbox, and translating its errors.

Every corral process connects through :func:`connect`. It waits for the bus when asked (a node
started before the server), reconnects forever once connected, and turns nats-py's exceptions
into corral's: an authorization failure is an :class:`~corral.errors.AuthError` saying the
credential was refused, an unreachable server a :class:`~corral.errors.BusUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials

from corral import pki, subjects, wire
from corral.config import Config
from corral.errors import (
    AuthError,
    BusUnavailable,
    ConfigError,
    ControllerUnavailable,
    CorralError,
    Timeout,
)

__all__ = ["NATS", "RoundTrip", "StampedNATS", "connect", "gather_agents", "request"]

log = logging.getLogger("corral.bus")


class _QuietTLSClose(logging.Filter):
    """Drop asyncio's harmless warning when a TLS peer closes (every NATS-over-TLS close)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


logging.getLogger("asyncio").addFilter(_QuietTLSClose())


class StampedNATS(NATS):
    """A connection that adds :attr:`stamp` to the headers of every corral message it
    publishes (those sent with :data:`corral.wire.HEADERS`): the controller's fencing epoch
    (:data:`corral.wire.EPOCH_HEADER`), set in one place so that no message can forget it."""

    #: headers added to every corral message published
    stamp: dict[str, str]

    def __init__(self) -> None:
        super().__init__()
        self.stamp = {}

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publish as nats-py does, with :attr:`stamp` added to a corral message's headers."""
        if headers is not None and self.stamp and wire.PROTO_HEADER in headers:
            headers = {**headers, **self.stamp}
        await super().publish(subject, payload, reply, headers)


class RoundTrip:
    """Whether the server answers: a PING and its PONG, within a timeout.

    Not ``nc.flush(timeout)``: that cancels its PONG's future when it times out, and the late
    PONG then fails nats-py's read loop (``InvalidStateError``), which reconnects. Here a
    ping that outlives the timeout is left to finish (and awaited again by the next call); a
    reconnect, which forgets the pings in flight, starts a new one.

    Args:
        nc: The connection to check.
    """

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._ping: asyncio.Task[None] | None = None
        self._reconnects = -1

    async def __call__(self, timeout: float) -> None:
        """Return once the server answered a PING.

        Raises:
            TimeoutError: no answer within ``timeout`` seconds.
            nats.errors.Error: the connection is closed.
        """
        reconnects = self.nc.stats["reconnects"]
        if self._ping is None or self._ping.done() or reconnects != self._reconnects:
            if self._ping is not None:
                self._ping.cancel()  # forgotten by the reconnect: never answered
            self._reconnects = reconnects
            self._ping = asyncio.create_task(self.nc.flush(timeout=3600), name="bus-ping")
        await asyncio.wait_for(asyncio.shield(self._ping), timeout)

    def close(self) -> None:
        """Forget the ping in flight (the connection is being closed).

        It is left to finish, not cancelled: cancelling it cancels its PONG's future, and a
        PONG still on its way then fails nats-py's read loop, so the flushes of the close that
        follows time out (a controller's stop waited 10 s for one and failed).
        """
        if self._ping is not None:
            self._ping.add_done_callback(_retrieved)
            self._ping = None


def _retrieved(task: asyncio.Task[None]) -> None:
    """Read a forgotten ping's outcome (a closed connection's error is expected)."""
    if not task.cancelled():
        task.exception()


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or "revoked" in text


async def connect(
    config: Config,
    role: str,
    *,
    creds: Path | None = None,
    inbox_prefix: str | None = None,
    wait: float = 0.0,
    closed_cb: Callable[[], Awaitable[None]] | None = None,
    name: str | None = None,
    client: Callable[[], NATS] = NATS,
) -> NATS:
    """Connect to the bus as ``role``.

    Args:
        config: where the bus is and how to trust it.
        role: ``controller``, ``admin``, ``system`` or ``node-<name>``; picks the default
            credentials file in ``<data_dir>/auth``.
        creds: an explicit credentials file (overrides the role's default).
        inbox_prefix: reply-inbox prefix (nodes may only subscribe to their own).
        wait: keep trying for this many seconds while the server is unreachable.
        closed_cb: called when the connection is closed for good (e.g. credential revoked).
        name: connection name shown in NATS monitoring.
        client: makes the client to connect (a :class:`StampedNATS`, say).

    Returns:
        A connected nats-py client.

    Raises:
        ConfigError: the credentials or CA file is missing.
        AuthError: the server refused the credential.
        BusUnavailable: the server could not be reached within ``wait``.
    """
    creds_path = creds or config.creds_path(role)
    if not creds_path.exists():
        raise ConfigError(
            f"credentials file {creds_path} not found: `corral init` makes the controller's and "
            "admin's, `corral enroll NAME` a node's; pass --creds FILE"
        )
    ca = config.ca_path()
    options: dict[str, Any] = {
        # Several URLs (commas) are the servers of one NATS cluster: nats-py connects to one
        # and moves to another when it fails (and learns the others from the servers).
        "servers": [url.strip() for url in config.bus_url.split(",") if url.strip()],
        # Read once here: nats-py reads a creds path one byte per system call.
        "user_credentials": RawCredentials(creds_path.read_text()),
        "name": name or f"corral-{role}",
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        # nats-py retries a failed *first* connect forever when reconnecting is allowed (or
        # attempts are unlimited), even on an authorization error; we retry ourselves below
        # and switch to reconnecting forever once connected.
        "allow_reconnect": False,
        "error_cb": _log_error,
    }
    if ca is not None:
        options["tls"] = _tls_context(ca)
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if closed_cb is not None:
        options["closed_cb"] = closed_cb
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            nc = client()
            await nc.connect(**options)
        except Exception as exc:  # nats-py raises bare Exception subclasses of many kinds
            if _is_auth_error(exc):
                raise AuthError(
                    f"the bus at {config.bus_url} refused credential {creds_path}: it is not "
                    "enrolled with this controller's authority, or it was revoked. Ask the "
                    "operator for a new one (`corral enroll NAME`)"
                ) from None
            if time.monotonic() >= deadline:
                raise BusUnavailable(
                    f"cannot reach the bus at {config.bus_url}: {exc or type(exc).__name__}. "
                    "Is the controller's nats-server running (`corral up` / `corral controller`)?"
                ) from None
            if not announced:
                log.info("waiting for the bus", extra={"url": config.bus_url})
                announced = True
            await asyncio.sleep(0.5)
            continue
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        return nc


@functools.lru_cache(maxsize=8)
def _tls_context(ca: Path) -> ssl.SSLContext:
    """One TLS context per CA file per process (building one costs more than a handshake)."""
    return pki.client_context(ca)


_last_logged: dict[str, float] = {}


async def _log_error(exc: Exception) -> None:
    if isinstance(exc, nats.errors.SlowConsumerError):
        text = f"slow consumer: messages dropped on {exc.subject}"
    elif isinstance(exc, nats.errors.StaleConnectionError | asyncio.CancelledError):
        return
    else:
        text = f"bus error: {exc}"
    # The same error repeats on every reconnect attempt: say it once every 30 s.
    now = time.monotonic()
    if now - _last_logged.get(text, -1e9) >= 30.0:
        _last_logged[text] = now
        log.warning(text)


async def request(
    nc: NATS,
    subject: str,
    msg: msgspec.Struct,
    reply_type: Any,
    *,
    timeout: float = 5.0,
) -> Any:
    """Send ``msg`` to the controller on ``subject`` and decode its reply.

    Raises:
        ControllerUnavailable: nobody listens on ``subject`` (no controller is running).
        Timeout: the controller did not answer within ``timeout``.
        Refused: the controller answered with an error.
    """
    try:
        reply = await nc.request(subject, wire.encode(msg), timeout=timeout, headers=wire.HEADERS)
    except nats.errors.NoRespondersError:
        raise ControllerUnavailable(
            f"no controller answers on {subject}: start one with `corral controller` "
            "(or `corral up`)"
        ) from None
    except nats.errors.TimeoutError:
        raise Timeout(f"the controller did not answer {subject} within {timeout}s") from None
    return wire.decode_reply(reply.data, reply_type, reply.headers)


async def gather_agents(nc: NATS, wait: float = 0.5) -> list[wire.AgentInfo]:
    """Ask every agent what it is; return those that answer within ``wait`` seconds."""
    inbox = nc.new_inbox()
    found: list[wire.AgentInfo] = []

    async def collect(msg: Any) -> None:
        with contextlib.suppress(CorralError):
            found.append(wire.decode(msg.data, wire.AgentInfo, msg.headers))

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(
            subjects.AGENTS_INFO,
            wire.encode(wire.AgentInfoRequest()),
            reply=inbox,
            headers=wire.HEADERS,
        )
        await asyncio.sleep(wait)  # a broadcast has no "last reply": listen for a while
    finally:
        await sub.unsubscribe()
    return sorted(found, key=lambda a: (a.name, a.host, a.pid))
