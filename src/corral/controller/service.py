"""The controller: the I/O shell around the registry core, and its lifecycle.

It copies bus messages into :class:`~corral.core.registry.Registry` and the registry's
decisions back out (:mod:`corral.controller.node_messages`): replies to joins, "join again"
to unknown heartbeats, status transitions to the store. Writes are batched by
:mod:`corral.controller.registry_commits` — transitions are flushed every tick, the heartbeat
times of live nodes every ``persist_interval`` — so a thousand heartbeats a second cost one
transaction, not a thousand. It announces itself on ``corral.ctl.announce`` so that nodes
started before it find it (SEER's ``pingExperiment``), leads or stands by
(:mod:`corral.controller.leadership`), and starts and stops every service in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from corral import bus, subjects, wire
from corral.config import Config
from corral.controller.api_bus import ApiBus
from corral.controller.api_calls import ApiCalls
from corral.controller.command_api import CommandEndpoints
from corral.controller.commands import CommandService
from corral.controller.functions import Dispatch
from corral.controller.groups import GroupService
from corral.controller.idempotency import Submissions
from corral.controller.leadership import Leadership
from corral.controller.node_admin import expire_left, expire_left_loop
from corral.controller.node_messages import NodeMessages
from corral.controller.parts import ControllerParts, HttpFactory, HttpServer
from corral.controller.registry_commits import RegistryCommits
from corral.controller.reports import ReportService
from corral.controller.tasks import TaskService
from corral.core.limits import CallLimiter
from corral.core.registry import Registry
from corral.errors import (
    CorralError,
    NotLeader,
    Refused,
    UsageError,
)
from corral.records import AuditEntry
from corral.security import Authority
from corral.store import Store, open_store
from corral.store.lock import StoreLock, lock_store
from corral.store.writes import Backoff

__all__ = ["Controller"]

log = logging.getLogger("corral.controller")


class Controller:
    """Registry of nodes over the bus, persisted in the store.

    Args:
        config: bus, store and timing settings.
        clock: wall-clock source (seconds since the epoch); injectable for tests.
        http: builds the HTTP server (API, dashboard) once started, if ``api_port`` is not
            -1; without it the controller serves the bus only. :mod:`corral.app` gives one.
    """

    def __init__(
        self,
        config: Config,
        clock: Callable[[], float] = time.time,
        *,
        http: HttpFactory | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.id = uuid.uuid4().hex
        self.started = clock()
        self.registry = Registry(config.down_after)
        self.counters: Counter[str] = Counter()
        self.store: Store | None = None
        self.nc: bus.NATS | None = None
        #: the process-group coordinator (socketComm), once started
        self.groups: GroupService | None = None
        #: the task scheduler and the HTTP API (issue #4), once started
        self.tasks: TaskService | None = None
        self.api: HttpServer | None = None
        self._http = http
        #: the command and report endpoints on the bus, once started
        self.endpoints: CommandEndpoints | None = None
        #: the API's functions on the bus (beside HTTP), once started
        self.api_bus: ApiBus | None = None
        #: idempotency keys of submissions (set once the store is open)
        self.submissions: Submissions
        self._tasks: list[asyncio.Task[None]] = []
        #: the heartbeats' subscription, and since when its backlog defers DOWN (if it does)
        self._beats: Any = None
        self._backlog_since: float | None = None
        self._was_deaf = False
        #: seconds between writes of every live node's last-seen time
        self.persist_interval = 5.0
        #: which controller leads (the store's lease), once started
        self.leadership: Leadership | None = None
        self._round_trip: bus.RoundTrip | None = None
        #: set when another controller took over while this one led
        self.deposed = asyncio.Event()
        self._led = False
        self._lock: StoreLock | None = None
        #: the command router (SEER): serials, outcomes, live delivery and the durable log
        self.commands = CommandService(config, self.registry, clock, self.wake)
        #: the registry's and the commands' group commit, and the replies waiting on it
        self.commits = RegistryCommits(self.registry, self.commands)
        #: the handlers of node and control messages (joins, heartbeats, the node list...)
        self.messages = NodeMessages(
            config=config,
            registry=self.registry,
            commands=self.commands,
            commits=self.commits,
            counters=self.counters,
            clock=clock,
            identity=self.id,
            started=self.started,
        )
        #: node reports, aggregated and pushed to sinks (SEER REPORT / doUpdates)
        self.reports = ReportService(self.registry)

    def __repr__(self) -> str:
        return f"<Controller {self.id[:8]} {self.config.bus_url} {self.registry!r}>"

    def audit(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the audit log: it is written with the next group commit."""
        self.commits.audit(entry)

    def wake(self) -> None:
        """Wake the group commit (a registry record was changed in place, say)."""
        self.commits.wake()

    @property
    def backoff(self) -> Backoff:
        """Retries of transient store failures by the registry's group commit."""
        return self.commits.backoff

    def parts(self) -> ControllerParts:
        """The started controller's services, for the HTTP API and the dashboard.

        Raises:
            UsageError: the controller has not started yet.
        """
        if (
            self.store is None
            or self.nc is None
            or self.tasks is None
            or self.groups is None
            or self.endpoints is None
        ):
            raise UsageError("the controller has not started: call start() first")
        return ControllerParts(
            id=self.id,
            started=self.started,
            config=self.config,
            clock=self.clock,
            registry=self.registry,
            commands=self.commands,
            endpoints=self.endpoints,
            reports=self.reports,
            groups=self.groups,
            tasks=self.tasks,
            submissions=self.submissions,
            store=self.store,
            nc=self.nc,
            audit=self.audit,
            wake=self.wake,
            counters=self.counters,
            backoff=self.backoff,
            leadership=self.leadership,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, connect, serve reads, and lead if no other controller does.

        A controller that finds another leading stays a standby: it serves reads from the
        store and refuses writes with :class:`~corral.errors.NotLeader`, and takes over
        when the leader's lease expires (:mod:`corral.controller.leadership`).

        Raises:
            StoreError: the store cannot be opened.
            AuthError, BusUnavailable: the bus refused or could not be reached.
            Refused: another controller holds this SQLite store.
        """
        store = self.store = self.commits.store = await open_store(
            self.config.store_url, self.config.store_fsync_interval
        )
        try:
            self._lock = lock_store(store.url)
        except Refused:
            await store.close()
            raise
        store.set_fence(self.id, -1, None)  # a standby writes nothing
        self.submissions = Submissions(store, self.config.idempotency_window, self.clock)
        await self._load_nodes()
        nc = await bus.connect(self.config, "controller", wait=30.0, client=bus.StampedNATS)
        self.nc = self.commits.nc = self.messages.nc = nc
        self.groups = GroupService(
            nc, self.config.down_after, self.clock, self.config.max_message_bytes
        )
        self.reports.nc = nc
        self.tasks = TaskService(
            config=self.config,
            clock=self.clock,
            registry=self.registry,
            store=store,
            nc=nc,
            counters=self.counters,
        )
        self.endpoints = CommandEndpoints(
            commands=self.commands,
            reports=self.reports,
            store=store,
            submissions=self.submissions,
            reply=self.messages.reply,
            reject=self.messages.reject,
            after_commit=self.commits.after_commit,
        )
        self._round_trip = bus.RoundTrip(nc)
        self.leadership = Leadership(
            self.config, store, self.id, self.started, self._lead, self._deposed,
            probe=self._round_trip,
        )  # fmt: skip
        self.messages.leadership = self.leadership
        await self.leadership.look()
        if self.config.api_port >= 0 and self._http is not None:
            self.api = self._http(self.parts())
            await self.api.start()
            self.leadership.address = self.config.advertise_url or self.api.url
        if not await self.leadership.try_lead():
            log.info(
                "standby",
                extra={"id": self.id[:8], "leader": self.leadership.leader or "-"},
            )
            self._tasks.append(asyncio.create_task(self._standby_loop(), name="standby"))
        self.leadership.start()

    async def _load_nodes(self) -> None:
        assert self.store is not None
        rows = await self.store.load_nodes()
        self.registry.nodes.clear()
        self.registry.load(rows, self.clock())

    async def _standby_loop(self) -> None:
        """A standby's node list follows the store (what the leader last wrote)."""
        assert self.leadership is not None
        while not self.leadership.leading:
            await asyncio.sleep(max(1.0, self.persist_interval / 5))
            if self.leadership.leading:
                return
            try:
                await self._load_nodes()
            except CorralError as exc:
                log.warning("standby could not read the nodes: %s", exc)

    async def _lead(self, epoch: int) -> None:
        """Take over at ``epoch``: load what the last leader left in the store, then serve
        the nodes, the commands, the tasks and the API on the bus."""
        assert self.store is not None and self.nc is not None
        assert self.groups is not None and self.tasks is not None
        assert self.endpoints is not None
        nc = self.nc
        if isinstance(nc, bus.StampedNATS):
            nc.stamp = {wire.EPOCH_HEADER: str(epoch)}
        self._led = True
        self.commands.epoch = epoch
        await self._load_nodes()
        await self.submissions.load()
        self._reconcile_revocations()
        await self.groups.start()
        await self.commands.start(nc, self.store)
        await self.tasks.start()
        messages = self.messages
        for subject, (kind, handle) in messages.subscriptions().items():
            sub = await nc.subscribe(
                subject, cb=messages.handler(kind, handle), pending_msgs_limit=100_000
            )
            if handle == messages.on_heartbeat:
                self._beats = sub
        # Commands, their reports and results may be as large as max_command_bytes.
        for subject, (kind, handle) in self.endpoints.subscriptions().items():
            handler = messages.handler(kind, handle, limit=self.config.max_command_bytes)
            await nc.subscribe(subject, cb=handler, pending_msgs_limit=100_000)
        # The API functions on the bus, beside HTTP (issue #15): one dispatch path for both.
        self.api_bus = ApiBus(
            Dispatch(ApiCalls(self.parts())),
            nc,
            self.config.request_limit,
            CallLimiter(self.config.api_rate, self.config.api_burst, self.config.api_max_in_flight),
        )
        await self.api_bus.start()
        await nc.flush()
        self._tasks += [
            asyncio.create_task(self._announce_loop(), name="announce"),
            asyncio.create_task(self._tick_loop(), name="tick"),
            asyncio.create_task(self.commits.run(), name="commit"),
            asyncio.create_task(self._report_loop(), name="reports"),
            asyncio.create_task(
                expire_left_loop(self.expire_left, min(10.0, 5 * self.config.heartbeat_interval)),
                name="left-expiry",
            ),
        ]
        log.info(
            "controller leads",
            extra={
                "id": self.id[:8],
                "epoch": epoch,
                "bus": self.config.bus_url,
                "nodes": len(self.registry),
            },
        )

    def _deposed(self, why: str) -> None:
        """Another controller leads: stop publishing at once (the bus connection is cut, not
        drained) and end :meth:`serve_forever`, which tears the rest down."""
        if self.nc is not None and not self.nc.is_closed:
            self._tasks.append(asyncio.create_task(self.nc.close(), name="cut-bus"))
        self.deposed.set()

    async def expire_left(self) -> list[str]:
        """Forget the nodes LEFT for longer than ``left_expiry`` (see
        :func:`~corral.controller.node_admin.expire_left`).

        Returns:
            The names forgotten.
        """
        return await expire_left(self.registry, self.store, self.config, self.clock(), self.audit)

    def _reconcile_revocations(self) -> None:
        """Mark REVOKED the nodes revoked (`corral revoke`) while this controller was away."""
        if not Authority.exists(self.config.data_path):
            return  # the authority lives on another host; revocations arrive as events
        authority = Authority.load(self.config.data_path)
        enrolled = authority.enrolled()
        now = self.clock()
        for name in list(self.registry.nodes):
            if name in enrolled and not authority.is_enrolled(name):
                self.commits.record(self.registry.revoke(name, now))

    async def stop(self) -> None:
        """Stop serving, flush what is pending, let the lease go, close the bus and the store.

        A deposed controller flushes nothing (its store refuses it anyway) and cuts the bus
        instead of draining it.
        """
        if self.leadership is not None:
            # Stopping the lease loop may end a takeover half-way: that deposes it too.
            await self.leadership.stop(release=False)
        deposed = self.deposed.is_set()
        if self._round_trip is not None:
            self._round_trip.close()
        await self.commands.stop()
        await self._stop_loops(deposed)
        if self.endpoints is not None:  # keyed sends not yet answered end here
            await self.endpoints.stop()
        if self.api_bus is not None:
            await self.api_bus.stop()
        if self.api is not None:
            await self.api.stop()
        if self.tasks is not None and self._led:
            await self.tasks.stop(commit=not deposed)
        if self.nc is not None and not self.nc.is_closed:
            await (self.nc.close() if deposed else self.nc.drain())
        if self._led and not deposed:
            with contextlib.suppress(CorralError):
                await self.commits.flush(all_live=True, batch=self.commands.take_batch())
            if self.leadership is not None and self.leadership.leading:
                await self.leadership.release()
        if self.store is not None:
            await self.store.close()
        if self._lock is not None:
            self._lock.release()
        log.info("controller stopped", extra={"id": self.id[:8]})

    async def _stop_loops(self, deposed: bool) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            if deposed:  # its loops may have failed on the cut bus: nothing to report
                await asyncio.gather(task, return_exceptions=True)
                continue
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def serve_forever(self) -> None:
        """Start, then run until cancelled or deposed.

        Raises:
            NotLeader: another controller took over while this one led (it was paused, or
                cut off from the store): everything is torn down, nothing it tried since
                landed. Start a new :class:`Controller` to serve as a standby (``corral
                controller`` does).
        """
        try:
            await self.start()
        except BaseException:
            try:  # close what did start (the store, say): the caller may try again
                await self.stop()
            except Exception:  # noqa: BLE001 - the start's own error is the one to raise
                log.exception("could not stop what had started")
            raise
        try:
            await self.deposed.wait()
        finally:
            await self.stop()
        raise NotLeader(
            "this controller was deposed: another one leads now",
            leader=self.leadership.leader if self.leadership is not None else "",
        )

    # --- loops --------------------------------------------------------------------------

    async def _announce_loop(self) -> None:
        assert self.nc is not None
        while True:
            announce = wire.Announce(
                controller=self.id,
                started=self.started,
                heartbeat_interval=self.config.heartbeat_interval,
                last_serial=self.commands.stream.last_live,
                epoch=self.commands.epoch,
            )
            await self.nc.publish(subjects.ANNOUNCE, wire.encode(announce), headers=wire.HEADERS)
            await asyncio.sleep(self.config.announce_interval)

    async def _tick_loop(self) -> None:
        # Tick often enough that DOWN is declared within a fraction of a second of the limit.
        period = min(0.25, self.config.down_after / 4)
        last_persist = self.clock()
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            if not self._beats_waiting(now) and not self._deaf():
                self.commits.record(self.registry.expire(now))
            self.commands.tick()
            if self.groups is not None:
                await self.groups.tick()
            if now - last_persist >= self.persist_interval:
                self.commits.persist_all = True
                last_persist = now
            self.commits.wake()

    def _deaf(self) -> bool:
        """Whether this controller's own bus does not answer (a partition): the nodes'
        silence is then its own, not theirs, and DOWN waits (it steps down after a lease).
        A controller that stepped down judges no silence either."""
        if self.leadership is not None and self.leadership.role == "deposed":
            return True
        watch = self.leadership.bus if self.leadership is not None else None
        deaf = watch is not None and watch.deaf()
        if deaf and not self._was_deaf:
            log.warning("the bus does not answer: DOWN deferred")
        self._was_deaf = deaf
        return deaf

    def _beats_waiting(self, now: float) -> bool:
        """Whether a backlog of heartbeats received but not yet read waits on the loop
        (more than a tenth of a second's worth). Silences are judged once it is read, or
        the controller's own lag would mark live nodes DOWN (issue #14); for ``down_after``
        at most, so an overloaded controller still detects failures, only later."""
        backlog = self._beats.pending_msgs if self._beats is not None else 0
        if backlog <= max(10, len(self.registry) / 10 / self.config.heartbeat_interval):
            self._backlog_since = None
            return False
        if self._backlog_since is None:
            self._backlog_since = now
            log.warning("%d heartbeats wait to be read: DOWN deferred", backlog)
        return now - self._backlog_since < self.config.down_after

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.report_interval)
            try:
                await self.reports.push()
            except Exception:  # a bus hiccup must not end the updates
                log.exception("report update failed")
