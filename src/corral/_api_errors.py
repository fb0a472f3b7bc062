"""The exception a controller API error reply stands for, over either transport.

Both transports carry the same pair: an HTTP status (HTTP's status line, or the bus reply's
``Corral-Status`` header) and :class:`~corral.api_models.ErrorBody` (Pydra's code, a message,
per-field errors). :func:`api_error` is the one mapping from that pair to an exception, so a
call fails with the same exception type over ``nats://`` and ``http://``.
"""

from __future__ import annotations

from corral import api_models as m
from corral.errors import CorralError, from_wire

__all__ = ["api_error"]


def api_error(status: int, body: m.ErrorBody) -> CorralError:
    """The exception for an error reply with HTTP ``status`` and ``body``: the class the
    controller named (``kind``), else the closest one by Pydra's code and the status."""
    return from_wire(
        body.kind,
        body.error,
        code=body.code,
        status=status,
        fields=body.fields,
        retry_after=body.retry_after,
        step=body.step,
        leader=body.leader,
    )
