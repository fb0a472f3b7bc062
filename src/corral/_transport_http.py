"""The controller API over HTTP: ``POST /<function>`` with JSON, through httpx.

One :class:`httpx.AsyncClient` per client (a keep-alive pool; httpcore sets TCP_NODELAY).
httpx never sends a request twice on its own; the client above re-sends only calls that are
safe to repeat (submissions with an idempotency key, and reads). httpx's errors become
corral's here, at the boundary.

Several addresses (the controllers of one fleet) make one transport that follows the leader:
a call goes to the address that answered last; a standby's :class:`~corral.errors.NotLeader`
sends it on to the leader it names (when that is one of the addresses given: the token is
never sent anywhere else), and an address that refuses the connection to the next one. Both
mean the call did not run, so any call may go on; a connection that drops mid-call (it may
have run) only moves the *next* attempt, which the client makes for safe calls alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import msgspec

from corral import api_models as m
from corral._api_errors import api_error
from corral.errors import CorralError, Disconnected, NotLeader

__all__ = ["HttpTransport"]

_error_decoder = msgspec.json.Decoder(m.ErrorBody)
_encode = msgspec.json.Encoder().encode


class HttpTransport:
    """Calls API functions on ``url`` (or the leader among several) with bearer ``token``.

    Args:
        url: The API's base URL (``http://host:port``), or each controller's.
        token: The API token.
        timeout: Default seconds a call may take.
    """

    bus = False

    def __init__(self, url: str | Sequence[str], token: str, timeout: float) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        #: every controller's base URL, in the order given
        self.addresses = [u.rstrip("/") for u in urls]
        self._current = 0
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"<HttpTransport {self.address}>"

    @property
    def address(self) -> str:
        """The address calls go to now (the one that answered last)."""
        return self.addresses[self._current]

    def _move(self, leader: str = "", tried: set[str] | None = None) -> None:
        """Go to ``leader`` if it is one of the addresses not ``tried`` yet in this call (a
        standby may still name a leader that just died), else to the next address."""
        leader = leader.rstrip("/")
        if leader in self.addresses and leader not in (tried or ()):
            self._current = self.addresses.index(leader)
        else:
            self._current = (self._current + 1) % len(self.addresses)

    async def call(
        self, function: str, args: dict[str, Any], reply: Any, timeout: float, key: str | None
    ) -> Any:
        """One exchange: POST the arguments, decode the reply as ``reply``; to the leader when
        several addresses were given (each tried at most once per call).

        Raises:
            Disconnected: no controller could be reached, or the connection dropped (then the
                call may or may not have run).
            NotLeader: every controller reached is a standby (a takeover is under way).
            ControllerError, Timeout: the controller answered with an error.
        """
        headers = {} if key is None else {"idempotency-key": key}
        content = _encode(args)
        tried: set[str] = set()
        last: CorralError | None = None
        while (address := self.address) not in tried:
            tried.add(address)
            try:
                response = await self._http.post(
                    f"{address}/{function}", content=content, headers=headers, timeout=timeout
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: the next controller may take it.
                last = _unreachable(address, exc)
                self._move()
                continue
            except httpx.HTTPError as exc:
                if len(self.addresses) > 1:
                    self._move()  # a repeat (safe calls only, by the client) goes elsewhere
                raise _unreachable(address, exc) from None
            if response.status_code == 200:
                return msgspec.json.decode(response.content, type=reply)
            error = _error(response)
            if not isinstance(error, NotLeader):
                raise error
            last = error  # a standby refused it: it did not run
            self._move(error.leader, tried)
        assert last is not None
        if isinstance(last, NotLeader) or len(self.addresses) == 1:
            raise last
        raise Disconnected(f"none of {', '.join(self.addresses)} answers; last: {last}")

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()


def _unreachable(address: str, exc: httpx.HTTPError) -> Disconnected:
    return Disconnected(
        f"cannot reach the controller API at {address}: {str(exc) or type(exc).__name__}. "
        "Is the controller running (`corral up` / `corral controller`)?"
    )


def _error(response: httpx.Response) -> CorralError:
    try:
        body = _error_decoder.decode(response.content)
    except msgspec.DecodeError:
        text = response.text[:200]
        body = m.ErrorBody(code=-5, error=f"HTTP {response.status_code}: {text}")
    return api_error(response.status_code, body)
