"""Message-driven agents addressed by name (pyros ``Agent`` and ``Sender``).

Theory of operation: an agent named ``scheduler`` subscribes to ``corral.agent.scheduler``
and nothing else decides where it lives: a sender publishes there and NATS delivers it, on any
machine. Each incoming message goes into a bounded inbox (an asyncio queue); one consumer task
takes messages in order and runs the handler registered for the message's name — an ``async``
handler on the agent's loop, a plain one in a worker thread. What a handler returns is the reply
to an :func:`ask`; what it raises becomes an error reply naming the exception, and the agent
keeps going. A full inbox refuses new messages (an ``overloaded`` error to an ``ask``) and
counts them, so a slow handler cannot grow memory without bound.

A name is held by one live agent: before subscribing, an agent asks the name itself; if anyone
answers, it refuses to start and names the holder. A pool agent (``pool = True``) skips that
check and joins a NATS queue group, so its members share the messages.

Name constants (pyros's ``Agent.SCHEDULER``): every agent name a deployment declares, with
:meth:`Agent.declare` or by defining an ``Agent`` subclass with a ``name``, is an attribute of
``Agent`` in capitals (``scheduler`` -> ``Agent.SCHEDULER``, ``alert-manager`` ->
``Agent.ALERT_MANAGER``) whose value is the name. An undeclared one raises ``AttributeError``
listing the declared names and the fix.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar

import msgspec
import nats.errors

from corral import agent_names, bus, subjects, wire
from corral import sender as _sender
from corral.config import Config, load_config
from corral.errors import (
    AgentError,
    ConfigError,
    CorralError,
    DuplicateName,
    NoSuchAgent,
    Overloaded,
    UnknownMessage,
)
from corral.security import agent_inbox, credential_name
from corral.sender import Sender, class_or_instance

__all__ = ["Agent", "Message", "on"]

log = logging.getLogger("corral.agent")

F = TypeVar("F", bound=Callable[..., Any])

#: Messages every agent understands.
SHUTDOWN = "SHUTDOWN"
_WHOIS = "__whois__"
# Who holds this name? Answered by the holder's bus callback, never queued behind handlers.
_WHOIS_PROBE = wire.encode(wire.AgentMessage(message=_WHOIS))


def on(message: str) -> Callable[[F], F]:
    """Mark a method as the handler of ``message`` (sync or async; returns the reply)."""

    def mark(func: F) -> F:
        func.__corral_message__ = message  # type: ignore[attr-defined]
        return func

    return mark


class Message(msgspec.Struct, frozen=True):
    """What a handler receives: the message name, its data, and who sent it."""

    message: str
    data: Any = None
    sender: str = ""


class Agent(metaclass=agent_names.AgentType):
    """A named, message-driven actor. Subclass it, set ``name``, add handlers with :func:`on`.

    Args:
        name: the agent's name (defaults to the class attribute ``name``).
        config: how to reach the bus (defaults to :func:`corral.load_config`).
        inbox_size: messages waiting at most; more are refused and counted.
    """

    #: the agent's name on the bus; set it on the subclass or pass it to ``__init__``
    name: ClassVar[str] = ""
    #: share messages among every live agent of this name instead of refusing a second one
    pool: ClassVar[bool] = False
    #: the message that stops an agent (runs :meth:`shutdown`)
    SHUTDOWN: ClassVar[str] = SHUTDOWN

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if isinstance(name, str) and name:
            # A bad or clashing name is reported when the agent starts or by declare().
            with contextlib.suppress(CorralError):
                Agent.declare(name)

    @classmethod
    def declare(cls, *names: str) -> dict[str, str]:
        """Declare agent names, so ``Agent.<NAME>`` gives each (pyros's ``Agent.SCHEDULER``).

        Declare a deployment's agents once, in a module both the agents and their senders
        import: ``Agent.declare("scheduler", "alert_manager")``; then
        ``Sender.send_to(Agent.SCHEDULER, Agent.SHUTDOWN)``. An ``Agent`` subclass with a
        ``name`` declares it by itself. Declaring a name again is harmless.

        Args:
            names: Agent names (1-64 letters, digits, ``-``, ``_``).

        Returns:
            Every declared constant and its name.

        Raises:
            InvalidName: a name is not a valid agent name.
            ConfigError: two names give the same constant (``a-b`` and ``a_b``), or a name's
                constant is one of Agent's own attributes (``shutdown`` -> ``SHUTDOWN``).
        """
        return agent_names.declare(names, taken=vars(Agent))

    def __init__(
        self, name: str | None = None, *, config: Config | None = None, inbox_size: int = 1000
    ) -> None:
        self.name = subjects.check_name(name or type(self).name, "agent")  # type: ignore[misc]
        self.config = config
        self.inbox_size = inbox_size
        #: message name -> handler; filled from @on methods, extend it in __init__ (pyros style)
        self.actions_by_message: dict[str, Callable[..., Any]] = {}
        for attr in dir(type(self)):
            func = getattr(type(self), attr, None)
            message = getattr(func, "__corral_message__", None)
            if message is not None:
                self.actions_by_message[message] = getattr(self, attr)
        self.handled = 0
        self.overflow = 0
        # Decided per message otherwise; handlers added in a subclass __init__ are found by
        # _call's own check.
        self._async_handlers = {
            h for h in self.actions_by_message.values() if inspect.iscoroutinefunction(h)
        }
        self.last_error = ""
        self.started = 0.0
        self.nc: bus.NATS | None = None
        self._inbox: asyncio.Queue[Any] | None = None
        self._stopped: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._serving = asyncio.Event()

    def __repr__(self) -> str:
        state = "running" if self.nc is not None and self.nc.is_connected else "stopped"
        return (
            f"<{type(self).__name__} {self.name!r} {state} handled={self.handled} "
            f"overflow={self.overflow} handlers={sorted(self.actions_by_message)}>"
        )

    # --- talking to other agents -------------------------------------------------------

    @class_or_instance["Agent", None](lambda: _sender.send_to)
    async def send_to(self, name: str, message: str, data: Any = None) -> None:
        """Send ``message`` to agent ``name``, fire and forget (from an async handler).

        Called on the class (``Agent.send_to(name, message)``), it is the blocking
        :func:`corral.send_to`.

        Raises:
            CorralError: ``data`` is not msgpack-able, or the agent is not running.
        """
        await self._sender().send_to(name, message, data)

    @class_or_instance["Agent", Any](lambda: _sender.ask)
    async def ask(self, name: str, message: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Send ``message`` to agent ``name`` and return its handler's reply.

        Called on the class (``Agent.ask(name, message)``), it is the blocking
        :func:`corral.ask`.

        Raises:
            NoSuchAgent: no agent holds ``name``.
            UnknownMessage, AgentError, Overloaded: the agent refused or failed.
            Timeout: no reply within ``timeout`` seconds.
        """
        return await self._sender().ask(name, message, data, timeout=timeout)

    def _sender(self) -> Sender:
        if self.nc is None:
            raise CorralError(f"agent {self.name!r} is not running: start() or run() it first")
        return Sender(self.nc, self.name)

    # --- hooks for subclasses -----------------------------------------------------------

    def work(self) -> Any:
        """Runs once when the agent starts, before any message; must not block forever.

        It runs on the agent's own thread (its event loop): start threads or tasks here for
        long work. It may be ``async``.
        """

    def shutdown(self) -> Any:
        """Runs once when the agent stops (the ``SHUTDOWN`` message or :meth:`stop`).

        Like :meth:`work`, on the agent's own thread; it may be ``async``.
        """

    # --- running inside an asyncio program ----------------------------------------------

    async def run(self) -> None:
        """Connect, run :meth:`work`, then serve messages until stopped.

        Raises:
            DuplicateName: another live agent holds this name.
            AuthError, BusUnavailable, ConfigError: the bus refused or could not be reached.
        """
        try:
            await self._open()
        except BaseException as exc:
            self._start_error = exc
            self._serving.set()  # serving() raises it
            raise
        self._ready.set()  # start() returns now
        self._serving.set()
        try:
            assert self._stopped is not None
            await self._stopped.wait()
        finally:
            await self._close()

    async def serving(self) -> None:
        """Wait until a ``run()`` task serves messages (for ``create_task(agent.run())``).

        Raises:
            The error that stopped ``run()`` from starting (``DuplicateName``, ``AuthError``…).
        """
        await self._serving.wait()
        if self._start_error is not None:
            raise self._start_error

    async def _open(self) -> None:
        config = self.config or load_config()[0]
        self._check_credential(config)
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._inbox = asyncio.Queue(self.inbox_size)
        self.nc = await bus.connect(
            config, "agent", inbox_prefix=agent_inbox(self.name), name=f"corral-agent-{self.name}"
        )
        try:
            if not self.pool:
                await self._claim_name()
            subject = subjects.agent(self.name)
            await self.nc.subscribe(subject, cb=self._receive, queue="pool" if self.pool else "")
            await self.nc.subscribe(subjects.AGENTS_INFO, cb=self._on_info)
            await self.nc.flush()
            await self._until_reachable()
        except BaseException:
            await self.nc.close()
            raise
        self.started = time.time()
        self._consumer = asyncio.create_task(self._consume(), name=f"agent-{self.name}")
        try:
            await self._hook(self.work)
        except BaseException:  # work() failed: the agent never served; leave nothing running
            self._consumer.cancel()
            with _suppress_cancel():
                await self._consumer
            await self.nc.close()
            raise
        log.info("agent started", extra={"agent": self.name, "pool": self.pool})

    async def _until_reachable(self, within: float = 5.0) -> None:
        """Ask ourselves until the bus routes our name to us.

        The server can answer "no responders" for a moment after a new subscription (seen
        right after the name probe), and serving() must not return before a sender can reach
        us.
        """
        assert self.nc is not None
        deadline = time.monotonic() + within
        while True:
            try:
                await self.nc.request(
                    subjects.agent(self.name), _WHOIS_PROBE, timeout=1.0, headers=wire.HEADERS
                )
                return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise CorralError(
                        f"agent {self.name!r} subscribed but the bus does not route its name "
                        f"to it after {within}s; check the bus (nats-server log)"
                    ) from None
                await asyncio.sleep(0.02)

    def _check_credential(self, config: Config) -> None:
        path = config.creds_path("agent")
        if not path.exists():
            return  # bus.connect names the missing file and the fix
        holder = credential_name(path.read_text())
        if holder not in ("agent:*", f"agent:{self.name}"):
            raise ConfigError(
                f"credential {path} is for {holder!r}, not agent {self.name!r}: use the file "
                f"`corral enroll {self.name} --agent` wrote"
            )

    async def _claim_name(self) -> None:
        assert self.nc is not None
        try:
            reply = await self.nc.request(
                subjects.agent(self.name), _WHOIS_PROBE, timeout=1.0, headers=wire.HEADERS
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return
        try:
            who = wire.decode_reply(reply.data, wire.AgentReply, reply.headers).data or {}
        except CorralError:
            who = {}
        raise DuplicateName(
            f"agent name {self.name!r} is held by a live agent on host {who.get('host', '?')} "
            f"(pid {who.get('pid', '?')}); stop it, choose another name, or declare the "
            "agent a pool (pool = True) to share its messages"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the agent (from any thread); runs :meth:`shutdown` and waits for the thread."""
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None or loop.is_closed():
            return
        if self._thread is threading.current_thread():
            stopped.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            stopped.set()
            return
        loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)

    async def _close(self) -> None:
        consumer = getattr(self, "_consumer", None)
        if consumer is not None:
            consumer.cancel()
            with _suppress_cancel():
                await consumer
        await self._refuse_waiting()
        try:
            await self._hook(self.shutdown)
        finally:
            if self.nc is not None and not self.nc.is_closed:
                await self.nc.drain()
            log.info("agent stopped", extra={"agent": self.name, "handled": self.handled})

    def _stopped_error(self) -> wire.ErrorReply:
        return wire.error_reply(NoSuchAgent(f"agent {self.name!r} stopped before handling this"))

    async def _refuse_waiting(self) -> None:
        """Answer the messages still in the inbox at once rather than let askers time out."""
        if self._inbox is None or self.nc is None or self.nc.is_closed:
            return
        error = self._stopped_error()
        while not self._inbox.empty():
            _, reply_to = self._inbox.get_nowait()
            if reply_to:
                await self._reply_to(reply_to, error)

    # --- running in a background thread -------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Run the agent in a background thread; returns once it serves messages.

        The thread stops cleanly at interpreter exit (``atexit``), or with :meth:`stop`.

        Raises:
            DuplicateName: another live agent holds this name.
            AuthError, BusUnavailable, ConfigError: the bus refused or could not be reached.
            TimeoutError: it was not serving within ``timeout`` seconds.
        """

        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:  # handed to start() or logged
                if not self._ready.is_set():
                    self._start_error = exc
                else:
                    log.exception("agent crashed", extra={"agent": self.name})
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=main, name=f"corral-agent-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"agent {self.name!r} did not start within {timeout}s")
        if self._start_error is not None:
            raise self._start_error
        atexit.register(self.stop)
        return self

    # --- receiving ----------------------------------------------------------------------

    async def _receive(self, msg: Any) -> None:
        """Bus callback: validate, answer probes, queue the rest (never blocks)."""
        try:
            incoming = wire.decode(msg.data, wire.AgentMessage, msg.headers)
        except CorralError as exc:
            await self._reply(msg, wire.error_reply(exc))
            return
        if incoming.message == _WHOIS:
            await self._reply(msg, wire.AgentReply(data={"host": _HOST, "pid": os.getpid()}))
            return
        assert self._inbox is not None
        try:
            self._inbox.put_nowait((incoming, msg.reply))
        except asyncio.QueueFull:
            self.overflow += 1
            if msg.reply:  # a send_to has nobody to tell
                error = (
                    f"agent {self.name!r} is overloaded: its inbox of {self.inbox_size} "
                    "messages is full; retry later, or make the handlers faster or the agent "
                    "a pool"
                )
                await self._reply(msg, wire.error_reply(Overloaded(error)))

    async def _consume(self) -> None:
        assert self._inbox is not None
        while True:
            incoming, reply_to = await self._inbox.get()
            try:
                answer = await self._handle(incoming)
                if reply_to:
                    await self._reply_to(reply_to, answer)
            except asyncio.CancelledError:  # stopped mid-handler: say so, then stop
                if reply_to:
                    await self._reply_to(reply_to, self._stopped_error())
                raise
            except Exception:  # a bug or a lost connection must not stop the agent serving
                log.exception("agent failed on a message", extra={"agent": self.name})

    async def _handle(self, incoming: wire.AgentMessage) -> msgspec.Struct:
        if incoming.message == self.SHUTDOWN:
            assert self._stopped is not None
            self._stopped.set()
            return wire.AgentReply(data=None)
        handler = self.actions_by_message.get(incoming.message)
        if handler is None:
            known = ", ".join(repr(m) for m in sorted(self.actions_by_message)) or "none"
            return wire.error_reply(
                UnknownMessage(
                    f"agent {self.name!r} does not handle {incoming.message!r}; "
                    f"it handles: {known} (and {self.SHUTDOWN!r})"
                )
            )
        message = Message(incoming.message, incoming.data, incoming.sender)
        try:
            if handler in self._async_handlers:
                result = await handler(message)
            else:
                result = await self._call(handler, message)
            return wire.AgentReply(data=result)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception(
                "handler raised", extra={"agent": self.name, "handling": incoming.message}
            )
            return wire.error_reply(
                AgentError(f"agent {self.name!r} failed on {incoming.message!r}: {self.last_error}")
            )
        finally:
            self.handled += 1

    async def _hook(self, func: Callable[[], Any]) -> None:
        """Run work() or shutdown() on the agent's own thread (awaited if async).

        Not in a worker thread: at interpreter exit the thread pool is already shut down
        when atexit stops a thread-started agent.
        """
        result = func()
        if inspect.isawaitable(result):
            await result

    async def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run a handler or hook: awaited if async, in a worker thread if not."""
        if inspect.iscoroutinefunction(func):
            return await func(*args)
        result = await asyncio.to_thread(func, *args)
        if inspect.isawaitable(result):
            return await result
        return result

    async def _reply(self, msg: Any, payload: msgspec.Struct) -> None:
        if msg.reply:
            await self._reply_to(msg.reply, payload)

    async def _reply_to(self, subject: str, payload: msgspec.Struct) -> None:
        assert self.nc is not None
        try:
            data = wire.encode(payload)
        except (TypeError, msgspec.EncodeError) as exc:
            data = wire.encode(
                wire.error_reply(
                    AgentError(
                        f"agent {self.name!r} returned a value that is not msgpack-able: {exc}"
                    )
                )
            )
        await self.nc.publish(subject, data, headers=wire.HEADERS)

    async def _on_info(self, msg: Any) -> None:
        info = wire.AgentInfo(
            name=self.name,
            host=_HOST,
            pid=os.getpid(),
            handlers=tuple(sorted(self.actions_by_message)),
            started=self.started,
            pool=self.pool,
            handled=self.handled,
            overflow=self.overflow,
            waiting=self._inbox.qsize() if self._inbox else 0,
            last_error=self.last_error,
        )
        await self._reply(msg, info)


_HOST = socket.gethostname()


class _suppress_cancel:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is asyncio.CancelledError
