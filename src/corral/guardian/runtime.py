"""The guardian runtime: the asyncio/NATS shell around one :class:`~corral.guardian.core.Automaton`.

Theory of operation: two threads share one automaton under a lock. The *worker* thread asks the
automaton for the next step, runs that user code (``main``/``run``, synchronous, possibly slow)
outside the lock, and reports the result. The *event loop* takes requests on
``corral.guardian.<name>.<verb>``, applies them to the automaton under the lock, wakes the
worker, and answers with the new view. Whenever the view changes the loop publishes it to the
guardian's key in the ``corral_guardians`` JetStream key-value bucket (coalesced: while one put
is in flight, only the newest view follows it), and it republishes it every heartbeat interval
so that watchers can tell a live guardian from a dead one by the age of its last view.

User code that raises puts the automaton in ERROR with the traceback; the runtime itself keeps
serving. Several guardians may share one process and one connection (pass ``nc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from corral import bus, subjects, wire
from corral.config import Config, load_config
from corral.errors import CorralError, GuardianRefused, SystemLoadError
from corral.guardian.client import check_credential, claim_name, open_bucket, until_reachable
from corral.guardian.core import Automaton, Mode, Requester, Step
from corral.guardian.loader import System, load_system
from corral.guardian.state import GuardState, step_notes
from corral.guardian.views import graph_of, view_of
from corral.security import guardian_inbox

__all__ = ["Guardian", "DEFAULT_CYCLE"]

log = logging.getLogger("corral.guardian")

#: Seconds between repeated ``run()`` calls in one state (LIGO Guardian's 16 Hz).
DEFAULT_CYCLE = 1 / 16

_VERBS: dict[str, type[msgspec.Struct]] = {
    "request": wire.GuardianRequest,
    "mode": wire.GuardianMode,
    "revive": wire.GuardianRevive,
    "pause": wire.GuardianPause,
    "reload": wire.GuardianReload,
    "view": wire.GuardianViewRequest,
    "graph": wire.GuardianGraphRequest,
}


class Guardian:
    """A named guardian running a system module.

    Args:
        system: path of the system module (a ``.py`` file).
        name: the guardian's name on the bus.
        config: how to reach the bus (default :func:`corral.load_config`).
        nc: a connection to share (default: connect with the ``guardian`` credential).
        mode: the starting mode.
        cycle: seconds between repeated ``run()`` calls in one state.

    Raises:
        InvalidName: ``name`` cannot be a subject token.
        SystemLoadError: the module fails to load.
    """

    def __init__(
        self,
        system: str | Path,
        name: str,
        *,
        config: Config | None = None,
        nc: bus.NATS | None = None,
        mode: Mode = Mode.AUTO,
        cycle: float = DEFAULT_CYCLE,
    ) -> None:
        self.name = subjects.check_name(name, "guardian")
        self.config = config
        self._replicas = config.jetstream_replicas if config else 1
        self.cycle = cycle
        self.system: System = load_system(system)
        self.core = Automaton(
            self.name,
            self.system.graph,
            self.system.initial,
            self.system.request,
            Mode(mode),
            self.system.nominal,
        )
        self.instance = uuid.uuid4().hex[:12]
        self.load_error = ""
        self.nc = nc
        self._own_nc = nc is None
        self._kv: KeyValue | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self._dirty = asyncio.Event()
        self._published_seq = -1
        self._failing = False
        self._current: tuple[int, str, GuardState] | None = None
        self._managers: list[Any] = []

    def __repr__(self) -> str:
        c = self.core
        return (
            f"<Guardian {self.name!r} {c.state} request={c.request} mode={c.mode} "
            f"status={c.status} system={self.system.path.name}>"
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, claim the name, publish the first view, start running user code.

        Raises:
            DuplicateName: a live guardian already holds the name.
            AuthError, BusUnavailable, ConfigError: the bus refused or could not be reached.
        """
        config = self.config or load_config()[0]
        self.config = config
        self._replicas = config.jetstream_replicas
        self._loop = asyncio.get_running_loop()
        if self.nc is None:
            check_credential(config, self.name)
            self.nc = await bus.connect(
                config,
                "guardian",
                inbox_prefix=guardian_inbox(self.name),
                name=f"corral-guardian-{self.name}",
            )
        try:
            await claim_name(self.nc, self.name)
            self._kv = await open_bucket(self.nc, create=True, replicas=self._replicas)
            self._subs.append(
                await self.nc.subscribe(subjects.guardian(self.name, "*"), cb=self._on_message)
            )
            await self.nc.flush()
            await until_reachable(self.nc, self.name)
            await self._attach_managers(self.system)
            await self._put(self.view())
        except BaseException:
            await self._close_bus()
            raise
        self._tasks = [
            asyncio.create_task(self._publisher(), name=f"guardian-{self.name}-publish"),
            asyncio.create_task(self._heartbeat(), name=f"guardian-{self.name}-beat"),
        ]
        self._worker = threading.Thread(
            target=self._work, name=f"guardian-{self.name}", daemon=True
        )
        self._worker.start()
        log.info(
            "guardian started",
            extra={
                "guardian": self.name,
                "system": str(self.system.path),
                "state": self.core.state,
            },
        )

    async def stop(self) -> None:
        """Stop running user code, publish a last view (not alive), and disconnect."""
        if self.nc is None or self._loop is None:
            return  # never started
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._worker is not None:
            # A state blocked in user code cannot be interrupted; do not wait for it forever.
            await asyncio.to_thread(self._worker.join, 5.0)
        for manager in self._managers:
            await manager.detach()
        with contextlib.suppress(CorralError, nats.errors.Error, OSError):
            await self._put(msgspec.structs.replace(self.view(), alive=False))
        await self._close_bus()

    async def _close_bus(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []
        if self._own_nc and self.nc is not None:
            await self.nc.close()

    async def serve_forever(self) -> None:
        """Start, run until cancelled, then stop.

        Raises:
            DuplicateName, AuthError, BusUnavailable, ConfigError: as :meth:`start`.
        """
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())

    async def _attach_managers(self, system: System) -> None:
        assert self.nc is not None and self._loop is not None and self.config is not None
        for manager in self._managers:
            await manager.detach()
        self._managers = system.managers()
        for manager in self._managers:
            await manager.attach(self.nc, self._loop, self.name, self.config)

    # --- the view ------------------------------------------------------------------------

    def view(self) -> wire.GuardianView:
        """What viewers see now (taken under the lock)."""
        with self._lock:
            return view_of(self.core, self.instance, str(self.system.path), self.load_error)

    def _changed(self) -> None:
        """From any thread: a new view is due."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(self._dirty.set)

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            view = self.view()
            if view.seq == self._published_seq:
                continue
            await self._try_put(view)

    async def _heartbeat(self) -> None:
        assert self.config is not None
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            await self._try_put(self.view())

    async def _try_put(self, view: wire.GuardianView) -> None:
        """Publish, logging once when publishing starts failing and once when it works again."""
        try:
            await self._put(view)
        except (CorralError, nats.errors.Error, OSError) as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "guardian views not published (retrying every heartbeat): %s",
                    exc,
                    extra={"guardian": self.name},
                )
            return
        if self._failing:
            self._failing = False
            log.info("guardian views published again", extra={"guardian": self.name})

    async def _put(self, view: wire.GuardianView) -> None:
        assert self.nc is not None
        if self._kv is None:
            self._kv = await open_bucket(self.nc, create=True, replicas=self._replicas)
        try:
            await self._kv.put(self.name, msgspec.msgpack.encode(view))
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            # The bucket is in memory: a restarted server lost it. Make it again.
            self._kv = await open_bucket(self.nc, create=True, replicas=self._replicas)
            await self._kv.put(self.name, msgspec.msgpack.encode(view))
        self._published_seq = max(self._published_seq, view.seq)

    # --- requests ------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        reply: msgspec.Struct
        try:
            kind = _VERBS.get(verb)
            if kind is None:
                raise GuardianRefused(
                    f"guardian {self.name!r} has no verb {verb!r}; verbs: {', '.join(_VERBS)}"
                )
            reply = await self._handle(wire.decode(msg.data, kind, msg.headers, limit=65536))
        except CorralError as exc:
            reply = wire.error_reply(exc)
        if msg.reply:
            assert self.nc is not None
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(msg.reply, wire.encode(reply), headers=wire.HEADERS)

    async def _handle(self, req: Any) -> msgspec.Struct:
        if isinstance(req, wire.GuardianViewRequest):
            return self.view()
        if isinstance(req, wire.GuardianGraphRequest):
            return self._graph()
        if isinstance(req, wire.GuardianReload):
            try:
                await self.reload()
            except SystemLoadError as exc:  # the asker's answer: refused, old code running
                raise GuardianRefused(f"{exc}\n(the previous code keeps running)") from None
            return self.view()
        with self._lock:
            c = self.core
            if isinstance(req, wire.GuardianRequest):
                c.set_request(req.state, Requester(req.by, req.manager))
            elif isinstance(req, wire.GuardianMode):
                # A mode that does not exist was refused when the message was decoded.
                c.set_mode(req.mode, Requester(req.by, req.manager))
            elif isinstance(req, wire.GuardianRevive):
                c.revive(Requester(req.by, req.manager))
            elif isinstance(req, wire.GuardianPause):
                c.set_paused(req.paused)
        # Who asked what, in the process's log (the controller's audit log is for commands).
        log.info(
            "guardian request",
            extra={
                "guardian": self.name,
                "request": type(req).__name__,
                "by": req.by,
                "as_manager": getattr(req, "manager", False),
                "target": getattr(req, "state", None) or getattr(req, "mode", None),
            },
        )
        self._wake.set()
        self._changed()
        return self.view()

    def _graph(self) -> wire.GuardianGraph:
        with self._lock:
            graph = self.core.graph
        return graph_of(graph, self.view())

    async def reload(self) -> None:
        """Load the system module again, keeping state, request and mode.

        Raises:
            SystemLoadError: the new module failed to load; the old one keeps running and the
                view shows the error.
            GuardianRefused: the new module lacks the current state (the old one keeps running).
        """
        try:
            new = await asyncio.to_thread(load_system, self.system.path)
            with self._lock:
                self.core.reloaded(new.graph, new.nominal)
                self.system = new
                self._current = None
                self.load_error = ""
        except (SystemLoadError, GuardianRefused) as exc:
            self.load_error = str(exc)
            self.core.changed()
            self._changed()
            log.warning("guardian reload failed", extra={"guardian": self.name, "error": str(exc)})
            raise
        await self._attach_managers(new)
        log.info("guardian reloaded", extra={"guardian": self.name})
        self._wake.set()
        self._changed()

    # --- the worker thread -----------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping:
            self._wake.clear()
            with self._lock:
                step = self.core.next_step()
            if step is None:
                self._wake.wait()
                continue
            if step.wait and self._wake.wait(self.cycle):
                continue  # news while waiting: decide again
            if self._stopping:
                return
            self._execute(step)

    def _execute(self, step: Step) -> None:
        notes: list[str] = []
        logged: list[str] = []
        step_notes.current = notes
        step_notes.logged = logged
        step_notes.guardian = self.name
        try:
            target = self._target(step)
            result = getattr(target, step.method)()
        except BaseException as exc:  # user code: anything it raises is its ERROR
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = "".join(traceback.format_exception(exc)).rstrip()
            with self._lock:
                current = self.core.step_failed(step, text)
            if current:
                log.error(
                    "guardian state raised",
                    extra={"guardian": self.name, "state": step.state, "error": str(exc)},
                )
        else:
            with self._lock:
                self.core.step_done(step, result, tuple(notes))
        finally:
            step_notes.current = None
            step_notes.logged = None
            if logged:
                with self._lock:
                    self.core.logged(logged)
        self._changed()

    def _target(self, step: Step) -> GuardState:
        """The state object whose method runs: a new one on entry, the same one after."""
        current = self._current
        if step.method == "main" or current is None or current[:2] != (step.epoch, step.state):
            cls = self.system.classes[step.state]
            obj = cls()
            obj.guardian = self.name
            self._current = current = (step.epoch, step.state, obj)
        return current[2]
