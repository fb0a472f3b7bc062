"""The controller API over HTTP: ``POST /<function>`` with JSON, through httpx.

One :class:`httpx.AsyncClient` per client (a keep-alive pool; httpcore sets TCP_NODELAY).
httpx never sends a request twice on its own; the client above re-sends only calls that are
safe to repeat (submissions with an idempotency key, and reads). httpx's errors become
corral's here, at the boundary.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from corral import api_models as m
from corral._api_errors import api_error
from corral.errors import Disconnected

__all__ = ["HttpTransport"]

_error_decoder = msgspec.json.Decoder(m.ErrorBody)
_encode = msgspec.json.Encoder().encode


class HttpTransport:
    """Calls API functions on ``url`` with bearer ``token``.

    Args:
        url: The API's base URL (``http://host:port``).
        token: The API token.
        timeout: Default seconds a call may take.
    """

    bus = False

    def __init__(self, url: str, token: str, timeout: float) -> None:
        self.address = url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.address,
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"<HttpTransport {self.address}>"

    async def call(
        self, function: str, args: dict[str, Any], reply: Any, timeout: float, key: str | None
    ) -> Any:
        """One exchange: POST the arguments, decode the reply as ``reply``.

        Raises:
            Disconnected: the controller could not be reached or the connection dropped (the
                call may or may not have run).
            ControllerError, Timeout: the controller answered with an error.
        """
        headers = {} if key is None else {"idempotency-key": key}
        try:
            response = await self._http.post(
                f"/{function}", content=_encode(args), headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise Disconnected(
                f"cannot reach the controller API at {self.address}: "
                f"{str(exc) or type(exc).__name__}. Is the controller running (`corral up` / "
                "`corral controller`)?"
            ) from None
        if response.status_code != 200:
            try:
                body = _error_decoder.decode(response.content)
            except msgspec.DecodeError:
                text = response.text[:200]
                body = m.ErrorBody(code=-5, error=f"HTTP {response.status_code}: {text}")
            raise api_error(response.status_code, body)
        return msgspec.json.decode(response.content, type=reply)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()
