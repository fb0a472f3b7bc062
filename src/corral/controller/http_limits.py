"""Limits in front of the HTTP API and the dashboard: body size, and per-token overload.

Theory of operation: :class:`EntryLimits` is a plain ASGI middleware wrapped around the
whole application (API routes and dashboard pages), so nothing behind it reads a body it has
not measured:

* **Body size.** A ``Content-Length`` over the limit is answered 413 before a byte of the
  body is read. A body without one (chunked) is read here, counting, and answered 413 as
  soon as the count passes the limit; a body within it is handed on whole. Memory held per
  request is thus at most the limit.
* **Overload.** A request carrying a bearer token is admitted by the sans-I/O
  :class:`~corral.core.limits.CallLimiter` (a token bucket and a count of calls in flight,
  per token) or answered 429 with ``Retry-After``. The token is only a key here: whether it
  is valid is checked behind, by the API's gate, so a flood of one token is cut off before
  it costs a store lookup.

Answers use the API's error shape, ``{"code": -3, "error": "...", "kind": "..."}``
(:func:`corral.errors.http_error`): ``OversizedMessage`` (413), ``Overloaded`` (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import msgspec

from corral.core.limits import CallLimiter, retry_after_header
from corral.errors import CorralError, Overloaded, OversizedMessage, UsageError, http_error

__all__ = ["EntryLimits"]

log = logging.getLogger("corral.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_encode = msgspec.json.Encoder().encode


async def _answer(
    send: Send, exc: CorralError, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    status, error = http_error(exc)
    body = _encode(error)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class EntryLimits:
    """ASGI middleware: a body limit for every request, rate and in-flight limits per token.

    Args:
        app: The application behind.
        max_body: Largest request body accepted, in bytes.
        limiter: The per-token limiter.
    """

    def __init__(self, app: App, *, max_body: int, limiter: CallLimiter) -> None:
        self.app = app
        self.max_body = max_body
        self.limiter = limiter

    def __repr__(self) -> str:
        return f"<EntryLimits body<={self.max_body} {self.limiter!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (only ``http`` ones are limited)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                await _answer(send, UsageError(f"malformed Content-Length {length[:40]!r}"))
                return
            if size > self.max_body:
                if size <= _DRAIN_UP_TO:
                    # Read and drop the body first: closing with it unread resets the
                    # connection, and the client (httpx) would lose the 413 it should see.
                    await _drain(receive)
                await self._too_large(send, f"of {size} bytes")
                return
        elif _header(scope, b"transfer-encoding") is not None:
            body = await self._read_counted(receive)
            if body is None:
                await self._too_large(send, "(chunked)")
                return
            receive = _replay(body, receive)
        token = _bearer(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        refused = self.limiter.admit(token)
        if refused is not None:
            wait, reason = refused
            what = (
                f"more than {self.limiter.max_in_flight} calls in flight"
                if reason == "in_flight"
                else f"more than {self.limiter.rate:g} calls a second (burst {self.limiter.burst})"
            )
            setting = "api_max_in_flight" if reason == "in_flight" else "api_rate, api_burst"
            await _answer(
                send,
                Overloaded(
                    f"too many calls: this token made {what}; retry after the Retry-After "
                    f"delay, or raise {setting} on the controller"
                ),
                [(b"retry-after", retry_after_header(wait).encode())],
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.limiter.release(token)

    async def _too_large(self, send: Send, what: str) -> None:
        await _answer(
            send,
            OversizedMessage(
                f"request body {what} exceeds the limit of {self.max_body} bytes: send less, "
                "or raise max_request_bytes (CORRAL_MAX_REQUEST_BYTES) on the controller"
            ),
            [(b"connection", b"close")],
        )

    async def _read_counted(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` as soon as it passes the limit."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)


#: A body refused for its size but at most this large is read (and dropped) before the 413.
_DRAIN_UP_TO = 32 * 1024 * 1024


async def _drain(receive: Receive, seconds: float = 5.0) -> None:
    """Read and drop a request body (for at most ``seconds``)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the server says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
