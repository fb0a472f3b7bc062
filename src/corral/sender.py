"""Sending to agents by name (pyros ``Sender.send_to``), from anywhere.

``send_to`` and ``ask`` here block, for scripts, Django views and thread-started handlers; they
share one bus connection per process, opened on first use with the configuration's agent
credential (``<data_dir>/auth/agent.creds`` on the controller's host, ``CORRAL_CREDS`` elsewhere).
Async code uses :class:`Sender` (or an agent's own ``send_to`` / ``ask``).

pyros called ``Sender.send_to(Agent.SCHEDULER, Agent.SHUTDOWN)`` on the class, a static method.
Here ``Sender.send_to`` and ``Sender.ask`` (and ``Agent.send_to`` / ``Agent.ask``) called on the
class are the blocking module functions; called on an instance they stay the async methods
(``await sender.send_to(...)``, ``await self.send_to(...)`` in an agent).
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar, overload

import msgspec
import nats.errors

from corral import bus, subjects, wire
from corral.config import Config, load_config
from corral.errors import MalformedMessage, NoSuchAgent, Timeout
from corral.security import agent_inbox, credential_name

__all__ = ["Sender", "ask", "class_or_instance", "send_to"]

S = TypeVar("S")
T = TypeVar("T")


class class_or_instance(Generic[S, T]):  # noqa: N801 - used as a decorator, like classmethod
    """A method that blocks when called on the class and is async on an instance.

    ``Sender.send_to(name, message)`` (pyros's static method) runs the blocking twin on the
    process's shared connection; ``await sender.send_to(name, message)`` runs the async method
    on that sender's own connection.

    Args:
        blocking: returns the blocking twin (looked up at call time, so it may be defined later
            in the module).
    """

    def __init__(self, blocking: Callable[[], Callable[..., T]]) -> None:
        self._blocking = blocking
        self._method: Callable[..., Coroutine[Any, Any, T]] | None = None

    def __call__(self, method: Callable[..., Coroutine[Any, Any, T]]) -> class_or_instance[S, T]:
        """Take the async method this wraps (decorator use)."""
        self._method = method
        functools.update_wrapper(self, method)
        return self

    @overload
    def __get__(self, obj: None, owner: type[S]) -> Callable[..., T]: ...

    @overload
    def __get__(
        self, obj: S, owner: type[S] | None = None
    ) -> Callable[..., Coroutine[Any, Any, T]]: ...

    def __get__(
        self, obj: S | None, owner: type[S] | None = None
    ) -> Callable[..., T] | Callable[..., Coroutine[Any, Any, T]]:
        if obj is None:
            return self._blocking()
        assert self._method is not None
        return types.MethodType(self._method, obj)


def _encode(name: str, message: str, data: Any, sender: str) -> bytes:
    subjects.check_name(name, "agent")
    try:
        return wire.encode(wire.AgentMessage(message=message, data=data, sender=sender))
    except (TypeError, msgspec.EncodeError) as exc:
        raise MalformedMessage(
            f"cannot send {message!r} to {name!r}: data must be msgpack-able (dicts, lists, "
            f"str, int, float, bool, None, bytes): {exc}"
        ) from None


class Sender:
    """Send to agents over an open connection.

    Args:
        nc: a connection with an agent (or admin) credential.
        me: the sender's name, as the receiving handler sees it in ``msg.sender``.
    """

    def __init__(self, nc: bus.NATS, me: str = "") -> None:
        self.nc = nc
        self.me = me

    def __repr__(self) -> str:
        return f"<Sender {self.me or '-'}>"

    @classmethod
    async def connect(cls, config: Config | None = None) -> Sender:
        """Connect with the configuration's agent credential.

        Raises:
            ConfigError, AuthError, BusUnavailable: as :func:`corral.bus.connect`.
        """
        config = config or load_config()[0]
        creds = config.creds_path("agent")
        identity = credential_name(creds.read_text()) if creds.exists() else "agent:*"
        me = identity.partition(":")[2] if identity.startswith("agent:") else identity
        # A per-name agent credential may only use that agent's inbox.
        inbox = agent_inbox(me if me and me != "*" else "sender")
        nc = await bus.connect(config, "agent", inbox_prefix=inbox, name="corral-sender")
        return cls(nc, "" if me == "*" else me)

    async def close(self) -> None:
        """Close the connection."""
        if not self.nc.is_closed:
            await self.nc.close()

    @class_or_instance["Sender", None](lambda: send_to)
    async def send_to(self, name: str, message: str, data: Any = None) -> None:
        """Send ``message`` with ``data`` to agent ``name``; nobody answers.

        Called on the class (``Sender.send_to(name, message)``, pyros's static method), it is
        the blocking :func:`send_to` on the process's shared connection.

        Raises:
            InvalidName: ``name`` is not a valid agent name.
            MalformedMessage: ``data`` is not msgpack-able.
        """
        payload = _encode(name, message, data, self.me)
        await self.nc.publish(subjects.agent(name), payload, headers=wire.HEADERS)

    @class_or_instance["Sender", Any](lambda: ask)
    async def ask(self, name: str, message: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Send ``message`` to agent ``name`` and return what its handler returned.

        Called on the class (``Sender.ask(name, message)``), it is the blocking :func:`ask`.

        Raises:
            NoSuchAgent: no agent holds ``name`` (answered at once, not after a timeout).
            UnknownMessage: the agent has no handler for ``message`` (the error lists them).
            AgentError: the handler raised (its type and message are in the error).
            Overloaded: the agent's inbox is full.
            Timeout: no reply within ``timeout`` seconds.
        """
        payload = _encode(name, message, data, self.me)
        try:
            reply = await self.nc.request(
                subjects.agent(name), payload, timeout=timeout, headers=wire.HEADERS
            )
        except nats.errors.NoRespondersError:
            raise NoSuchAgent(
                f"no agent named {name!r} is running: start it, or check the name "
                "(`corral agents` lists the live ones)"
            ) from None
        except nats.errors.TimeoutError:
            raise Timeout(f"agent {name!r} did not answer {message!r} within {timeout}s") from None
        answer: wire.AgentReply = wire.decode_reply(reply.data, wire.AgentReply, reply.headers)
        return answer.data


_shared: Sender | None = None
_shared_lock = threading.Lock()


def _process_sender() -> Sender:
    from corral import sync  # here: corral.sync builds on the client, which uses this module

    global _shared
    with _shared_lock:
        if _shared is None or _shared.nc.is_closed:
            _shared = sync.call(Sender.connect())
        return _shared


def send_to(name: str, message: str, data: Any = None) -> None:
    """Send ``message`` to agent ``name``, fire and forget (blocking twin of the async one).

    Raises:
        InvalidName, MalformedMessage: as :meth:`Sender.send_to`.
    """
    from corral import sync

    sync.call(_process_sender().send_to(name, message, data))


def ask(name: str, message: str, data: Any = None, timeout: float = 5.0) -> Any:
    """Send ``message`` to agent ``name`` and return its reply (blocking).

    Raises:
        NoSuchAgent, UnknownMessage, AgentError, Overloaded, Timeout: as :meth:`Sender.ask`.
    """
    from corral import sync

    return sync.call(_process_sender().ask(name, message, data, timeout))
