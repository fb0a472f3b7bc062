"""The exception a controller API error reply stands for, over either transport.

Both transports carry the same pair: an HTTP status (HTTP's status line, or the bus reply's
``Corral-Status`` header) and :class:`~corral.api_models.ErrorBody` (Pydra's code, a message,
per-field errors). :func:`api_error` is the one mapping from that pair to an exception, so a
call fails with the same exception type over ``nats://`` and ``http://``.
"""

from __future__ import annotations

from corral import api_models as m
from corral.errors import (
    AuthenticationFailed,
    ControllerError,
    CorralError,
    Disconnected,
    Forbidden,
    FunctionNotFound,
    IdempotencyKeyReused,
    InvalidArguments,
    NoKey,
    NotFound,
    RemoteError,
    Timeout,
    UnknownError,
)

__all__ = ["api_error"]

_CODES: dict[int, type[ControllerError]] = {
    -1: AuthenticationFailed,
    -2: Disconnected,
    -3: RemoteError,
    -4: NoKey,
    -5: UnknownError,
    -6: FunctionNotFound,
}


def api_error(status: int, body: m.ErrorBody) -> CorralError:
    """The exception for an error reply with HTTP ``status`` and ``body``.

    Returns:
        A :class:`~corral.errors.ControllerError` subclass carrying Pydra's code and the
        status, or :class:`~corral.errors.Timeout` for a ``wait`` that ran out (504).
    """
    code, message = body.code, body.error
    if status == 504:
        return Timeout(message)
    if code == -1 and status == 403:
        return Forbidden(message, 403)
    if code == -3 and status == 404:
        return NotFound(message, 404)
    if code == -3 and status == 422 and "idempotency key" in message:
        return IdempotencyKeyReused(message, 422)
    if code == -3 and status == 422 and body.fields:
        return InvalidArguments(message, 422, body.fields)
    return _CODES.get(code, UnknownError)(message, status)
