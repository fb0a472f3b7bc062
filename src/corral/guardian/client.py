"""Talking to guardians over the bus: requests, views, the key-value bucket, watching.

Used by the CLI, by :class:`~corral.guardian.NodeManager`, and by Python scripts::

    async with await GuardianClient.connect() as g:
        await g.request("SUS_MC1", "ALIGNED")
        async for view in g.watch("SUS_MC1"):
            print(view.state, view.status)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import getpass
import time
from collections.abc import AsyncGenerator, Iterable
from types import TracebackType
from typing import Any, Self

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue

from corral import bus, subjects, wire
from corral.config import Config, load_config
from corral.errors import (
    BusUnavailable,
    ConfigError,
    CorralError,
    DuplicateName,
    GuardianRefused,
    NoSuchGuardian,
    Timeout,
)
from corral.guardian.views import as_seen
from corral.security import ADMIN_INBOX, credential_name
from corral.states import GuardianMode, GuardianStatus

__all__ = [
    "GuardianClient",
    "check_credential",
    "claim_name",
    "decode_view",
    "open_bucket",
    "person",
    "send",
    "until_reachable",
]

#: Entries kept per key: enough for `watch` to show the recent past of a guardian.
HISTORY = 32


def person() -> str:
    """The name a request from a person carries (the login name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


async def open_bucket(nc: bus.NATS, *, create: bool, replicas: int = 1) -> KeyValue:
    """The guardian key-value bucket, created if missing and ``create`` is true.

    The bucket is held in memory: it holds live status that every guardian republishes each
    heartbeat (and after a reconnect), and a file-backed bucket fsyncs every put.

    ``replicas``: the copies a JetStream cluster keeps when it is created here
    (``jetstream_replicas``).

    Raises:
        NoSuchGuardian: the bucket does not exist and ``create`` is false.
        BusUnavailable: JetStream is not enabled on the bus.
    """
    js = nc.jetstream()
    try:
        return await js.key_value(subjects.GUARDIAN_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise NoSuchGuardian(
                "no guardian has ever run on this bus (no guardian bucket): start one with "
                "`corral guardian run SYSTEM.py --name NAME`"
            ) from None
    except nats.errors.NoRespondersError:
        raise BusUnavailable("JetStream is not enabled on the bus; guardians need it") from None
    config = api.KeyValueConfig(
        bucket=subjects.GUARDIAN_BUCKET,
        history=HISTORY,
        storage=api.StorageType.MEMORY,
        replicas=replicas,
        description="corral guardians: one key per guardian, its latest view",
    )
    return await js.create_key_value(config)


def decode_view(data: bytes) -> wire.GuardianView:
    """Decode a guardian view stored in the bucket (no NATS headers there).

    Raises:
        MalformedMessage: the bytes are not a view.
    """
    return wire.decode(data, wire.GuardianView, check_headers=False)


async def send(
    nc: bus.NATS, name: str, verb: str, msg: msgspec.Struct, reply_type: Any, timeout: float
) -> Any:
    """Send ``msg`` to guardian ``name``'s ``verb`` subject and decode its reply.

    Raises:
        NoSuchGuardian: no guardian of that name answers.
        Timeout: it did not answer in time.
        GuardianRefused: it refused (the reason says why and what to do).
    """
    subject = subjects.guardian(subjects.check_name(name, "guardian"), verb)
    try:
        reply = await nc.request(subject, wire.encode(msg), timeout=timeout, headers=wire.HEADERS)
    except nats.errors.NoRespondersError:
        raise NoSuchGuardian(
            f"no guardian named {name!r} is running: start it with "
            f"`corral guardian run SYSTEM.py --name {name}` (`corral guardian list` shows them)"
        ) from None
    except nats.errors.TimeoutError:
        raise Timeout(f"guardian {name!r} did not answer {verb} within {timeout}s") from None
    return wire.decode_reply(reply.data, reply_type, reply.headers)


_VIEW_PROBE = wire.encode(wire.GuardianViewRequest())


def check_credential(config: Config, name: str) -> None:
    """Refuse another guardian's credential for guardian ``name``, clearly (the bus would
    refuse its subscriptions quietly).

    Raises:
        ConfigError: the role's credential belongs to someone else.
    """
    path = config.creds_path("guardian")
    if not path.exists():
        return  # bus.connect names the missing file and the fix
    holder = credential_name(path.read_text())
    if holder not in ("guardian:*", f"guardian:{name}"):
        raise ConfigError(
            f"credential {path} is for {holder!r}, not guardian {name!r}: use the file "
            f"`corral guardian enroll {name}` wrote, or the data directory's auth/guardian.creds"
        )


async def claim_name(nc: bus.NATS, name: str) -> None:
    """Refuse to start guardian ``name`` if a live one answers to it.

    Raises:
        DuplicateName: a live guardian holds the name (the error says where).
    """
    try:
        reply = await nc.request(
            subjects.guardian(name, "view"), _VIEW_PROBE, timeout=1.0, headers=wire.HEADERS
        )
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return
    try:
        other = wire.decode_reply(reply.data, wire.GuardianView, reply.headers)
        where = f"on host {other.host} (pid {other.pid})"
    except CorralError:
        where = "elsewhere"
    raise DuplicateName(
        f"guardian name {name!r} is held by a live guardian {where}; stop it or choose another name"
    )


async def until_reachable(nc: bus.NATS, name: str, within: float = 5.0) -> None:
    """Ask guardian ``name`` (ourselves) until the bus routes its subjects to it.

    The server can answer "no responders" for a moment after a new subscription, right after
    :func:`claim_name` probed the same subject (see the Agent's self-probe).

    Raises:
        CorralError: still not routed after ``within`` seconds.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            await nc.request(
                subjects.guardian(name, "view"), _VIEW_PROBE, timeout=1.0, headers=wire.HEADERS
            )
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise CorralError(
                    f"guardian {name!r} subscribed but the bus does not route its subjects to "
                    f"it after {within}s; check the bus (nats-server log)"
                ) from None
            await asyncio.sleep(0.02)


async def _stop(watcher: Any) -> None:
    """Stop a KV watcher, bounded: its connection may be closed or reconnecting by now."""
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await asyncio.wait_for(watcher.stop(), 2.0)


class GuardianClient:
    """A connection for asking guardians things and watching them.

    Args:
        nc: a connected client whose credential may publish ``corral.guardian.>``.
        by: who the requests come from (default: the login name, a person).
        manager: the requests come from a manager guardian named ``by``.
        timeout: seconds to wait for each answer.
        stale_after: seconds without a heartbeat before a guardian's view reads
            CONNECTION_ERROR (the configuration's ``down_after``; :meth:`connect` sets it).
    """

    def __init__(
        self,
        nc: bus.NATS,
        *,
        by: str | None = None,
        manager: bool = False,
        timeout: float = 5.0,
        stale_after: float = 3.0,
    ) -> None:
        self.nc = nc
        self.by = by or person()
        self.manager = manager
        self.timeout = timeout
        self.stale_after = stale_after
        self._owned = False

    @classmethod
    async def connect(cls, config: Config | None = None, *, by: str | None = None) -> Self:
        """Connect with the data directory's admin credential (a person's requests).

        Raises:
            ConfigError, AuthError, BusUnavailable: the bus refused or could not be reached.
        """
        config = config or load_config()[0]
        nc = await bus.connect(config, "admin", inbox_prefix=ADMIN_INBOX, name="corral-guardian")
        client = cls(nc, by=by, stale_after=config.down_after)
        client._owned = True
        return client

    async def close(self) -> None:
        """Close the connection if this client opened it."""
        if self._owned:
            await self.nc.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<GuardianClient by={self.by!r} manager={self.manager}>"

    async def _send(self, name: str, verb: str, msg: msgspec.Struct) -> wire.GuardianView:
        view: wire.GuardianView = await send(
            self.nc, name, verb, msg, wire.GuardianView, self.timeout
        )
        return view

    async def request(self, name: str, state: str) -> wire.GuardianView:
        """Ask guardian ``name`` to walk to ``state``.

        Returns:
            Its view right after it took the request.

        Raises:
            NoSuchGuardian, Timeout, GuardianRefused: see :func:`send`.
        """
        return await self._send(
            name, "request", wire.GuardianRequest(state=state, by=self.by, manager=self.manager)
        )

    async def set_mode(self, name: str, mode: str) -> wire.GuardianView:
        """Set guardian ``name``'s mode (MANAGED records the requester as its manager).

        Raises:
            GuardianRefused: ``mode`` is not AUTO, MANAGED or MANUAL (any case).
            NoSuchGuardian, Timeout: see :func:`send`.
        """
        msg = wire.GuardianMode(mode=_mode(mode), by=self.by, manager=self.manager)
        return await self._send(name, "mode", msg)

    async def revive(self, name: str) -> wire.GuardianView:
        """Re-request guardian ``name``'s last request (clears a stall).

        Raises:
            NoSuchGuardian, Timeout, GuardianRefused: see :func:`send`.
        """
        return await self._send(
            name, "revive", wire.GuardianRevive(by=self.by, manager=self.manager)
        )

    async def pause(self, name: str, paused: bool = True) -> wire.GuardianView:
        """Pause (or resume) guardian ``name``.

        Raises:
            NoSuchGuardian, Timeout, GuardianRefused: see :func:`send`.
        """
        return await self._send(name, "pause", wire.GuardianPause(paused=paused, by=self.by))

    async def reload(self, name: str) -> wire.GuardianView:
        """Reload guardian ``name``'s system module (a failing import keeps the old code).

        Raises:
            NoSuchGuardian, Timeout: see :func:`send`.
            GuardianRefused: the new module failed to load (the traceback is the message) or
                lacks the current state; the old code keeps running.
        """
        return await self._send(name, "reload", wire.GuardianReload(by=self.by))

    async def view(self, name: str) -> wire.GuardianView:
        """Guardian ``name``'s current view, from the guardian itself.

        Raises:
            NoSuchGuardian, Timeout: see :func:`send`.
        """
        return await self._send(name, "view", wire.GuardianViewRequest())

    async def graph(self, name: str) -> wire.GuardianGraph:
        """Guardian ``name``'s states and edges, with its view.

        Raises:
            NoSuchGuardian, Timeout: see :func:`send`.
        """
        graph: wire.GuardianGraph = await send(
            self.nc, name, "graph", wire.GuardianGraphRequest(), wire.GuardianGraph, self.timeout
        )
        return graph

    async def list(self) -> list[wire.GuardianView]:
        """The latest view of every guardian that ever published one, by name.

        A guardian that stopped, or whose last heartbeat is older than ``stale_after``, reads
        CONNECTION_ERROR and not OK (:func:`~corral.guardian.views.as_seen`).

        Raises:
            NoSuchGuardian: no guardian ever ran on this bus.
        """
        kv = await open_bucket(self.nc, create=False)
        views: list[wire.GuardianView] = []
        watcher = await kv.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=self.timeout)  # type: ignore[no-untyped-call]
                if entry is None:
                    break
                if entry.value and entry.operation is None:
                    try:
                        views.append(as_seen(decode_view(entry.value), self.stale_after))
                    except CorralError:
                        continue
        except nats.errors.TimeoutError:
            raise Timeout("the guardian bucket did not answer in time") from None
        finally:
            await _stop(watcher)
        return sorted(views, key=lambda v: v.name)

    async def top(self, names: Iterable[str] = ()) -> tuple[bool, builtins.list[wire.GuardianView]]:
        """A monitor-only top node: every guardian's (or ``names``') OK, and all of them
        together (LIGO's top node aggregating its nodes' OK). It requests nothing.

        Args:
            names: the guardians to watch over (default: every guardian in the bucket).

        Returns:
            ``(ok, views)``: ``ok`` is True when every view is OK (a named guardian never seen
            counts as a CONNECTION_ERROR view); ``views`` by name.

        Raises:
            NoSuchGuardian: no guardian ever ran on this bus.
        """
        wanted = list(dict.fromkeys(names))
        views = {v.name: v for v in await self.list()}
        if wanted:
            views = {
                n: views.get(n)
                or wire.GuardianView(
                    name=n,
                    instance="",
                    seq=0,
                    state="",
                    request="",
                    mode="",
                    status=GuardianStatus.CONNECTION_ERROR,
                    alive=False,
                )
                for n in wanted
            }
        shown = [views[n] for n in sorted(views)]
        return bool(shown) and all(v.ok for v in shown), shown

    async def watch(
        self, name: str = ">", *, history: bool = True
    ) -> AsyncGenerator[wire.GuardianView | None, None]:
        """Every view guardian ``name`` publishes (``>``: every guardian's), live.

        Yields ``None`` once, after the stored past has been replayed. If no guardian ever
        ran on this bus, it waits for the first to start.
        """
        while True:
            try:
                kv = await open_bucket(self.nc, create=False)
                break
            except NoSuchGuardian:
                await asyncio.sleep(0.25)  # nothing to subscribe to until the bucket exists
        watcher = await kv.watch(name, include_history=history)
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=3600)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    continue  # a quiet hour; keep watching
                if entry is None:
                    yield None
                elif entry.value and entry.operation is None:
                    try:
                        yield decode_view(entry.value)
                    except CorralError:
                        continue
        finally:
            await _stop(watcher)


def _mode(text: str) -> GuardianMode:
    """The mode ``text`` names, in any case.

    Raises:
        GuardianRefused: it names none.
    """
    try:
        return GuardianMode(text.upper())
    except ValueError:
        raise GuardianRefused(f"no mode {text!r}: use AUTO, MANAGED or MANUAL") from None
