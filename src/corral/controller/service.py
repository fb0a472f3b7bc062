"""The controller: the I/O shell around the registry core.

It copies bus messages into :class:`~corral.core.registry.Registry` and the registry's
decisions back out: replies to joins, "join again" to unknown heartbeats, status transitions
to the store. Writes are batched — transitions are flushed every tick, the heartbeat times of
live nodes every ``persist_interval`` — so a thousand heartbeats a second cost one transaction,
not a thousand. It announces itself on ``corral.ctl.announce`` so that nodes started before it
find it (SEER's ``pingExperiment``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from corral import bus, subjects, wire
from corral.config import Config
from corral.controller.api_bus import ApiBus
from corral.controller.api_calls import ApiCalls
from corral.controller.command_api import CommandEndpoints, bus_caller
from corral.controller.commands import Batch, CommandService
from corral.controller.functions import Dispatch
from corral.controller.groups import GroupService
from corral.controller.idempotency import Submissions
from corral.controller.leadership import Leadership
from corral.controller.node_admin import expire_left, expire_left_loop
from corral.controller.parts import ControllerParts, HttpFactory, HttpServer
from corral.controller.reports import ReportService
from corral.controller.tasks import TaskService
from corral.core.limits import CallLimiter
from corral.core.registry import Refusal, Registry
from corral.core.text import check_join_text
from corral.errors import (
    CorralError,
    NotLeader,
    RecordRefused,
    Refused,
    StoreError,
    UsageError,
)
from corral.records import AuditEntry, NodeRecord, Transition
from corral.security import Authority
from corral.states import NodeStatus
from corral.store import Store, open_store
from corral.store.lock import StoreLock, lock_store
from corral.store.writer import CommittedThenCancelled
from corral.store.writes import Backoff, Written, log_written

__all__ = ["Controller"]

log = logging.getLogger("corral.controller")


def _refusals(written: Written, kind: str) -> list[tuple[Any, str]]:
    return [(r.record, r.reason) for r in written.refused if r.kind == kind]


def _refusal(what: str, which: str, why: str) -> str:
    return (
        f"the store refused the {what} {which}: {why}. Nothing else was lost; check the "
        "text you sent for NUL or other control characters and values out of range"
    )


def _describe(**counts: int) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "nothing"


def _view(record: NodeRecord, behind: int = 0) -> wire.NodeView:
    fields = msgspec.structs.asdict(record)
    del fields["instance"]
    return wire.NodeView(**fields, behind=behind)


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
        self._pending: list[Transition] = []
        self._audit: list[AuditEntry] = []
        self._tasks: list[asyncio.Task[None]] = []
        #: (reply subject, payload, node whose record it waits for, or "")
        self._replies: list[tuple[str, bytes, str]] = []
        #: retries of transient store failures (docs/operations.md, "Poison-proof writes")
        self.backoff = Backoff()
        #: what the last failed flush held, for the log line that says what waits
        self._waiting = ""
        self._wake = asyncio.Event()
        self._persist_all = False
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
        self.commands = CommandService(config, self.registry, clock, self._wake.set)
        #: node reports, aggregated and pushed to sinks (SEER REPORT / doUpdates)
        self.reports = ReportService(self.registry)

    def __repr__(self) -> str:
        return f"<Controller {self.id[:8]} {self.config.bus_url} {self.registry!r}>"

    def audit(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the audit log: it is written with the next group commit."""
        self._audit.append(entry)
        self._wake.set()

    def wake(self) -> None:
        """Wake the group commit (a registry record was changed in place, say)."""
        self._wake.set()

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
        store = self.store = await open_store(
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
        self.nc = nc
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
            reply=self._reply,
            reject=self._reject,
            after_commit=self._after_commit,
        )
        self._round_trip = bus.RoundTrip(nc)
        self.leadership = Leadership(
            self.config, store, self.id, self.started, self._lead, self._deposed,
            probe=self._round_trip,
        )  # fmt: skip
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
        handlers: dict[str, tuple[type[Any], Callable[[Any, str, Any], Awaitable[None]]]] = {
            subjects.node_in_wildcard("join"): (wire.Join, self._on_join),
            subjects.node_in_wildcard("hb"): (wire.Heartbeat, self._on_heartbeat),
            subjects.node_in_wildcard("leave"): (wire.Leave, self._on_leave),
            subjects.ctl("nodes"): (wire.NodesRequest, self._on_nodes),
            subjects.ctl("stats"): (wire.StatsRequest, self._on_stats),
            subjects.ctl("auth"): (wire.AuthEvent, self._on_auth),  # refused: no sender
            subjects.ctl_as("auth", "*"): (wire.AuthEvent, self._on_auth),
            subjects.ctl("agents"): (wire.AgentsRequest, self._on_agents),
        }
        for subject, (kind, handle) in handlers.items():
            sub = await nc.subscribe(
                subject, cb=self._handler(kind, handle), pending_msgs_limit=100_000
            )
            if handle == self._on_heartbeat:
                self._beats = sub
        # Commands, their reports and results may be as large as max_command_bytes.
        for subject, (kind, handle) in self.endpoints.subscriptions().items():
            handler = self._handler(kind, handle, limit=self.config.max_command_bytes)
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
            asyncio.create_task(self._commit_loop(), name="commit"),
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
                self._record(self.registry.revoke(name, now))

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
                await self._flush(all_live=True, batch=self.commands.take_batch())
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
                self._record(self.registry.expire(now))
            self.commands.tick()
            if self.groups is not None:
                await self.groups.tick()
            if now - last_persist >= self.persist_interval:
                self._persist_all = True
                last_persist = now
            self._wake.set()

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

    def _record(self, changes: list[Transition]) -> None:
        for change in changes:
            log.info(
                f"node {change.new.lower()}",
                extra={"node": change.node, "was": change.old or "-", "reason": change.reason},
            )
        self._pending.extend(changes)

    def _after_commit(self, reply: str, payload: msgspec.Struct, node: str = "") -> None:
        """Send ``payload`` to ``reply`` once the current state is on disk (group commit).

        If ``node``'s record is refused by the store, an error is sent instead.
        """
        self._replies.append((reply, wire.encode(payload), node))
        self._wake.set()

    async def _commit_loop(self) -> None:
        """Batches every change since the last commit into one unit of the store's writer.

        The store's one writer commits it off the event loop, in one transaction with
        whatever else is pending (task instances, tokens...). Handlers never wait for the disk
        themselves (nats-py runs a subscription's handler one
        message at a time, so waiting would serialise joins into one fsync each); they queue
        their reply, and it is sent after the commit that made its change durable. A record
        the store refuses for its data is isolated and its caller answered with the reason
        (the rest commits); only transient failures are retried, with :attr:`backoff`.
        """
        assert self.nc is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            replies, self._replies = self._replies, []
            changes = self._pending[:]
            batch = self.commands.take_batch()
            try:
                written = await self._flush(all_live=self._persist_all, batch=batch)
                self._persist_all = False
            except CorralError as exc:
                self._replies[:0] = replies
                await self._write_failed(exc)
                self._wake.set()
                continue
            self.backoff.succeeded()
            refused_nodes = {r.name: why for r, why in _refusals(written, "nodes")}
            await self.commands.refuse(
                batch,
                {
                    row.serial: RecordRefused(_refusal("command", f"#{row.serial}", why))
                    for row, why in _refusals(written, "commands")
                },
            )
            for subject, data, node in replies:
                if node in refused_nodes:
                    why = _refusal("node record", repr(node), refused_nodes[node])
                    data = wire.encode(wire.ErrorReply(code="refused", error=why))
                await self.nc.publish(subject, data, headers=wire.HEADERS)
            for c in changes:
                event = wire.NodeEvent(
                    node=c.node, old=c.old, new=NodeStatus(c.new), at=c.at, reason=c.reason
                )
                await self.nc.publish(
                    subjects.node_events(c.node), wire.encode(event), headers=wire.HEADERS
                )
            await self.commands.committed(batch)

    async def _write_failed(self, exc: CorralError) -> None:
        """A flush failed whole (a transient failure): log what waits, back off, and once
        :attr:`backoff` is past its bound, answer who waits with the error."""
        now = time.monotonic()
        delay = self.backoff.failed(now)
        log.error(
            "store write failed (%s); waiting: %s; retry %d in %.2fs",
            exc,
            self._waiting or "nothing",
            self.backoff.failures,
            delay,
        )
        if self.backoff.expired(now):
            await self._give_up(exc)
        await asyncio.sleep(delay)

    async def _give_up(self, exc: CorralError) -> None:
        """Answer every caller still waiting on the store: joins and leaves are told to retry,
        commands not stored are dropped (never sent) and their senders told why."""
        assert self.nc is not None
        waited = self.backoff.bound
        message = (
            f"the controller could not write to its store for {waited:.0f}s ({exc}); "
            "nothing was done: retry once the store is back"
        )
        replies, self._replies = self._replies, []
        for subject, _, _ in replies:
            error = wire.ErrorReply(code="retry", error=message, retry_after=5.0)
            await self.nc.publish(subject, wire.encode(error), headers=wire.HEADERS)
        pending = self.commands.take_batch()
        await self.commands.refuse(
            pending, {row.serial: StoreError(message) for row in pending.commands}
        )
        self.commands.restore(pending)

    async def _flush(self, *, all_live: bool = False, batch: Batch | None = None) -> Written:
        """Persist changed records, transitions and commands in one transaction.

        Returns:
            The records the store refused or stored repaired (each logged here).

        Raises:
            StoreError: The transaction failed whole; everything is kept for the next try.
        """
        if self.store is None:
            return Written()
        batch = batch or Batch()
        records = self.registry.all() if all_live else self.registry.take_dirty()
        if not (records or self._pending or self._audit or batch.commands or batch.outcomes):
            if batch.prune_keys_before is None:
                return Written()
        changes, self._pending = self._pending, []
        audit, self._audit = self._audit, []
        try:
            written = await self.store.commit(
                nodes=records,
                transitions=changes,
                audit=audit + batch.audit,
                commands=batch.commands,
                outcomes=batch.outcome_rows,
                idempotency=batch.keys,
                prune_keys_before=batch.prune_keys_before,
            )
        except CommittedThenCancelled:
            raise  # on disk: nothing to keep for a retry
        except BaseException:
            # Failed or cancelled mid-transaction: keep everything for the next attempt.
            self._waiting = _describe(
                nodes=len(records),
                transitions=len(changes),
                audit=len(audit) + len(batch.audit),
                commands=len(batch.commands),
                outcomes=len(batch.outcomes),
                replies=len(self._replies) + len(batch.replies) + len(batch.waiters),
            )
            self._pending[:0] = changes
            self._audit[:0] = audit
            self.registry.mark_dirty(r.name for r in records)
            self.commands.restore(batch)
            raise
        log_written(log, written)
        return written

    # --- handlers -----------------------------------------------------------------------

    async def _reply(self, msg: Any, payload: msgspec.Struct) -> None:
        if msg.reply:
            assert self.nc is not None
            await self.nc.publish(msg.reply, wire.encode(payload), headers=wire.HEADERS)

    async def _reject(self, msg: Any, exc: CorralError) -> None:
        reply = wire.error_reply(exc)
        self.counters[f"rejected.{reply.code}"] += 1
        log.warning("message rejected", extra={"subject": msg.subject, "error": str(exc)})
        await self._reply(msg, reply)

    def _handler(
        self,
        kind: type[Any],
        handle: Callable[[Any, str, Any], Awaitable[None]],
        limit: int | None = None,
    ) -> Callable[[Any], Awaitable[None]]:
        """Wrap ``handle(msg, node, body)``: parse the subject, decode and validate the body.

        Anything malformed, oversized or of another protocol version is answered with an
        error reply and counted before ``handle`` sees it. ``node`` is the sending node's
        name for ``corral.in.<node>.<verb>`` subjects, else empty.
        """

        async def receive(msg: Any) -> None:
            try:
                node = ""
                if subjects.is_node_in(msg.subject):
                    node = subjects.parse_node_in(msg.subject)[0]
                body = wire.decode(
                    msg.data, kind, msg.headers, limit=limit or self.config.max_message_bytes
                )
            except CorralError as exc:
                await self._reject(msg, exc)
                return
            try:
                await handle(msg, node, body)
            except CorralError as exc:
                await self._reject(msg, exc)
            except Exception as exc:  # a bug: answer, log it whole, keep serving
                log.exception("handler failed", extra={"subject": msg.subject})
                await self._reject(msg, Refused(f"internal error in the controller: {exc!r}"))

        return receive

    async def _on_join(self, msg: Any, name: str, join: wire.Join) -> None:
        self.counters["join"] += 1
        check_join_text(
            join.labels, join.interfaces, join.attributes, join.host, join.version, join.instance
        )
        self.commands.applied(name, join.last_serial)  # before first_serial is computed
        if join.epoch > self.commands.epoch:
            self._behind(name, join.epoch)
        known = name in self.registry.nodes
        outcome = self.registry.join(name, join, self.clock())
        if isinstance(outcome, Refusal):
            self.counters[f"rejected.{outcome.code}"] += 1
            log.warning("join refused", extra={"node": name, "reason": outcome.reason})
            error = wire.ErrorReply(
                code=outcome.code, error=outcome.reason, retry_after=outcome.retry_after
            )
            await self._reply(msg, error)
            return
        self._record(outcome)
        if msg.reply:
            # Acknowledge only once persisted: an accepted node survives kill -9.
            reply = wire.JoinReply(
                controller=self.id,
                heartbeat_interval=self.config.heartbeat_interval,
                now=self.clock(),
                # Every command numbered from here on was resolved knowing this node.
                first_serial=0 if known else self.commands.book.last_serial + 1,
                last_serial=self.commands.stream.last_live,
                epoch=self.commands.epoch,
                report_batch=wire.MAX_BATCHED_REPORTS,
            )
            self._after_commit(msg.reply, reply, node=name)

    def _behind(self, node: str, seen: int) -> None:
        """``node`` has seen a higher leader epoch (a restored store): see
        :meth:`Leadership.behind`, with a majority of the nodes up as the quorum."""
        if self.leadership is not None:
            up = sum(r.status == NodeStatus.UP for r in self.registry.nodes.values())
            self.leadership.behind(node, seen, up // 2 + 1)

    async def _on_heartbeat(self, msg: Any, name: str, hb: wire.Heartbeat) -> None:
        self.counters["heartbeat"] += 1
        self.commands.applied(name, hb.last_serial)
        if hb.epoch > self.commands.epoch:
            self._behind(name, hb.epoch)
        stats = msgspec.structs.asdict(hb.stats) if hb.stats is not None else None
        outcome = self.registry.heartbeat(name, hb.instance, hb.last_serial, self.clock(), stats)
        if outcome is None:
            assert self.nc is not None
            rejoin = wire.Rejoin(
                reason="controller does not know this node instance", epoch=self.commands.epoch
            )
            await self.nc.publish(
                subjects.node_out(name, "ctl"), wire.encode(rejoin), headers=wire.HEADERS
            )
        elif outcome:
            self._record(outcome)

    async def _on_leave(self, msg: Any, name: str, leave: wire.Leave) -> None:
        self._record(self.registry.leave(name, leave.instance, self.clock(), leave.reason))
        if msg.reply:
            self._after_commit(msg.reply, wire.Ok(), node=name)

    async def _on_nodes(self, msg: Any, _: str, __: wire.NodesRequest) -> None:
        behind = self.commands.book.behind()
        left = NodeStatus.LEFT  # a node that left on purpose is behind on nothing
        views = [_view(r, behind.get(r.name, 0) * (r.status != left)) for r in self.registry.all()]
        await self._reply(msg, wire.NodesReply(nodes=views, controller=self.id))

    async def _on_stats(self, msg: Any, _: str, __: wire.StatsRequest) -> None:
        counters = dict(self.counters)
        for key, value in self.commands.counters.items():
            counters[f"commands.{key}"] = value
        reply = wire.StatsReply(controller=self.id, started=self.started, counters=counters)
        await self._reply(msg, reply)

    async def _on_agents(self, msg: Any, _: str, request: wire.AgentsRequest) -> None:
        """The live agents, for API clients (the controller gathers them from the bus)."""
        assert self.nc is not None
        found = await bus.gather_agents(self.nc, min(max(request.wait, 0.05), 5.0))
        await self._reply(msg, wire.AgentsReply(agents=found))

    async def _on_auth(self, msg: Any, _: str, event: wire.AuthEvent) -> None:
        """An operator enrolled or revoked a node: audit it, and mark a revoked node.

        The actor is the credential the subject names; the ``actor`` the CLI reported
        (``$USER@host``) is kept as ``on_behalf_of``, labelled as claimed.
        """
        _, actor, role = bus_caller(msg.subject)
        now = self.clock()
        if event.action == "revoke":
            self._record(self.registry.revoke(event.name, now))
        detail = {
            "keys": list(event.keys),
            "host": event.host,
            "pid": event.pid,
            "on_behalf_of": event.actor,  # what the CLI said: not verified
        }
        self._audit.append(
            AuditEntry(
                at=now,
                actor=actor,
                action=event.action,
                target=event.name,
                detail=detail,
                role=role,
            )
        )
        if msg.reply:
            self._after_commit(msg.reply, wire.Ok())
        else:
            self._wake.set()
