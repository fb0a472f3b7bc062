"""The controller's API over the bus: every :data:`FUNCTIONS` entry as NATS request/reply.

Theory of operation: function ``f`` is asked on ``corral.ctl.<f>.<credential>`` with the
msgpack of its request struct (the same struct HTTP takes as JSON) and an optional
``Idempotency-Key`` header. The nats-server lets only that credential publish there (its
JWT's permissions, :mod:`corral.security`), so the subject names the caller: the actor the
audit log gives is ``bus:<credential>`` and the role is the credential's
(:data:`BUS_API_ROLES`); nothing in the payload can claim another. The transport does only
that — decode, establish the caller, apply the entry limits (payload size, per-credential
rate and calls in flight), encode — and hands the call to the same
:class:`~corral.controller.functions.Dispatch` as HTTP.

A reply is the msgpack of the function's reply type. A failure is the msgpack of
:class:`~corral.api_models.ErrorBody` with a ``Corral-Status`` header carrying the HTTP status
the same failure gets over HTTP, so a client raises the same exception on both transports.
Each request runs in a task of its own: a ``wait`` does not hold up the calls behind it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from corral import api_models as m
from corral import subjects
from corral.bus import NATS
from corral.controller.api_calls import Caller
from corral.controller.functions import FUNCTIONS, KEYED, Dispatch, error_reply
from corral.core.limits import CallLimiter
from corral.errors import Forbidden, InvalidArguments, Overloaded, OversizedMessage
from corral.tokens import Role

__all__ = ["BUS_API_ROLES", "ApiBus", "bus_api_caller"]

log = logging.getLogger("corral.api")

#: Credentials that may call API functions on the bus, and their roles (what the nats-server
#: lets each publish on ``corral.ctl.<verb>.<credential>``; see ``security.py``). The operator
#: credential lacks EXECUTE, as its NATS permissions do.
BUS_API_ROLES: dict[str, Role] = {
    "admin": Role.ADMIN,
    "operator": Role.OPERATE,
    "controller": Role.ADMIN,
}

_encode = msgspec.msgpack.Encoder().encode


def bus_api_caller(subject: str) -> tuple[str, Caller]:
    """The function asked and who asked it, from ``corral.ctl.<function>.<credential>``.

    Returns:
        ``(function, caller)``; the caller's actor is ``bus:<credential>``.

    Raises:
        InvalidName: the subject is not of that form.
        Forbidden: the credential it names may not call API functions.
    """
    function, credential = subjects.parse_ctl_as(subject)
    role = BUS_API_ROLES.get(credential)
    if role is None:
        raise Forbidden(
            f"credential {credential!r} may not call the controller API: use the admin or "
            "operator credential (<data_dir>/auth/admin.creds, operator.creds)",
            403,
        )
    actor = f"bus:{credential}"
    return function, Caller(actor=actor, role=role.value, scope=actor)


class ApiBus:
    """Serves the API functions on the bus.

    Args:
        dispatch: The dispatch path HTTP shares.
        nc: The controller's bus connection.
        max_bytes: The largest request payload accepted (HTTP's ``max_request_bytes``).
        limiter: Per-credential rate and in-flight limits (``None``: none).
    """

    def __init__(
        self,
        dispatch: Dispatch,
        nc: NATS,
        max_bytes: int,
        limiter: CallLimiter | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.nc = nc
        self.max_bytes = max_bytes
        self.limiter = limiter
        self._decoders = {
            name: msgspec.msgpack.Decoder(kind)
            for name, (kind, _, _) in FUNCTIONS.items()
            if kind is not None
        }
        self._running: set[asyncio.Task[None]] = set()
        self._subs: list[Any] = []

    def __repr__(self) -> str:
        return f"<ApiBus {len(self._subs)} subjects, {len(self._running)} calls running>"

    async def start(self) -> None:
        """Subscribe to every function's subject."""
        for name in FUNCTIONS:
            sub = await self.nc.subscribe(
                subjects.ctl_as(name, "*"), cb=self._receive, pending_msgs_limit=100_000
            )
            self._subs.append(sub)
        await self.nc.flush()

    async def stop(self) -> None:
        """Stop taking calls; cancel the ones still running."""
        if not self.nc.is_closed:
            for sub in self._subs:
                await sub.unsubscribe()
            await self.nc.flush()  # the server knows at once: a request now has no responders
        self._subs.clear()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _receive(self, msg: Any) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _answer(self, msg: Any) -> None:
        if not msg.reply:
            return  # a publish, not a request: nobody to answer
        try:
            payload, headers = _encode(await self._call(msg)), None
            if len(payload) > self.nc.max_payload:
                raise OversizedMessage(
                    f"the reply of {len(payload)} bytes exceeds what the bus carries "
                    f"({self.nc.max_payload} bytes): ask for less (a smaller page, fewer ids), "
                    "or make this call over HTTP"
                )
        except Exception as exc:  # every failure becomes a coded error reply
            status, body = error_reply(exc)
            payload, headers = _encode(body), {m.STATUS_HEADER: str(status)}
        if not self.nc.is_closed:
            await self.nc.publish(msg.reply, payload, headers=headers)

    async def _call(self, msg: Any) -> Any:
        function, caller = bus_api_caller(msg.subject)
        if len(msg.data) > self.max_bytes:
            raise OversizedMessage(
                f"request of {len(msg.data)} bytes exceeds max_request_bytes ({self.max_bytes}): "
                "send less, or raise max_request_bytes on the controller"
            )
        if self.limiter is not None and (wait := self.limiter.admit(caller.actor)) is not None:
            seconds, reason = wait
            raise Overloaded(
                f"too many calls: credential {caller.actor} is over its "
                f"{'calls in flight' if reason == 'in_flight' else 'calls a second'}; retry "
                f"after {seconds:.2f}s, or raise api_rate / api_max_in_flight on the controller"
            )
        try:
            args = None
            decoder = self._decoders.get(function)
            if decoder is not None:
                try:
                    args = decoder.decode(msg.data or b"\x80")  # empty: no arguments
                except msgspec.DecodeError as exc:
                    raise InvalidArguments(f"invalid arguments: {exc}") from None
            key = (msg.headers or {}).get("Idempotency-Key") if function in KEYED else None
            return await self.dispatch.call(function, caller, args, key)
        finally:
            if self.limiter is not None:
                self.limiter.release(caller.actor)
