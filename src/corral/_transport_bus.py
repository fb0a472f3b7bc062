"""The controller API over the bus: NATS request/reply with the same msgspec types.

Function ``f`` is asked on ``corral.ctl.<f>.<credential>`` with the msgpack of its arguments
(see :mod:`corral.controller.api_bus`); the reply is the msgpack of its reply type, or an
:class:`~corral.api_models.ErrorBody` with a ``Corral-Status`` header, mapped to an exception
by the same function as over HTTP. The connection is opened on first use (on the loop that
uses it) unless one is given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

from corral import api_models as m
from corral import bus, subjects
from corral._api_errors import api_error
from corral.bus import NATS
from corral.config import Config
from corral.errors import ConfigError, Disconnected, OversizedMessage
from corral.security import ADMIN_INBOX, credential_name

__all__ = ["BusTransport"]

_encode = msgspec.msgpack.Encoder().encode
_error_decoder = msgspec.msgpack.Decoder(m.ErrorBody)
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(kind: Any) -> msgspec.msgpack.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    return decoder


class BusTransport:
    """Calls API functions over the bus as the credential in ``creds``.

    Args:
        config: Where the bus is and how to trust it (its ``bus_url``, ``ca``).
        creds: The credentials file (default: the admin's, ``<data_dir>/auth/admin.creds``).
        timeout: Default seconds a call may take.
        nc: An open connection to use instead of opening one.
        wait: Seconds to keep trying while the bus is unreachable, when opening.
        identity: The credential's name, when ``nc`` is given (default: read from ``creds``).
    """

    bus = True

    def __init__(
        self,
        config: Config,
        creds: Path | None = None,
        timeout: float = 30.0,
        *,
        nc: NATS | None = None,
        wait: float = 0.0,
        identity: str | None = None,
    ) -> None:
        self.config = config
        self.address = config.bus_url
        self.timeout = timeout
        self.creds = creds or config.creds_path("admin")
        self.wait = wait
        self._nc = nc
        self._lock = asyncio.Lock()
        #: the credential's name (``admin``, ``operator``): the subjects it may ask on
        self.identity = identity or "admin"
        if identity is None:
            try:
                self.identity = credential_name(self.creds.read_text())
            except (OSError, ConfigError):
                pass

    def __repr__(self) -> str:
        state = "closed" if self._nc is None or self._nc.is_closed else "connected"
        return f"<BusTransport {self.address} as {self.identity} {state}>"

    @property
    def opened(self) -> NATS | None:
        """The bus connection, once opened (``None`` before: :meth:`connection` opens it)."""
        return self._nc

    async def connection(self) -> NATS:
        """The bus connection, opened now if it is not yet.

        Raises:
            ConfigError: no credentials file.
            AuthError: the credential was refused.
            BusUnavailable: the bus could not be reached.
        """
        if self._nc is None:
            async with self._lock:
                if self._nc is None:
                    self._nc = await bus.connect(
                        self.config,
                        "admin",
                        creds=self.creds,
                        inbox_prefix=ADMIN_INBOX,
                        wait=self.wait,
                        name="corral-client",
                    )
        return self._nc

    async def call(
        self, function: str, args: dict[str, Any], reply: Any, timeout: float, key: str | None
    ) -> Any:
        """One request: the arguments out, the reply decoded as ``reply``.

        Raises:
            Disconnected: no controller answered within ``timeout`` (the call may or may not
                have run), or the connection is closed.
            OversizedMessage: the request is larger than the bus carries (status 413).
            ControllerError, Timeout: the controller answered with an error.
        """
        nc = await self.connection()
        subject = subjects.ctl_as(function, self.identity)
        headers = None if key is None else {"Idempotency-Key": key}
        payload = _encode(args)
        try:
            msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
        except nats.errors.MaxPayloadError:
            raise OversizedMessage(
                f"request of {len(payload)} bytes exceeds what the bus carries "
                f"({nc.max_payload} bytes): send less"
            ) from None
        except nats.errors.NoRespondersError:
            raise Disconnected(
                f"no controller answers {function} on the bus at {self.address}: start one "
                "with `corral controller` (or `corral up`); with several controllers, none "
                "leads right now (a standby takes over within the lease, see `corral status`)"
            ) from None
        except nats.errors.TimeoutError:
            raise Disconnected(
                f"the controller did not answer {function} within {timeout:g}s on the bus at "
                f"{self.address}"
            ) from None
        except nats.errors.Error as exc:
            raise Disconnected(f"the bus connection to {self.address} failed: {exc}") from None
        status = msg.headers.get(m.STATUS_HEADER) if msg.headers else None
        if status is not None:
            try:
                body = _error_decoder.decode(msg.data)
            except msgspec.DecodeError:
                body = m.ErrorBody(code=-5, error=f"malformed error reply ({status})")
            raise api_error(int(status), body)
        return _decoder(reply).decode(msg.data)

    async def close(self) -> None:
        """Close the connection (if this transport opened or was given one)."""
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
