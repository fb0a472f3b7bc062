"""The task scheduler service: the I/O shell around :class:`corral.core.scheduler.Scheduler`.

Theory of operation: every event (a task queued through the API, a node's hello or report,
the tick) is fed to the scheduler core; then :meth:`TaskService._pump` drains its outboxes:
runs go to each node at once in one ``TaskAssign`` per node, stops as ``TaskStop``, and the
changed instances join the next group commit. The commit loop hands everything changed since
the last commit to the store's one writer (off the event loop, in one transaction with what
else is pending: the registry's flush, tokens, audit), and only then answers what
waited on durability — the API's ``queue_task`` (an accepted task is on disk), waiters on a
result, and the nodes' results (acknowledged so they stop re-sending them). Runs are sent
before their instance is on disk: a crash in between loses nothing acknowledged, and the
node's late result for an instance the restarted controller never heard of is dropped.

Leases follow node liveness: on each tick a node that the registry no longer has UP under
the same process instance loses every lease it held (the core re-queues or fails them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec
from nats.errors import MaxPayloadError

from corral import bus, subjects, wire
from corral.config import Config
from corral.controller import task_runs
from corral.controller.results import Results
from corral.controller.task_maps import MapGroup, TaskMaps
from corral.core.registry import Registry
from corral.core.scheduler import Scheduler, Stop
from corral.core.signatures import Signatures
from corral.core.taskstate import TaskInstance
from corral.errors import (
    CorralError,
    NotFound,
    OversizedMessage,
    RecordRefused,
    RetryLater,
    StoreError,
    Timeout,
    UnknownTask,
)
from corral.records import AuditEntry, IdempotencyRow
from corral.states import NodeStatus
from corral.store import Store, TaskRecords
from corral.store.writer import CommittedThenCancelled
from corral.store.writes import Backoff, log_written

__all__ = ["TaskService"]

log = logging.getLogger("corral.controller.tasks")

_asdict = msgspec.structs.asdict


class TaskService:
    """Queues, runs and persists task instances for one controller.

    Args:
        config: Task settings (prefetch, grace, attempts, log limit) and ``down_after``.
        clock: Wall-clock source (seconds since the epoch).
        registry: The node registry: a node's leases follow its liveness there.
        store: The opened store the task instances are kept in.
        nc: The controller's bus connection.
        counters: The controller's counters (refused reports are counted there).
    """

    def __init__(
        self,
        *,
        config: Config,
        clock: Callable[[], float],
        registry: Registry,
        store: Store,
        nc: bus.NATS,
        counters: Counter[str],
    ) -> None:
        self.config = config
        self.clock = clock
        self.registry = registry
        self.nc = nc
        self.counters = counters
        self._store = store
        self.core = Scheduler(
            prefetch=config.task_prefetch,
            grace=config.cancel_grace,
            # After a restart an orphan waits for its node's hello while the node is UP
            # (a dead node is DOWN after down_after); this is only the upper bound.
            orphan_grace=max(30.0, 4 * config.down_after),
        )
        self.max_attempts = config.task_max_attempts
        #: each key's signatures from the nodes' hellos: queue calls are checked against them
        self.signatures = Signatures()
        self.store: TaskRecords | None = None
        self._next_id = 1
        #: until when at most an unknown task key may be "not offered yet" (see :meth:`_warming`)
        self._warm_until = 0.0
        self._dirty: dict[int, TaskInstance] = {}
        self._finished: list[TaskInstance] = []
        #: finished instances on their way to disk, and who waits for them (see :meth:`wait`)
        self.results = Results()
        self._acks: dict[str, list[str]] = {}
        #: callers waiting for instances to be on disk, with the ids they wait for
        self._durable: list[tuple[asyncio.Future[None], frozenset[int]]] = []
        #: retries of transient store failures (docs/operations.md, "Poison-proof writes")
        self.backoff = Backoff()
        #: idempotency keys and audit entries of the calls that changed instances, written
        #: in the same commit as those instances
        self._extra: list[IdempotencyRow | AuditEntry] = []
        self._wake = asyncio.Event()
        #: someone waits on the next commit (a durable queue, a result, an ack)
        self._urgent = asyncio.Event()
        #: seconds a commit that nobody waits on is held back to gather more changes
        self.commit_delay = 0.005
        self._tasks: list[asyncio.Task[None]] = []
        self.commits = 0
        #: results on disk, to acknowledge to their nodes on the next tick
        self._ack_due: dict[str, list[str]] = {}
        #: parent id -> its running map
        self.mapping = TaskMaps(
            core=self.core,
            clock=clock,
            nc=nc,
            queue=self.queue,
            next_id=lambda: self._next_id,
            pump=self._pump,
            read=self._read_children,
            unfinished=lambda i: i in self.core.active or i in self.results.settling,
        )
        #: parents of the unfinished subtasks loaded at start: their maps may be on disk
        #: only (not in memory) until their nodes ask again
        self._loaded_parents: set[int] = set()
        #: nodes that ever offered tasks, and when each was last asked to say hello again
        self._task_nodes: set[str] = set()
        self._resync_asked: dict[str, float] = {}
        #: hooks called with the instances that just ended (the dashboard's charts count
        #: them); each must be quick, and one that raises is logged and skipped
        self.on_finished: list[Callable[[list[TaskInstance]], None]] = []

    def __repr__(self) -> str:
        return f"<TaskService {self.core!r} commits={self.commits}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load unfinished instances, subscribe to the nodes' task subjects, start the loops.

        Raises:
            StoreError: The store could not be read.
        """
        self.store = self._store.tasks
        self._warm_until = self.clock() + 2 * self.config.down_after
        self._next_id = await self.store.max_id() + 1
        active = await self.store.load_active()
        self.results.loaded(active)
        self._loaded_parents = {i.parent for i in active if i.parent is not None}
        self.core.load(active, self.clock())
        await self._pump()
        nc = self.nc
        await nc.subscribe(
            subjects.node_in_wildcard(subjects.TASK_REPORT_VERB),
            cb=self._on_report,
            pending_msgs_limit=1_000_000,
        )
        await nc.subscribe(subjects.node_in_wildcard(subjects.TASK_HELLO_VERB), cb=self._on_hello)
        await nc.subscribe(
            subjects.node_in_wildcard(subjects.TASK_MAP_VERB), cb=self.mapping.on_map
        )
        self._tasks = [
            asyncio.create_task(self._commit_loop(), name="tasks-commit"),
            asyncio.create_task(self._tick_loop(), name="tasks-tick"),
        ]
        log.info("task scheduler started", extra={"unfinished": len(self.core.active)})

    async def stop(self, commit: bool = True) -> None:
        """Stop the loops and, with ``commit``, write what is pending (not for a deposed
        leader: its store refuses it, and may not answer at all when it was cut off)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if not commit or self.store is None:  # nothing to write, or never started
            return
        with contextlib.suppress(CorralError):
            await self._commit()
            await self._send_acks()

    # --- the API's calls ----------------------------------------------------------------

    async def queue(
        self,
        key: str,
        args: Sequence[bytes],
        *,
        priority: int = 5,
        labels: Iterable[str] = (),
        max_attempts: int | None = None,
        parent: int | None = None,
        extra: Callable[[list[TaskInstance]], list[IdempotencyRow | AuditEntry]] | None = None,
    ) -> list[TaskInstance]:
        """Queue one instance of task ``key`` per msgpack-encoded argument mapping.

        Returns once every instance is on disk. The runs go to their nodes before that
        commit, so a task runs while its ``queued`` row is written. ``extra`` makes, from
        the instances, the rows written in the same transaction as they are: the
        submission's idempotency key and its audit entry.

        Returns:
            The instances, in the order of ``args``.

        Raises:
            UnknownTask: no node offers ``key``.
            OversizedMessage: an argument mapping is larger than the bus can carry to a
                node (nothing is queued then).
            StoreError: the store failed (the instances are kept and retried).
        """
        task_runs.check_sizes(self.nc, key, args)
        now = self.clock()
        wanted = sorted(set(labels))
        attempts = max_attempts or self.max_attempts
        batch = []
        for i, encoded in enumerate(args):
            batch.append(
                TaskInstance(
                    id=self._next_id + i,
                    key=key,
                    args=encoded,
                    priority=priority,
                    labels=wanted,
                    max_attempts=attempts,
                    queued_at=now,
                    parent=parent,
                    item=i if parent is not None else None,
                )
            )
        try:
            self.core.queue(batch, now)
        except UnknownTask as exc:
            if not self._warming(now):
                raise
            raise RetryLater(
                f"{exc} yet: this controller has just started (or taken over) and its "
                "nodes are still offering their tasks; ask again",
                retry_after=0.25,
            ) from exc
        self._next_id += len(batch)
        if extra is not None:
            self._extra.extend(extra(batch))
        await self._pump()
        await self._until_durable(i.id for i in batch)
        return batch

    def _warming(self, now: float) -> bool:
        """Whether an unknown key may only be not offered *yet*: this controller has just
        started (or taken over) and a node the registry has UP with task slots has not told it
        its tasks since. Bounded by two silences: a node not back by then is going DOWN."""
        if now >= self._warm_until:
            return False
        offered = self.core.nodes
        return any(
            r.status == NodeStatus.UP and r.slots > 0 and name not in offered
            for name, r in self.registry.nodes.items()
        )

    async def cancel(
        self, ident: int, *, force: bool = False, audit: AuditEntry | None = None
    ) -> TaskInstance:
        """Cancel instance ``ident`` (see :meth:`Scheduler.cancel`); returns once on disk.

        ``audit`` is written with the cancelled instance (alone if it had already finished).

        Raises:
            NotFound: no instance has that id.
        """
        try:
            inst = self.core.cancel(ident, self.clock(), force=force)
            await self._pump()  # the stop goes out before the map's end, so the task
            group = self.maps.get(ident)  # sees its flag set when its map returns
            if group is not None:
                await self.mapping.end(group, cancel=True)
            elif ident in self._loaded_parents:  # its map is on disk only (since a restart)
                self._cancel_children(ident)
        except NotFound:
            assert self.store is not None
            await self.settled()  # it may have just finished, its final row not on disk yet
            stored = await self.store.get(ident)
            if stored is None:
                raise NotFound(f"no task instance {ident}") from None
            if audit is not None:  # the attempt is recorded, though nothing changed
                self._extra.append(audit)
                await self._until_durable()
            return stored  # already finished: nothing to cancel
        await self._pump()
        if audit is not None:
            self._extra.append(audit)
        await self._until_durable((ident,))
        return inst

    async def wait(self, ids: Sequence[int], timeout: float) -> list[TaskInstance]:
        """Wait until every instance in ``ids`` has finished.

        A result a node reported is answered once it is in this controller's hands, if the
        store already has the attempt's lease (the run's first commit carries it, and a
        queue call returns after that commit): its final row is in the next commit, and the
        node keeps the result until that commit is acknowledged, re-sending it to a
        restarted controller, which knows the lease. So an answered result is lost only if
        the controller and that node both die within the commit's few milliseconds, and
        the commit's ``fsync`` is off the answer's path. Every other end (a cancel, a
        failure decided here) is answered after its commit. Reads of the store through the
        API wait for pending commits (:meth:`settled`).

        Returns:
            The instances, in the order of ``ids``.

        Raises:
            NotFound: an id names no instance.
            Timeout: they did not all finish within ``timeout`` seconds.
        """
        assert self.store is not None
        futures: dict[int, asyncio.Future[TaskInstance]] = {}
        done: dict[int, TaskInstance] = {}
        for ident in ids:
            if (answered := self.results.answered(ident)) is not None:
                done[ident] = answered
            elif ident in self.core.active or ident in self.results.settling:
                futures[ident] = self.results.wait_for(ident)
        rest = [i for i in ids if i not in futures and i not in done]
        for inst in await self.store.get_many(rest) if rest else ():
            done[inst.id] = inst
        missing = [i for i in rest if i not in done]
        if missing:
            self.results.forget(futures)
            raise NotFound(f"no task instance {missing[0]}")
        try:
            async with asyncio.timeout(timeout):
                for ident, fut in futures.items():
                    done[ident] = await fut
        except TimeoutError:
            left = [i for i, f in futures.items() if not f.done()]
            self.results.forget(futures)
            raise Timeout(
                f"{len(left)} task instance(s) not finished within {timeout}s "
                f"(first: {left[0] if left else '-'})"
            ) from None
        return [done[i] for i in ids]

    async def settled(self) -> None:
        """Return once every instance finished so far is on disk (at once if none waits):
        a read of the store after a :meth:`wait` then sees what that wait answered."""
        if self.results.settling:
            await self._until_durable(tuple(self.results.settling))

    def find(self, ident: int) -> TaskInstance | None:
        """Instance ``ident`` from memory (unfinished, or finished and not on disk yet);
        None if this controller holds no newer state of it than the store."""
        return self.core.active.get(ident) or self.results.settling.get(ident)

    def _cancel_children(self, parent: int) -> None:
        """Cancel (forced) the unfinished children of ``parent`` (its map is not in memory)."""
        now = self.clock()
        for child in [i for i in self.core.active.values() if i.parent == parent]:
            self.core.cancel(child.id, now, force=True)

    async def _read_children(self, parent: int | None, ids: list[int]) -> list[TaskInstance]:
        """Every stored child of ``parent``, or (``parent`` None) the instances ``ids``."""
        assert self.store is not None
        if parent is None:
            return await self.store.get_many(ids)
        return await self.store.children(parent)

    @property
    def maps(self) -> dict[int, MapGroup]:
        """Maps in progress, by parent id."""
        return self.mapping.maps

    def running(self) -> list[TaskInstance]:
        """The unfinished instances that hold a lease, by id."""
        return sorted((i for i in self.core.active.values() if i.lease), key=lambda i: i.id)

    # --- the core's outboxes ------------------------------------------------------------

    async def _send_runs(self, nc: Any, node: str, insts: list[TaskInstance]) -> bool:
        """Publish ``insts`` to ``node``; an instance is recorded as running only once its
        message is on the bus. Returns False if some were not sent (the core was told)."""
        ok = True
        for batch in task_runs.batches(nc, insts):
            try:
                await task_runs.publish_runs(nc, node, batch)
            except Exception as exc:  # whatever the bus says, the runs were not sent
                ok = False
                why = f"{type(exc).__name__}: {exc}".rstrip(": ")
                permanent = len(batch) == 1 and isinstance(exc, OversizedMessage | MaxPayloadError)
                log.warning(
                    "task run failed: it cannot be sent"
                    if permanent
                    else "task runs not sent; queued again",
                    extra={"node": node, "runs": len(batch), "error": why},
                )
                self.core.unsent([i.lease for i in batch], self.clock(), why, permanent=permanent)
            else:
                for inst in batch:
                    self._dirty[inst.id] = inst
        return ok

    async def _pump(self) -> None:
        """Carry out the core's decisions: send runs and stops, queue the writes.

        A run's instance joins the writes only once its message is on the bus: a failed
        publish is undone in the core (:meth:`Scheduler.unsent`), and the other nodes' runs
        are still sent.
        """
        changed, runs, stops, finished = self.core.take()
        sending = {i.id for insts in runs.values() for i in insts}
        for inst in changed:
            if inst.id not in sending:
                self._dirty[inst.id] = inst
        for ident in sending:  # an earlier change of it waits for the send, too
            self._dirty.pop(ident, None)
        if changed or finished:
            self._wake.set()
        if finished:
            self._settle(finished)
        nc = self.nc
        undone = False
        for node, insts in runs.items():
            if not await self._send_runs(nc, node, insts):
                undone = True
        if nc is not None:  # else a forced cancel ends anyway: the core gives up after grace
            await self._send_stops(nc, stops)
        if undone:
            await self._pump()  # write the instances put back in the queue

    def _settle(self, finished: list[TaskInstance]) -> None:
        """Queue the final states for the next commit, answer who waits on a result its
        node holds (see :meth:`wait`), and run the finished hooks."""
        self._finished.extend(finished)
        # A result answered now, or when the commit under way ends, needs no commit of its
        # own: it waits ``commit_delay`` for company (the next queue call's urgent commit
        # takes it along). Any other end is waited on.
        if self.results.finished(finished):
            self._urgent.set()
        for hook in self.on_finished:
            try:
                hook(finished)
            except Exception:
                log.exception("a task-finished hook failed")

    async def _send_stops(self, nc: Any, stops: list[Stop]) -> None:
        """Send stop requests; a forced one that cannot be sent ends its cancel at once."""
        gave_up = False
        for stop in stops:
            message = wire.encode(wire.TaskStop(lease=stop.lease, force=stop.force))
            try:
                await nc.publish(subjects.node_tasks(stop.node), message, headers=wire.HEADERS)
            except Exception as exc:  # the stop is lost; a forced cancel still ends
                log.warning(
                    "task stop not sent",
                    extra={"node": stop.node, "lease": stop.lease, "error": repr(exc)},
                )
                if stop.force:
                    self.core.unreachable(stop.lease, self.clock(), type(exc).__name__)
                    gave_up = True
        if gave_up:
            await self._pump()

    async def _until_durable(self, ids: Iterable[int] = ()) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable.append((fut, frozenset(ids)))
        self._wake.set()
        self._urgent.set()
        await fut

    async def _commit(self) -> None:
        """Write everything changed since the last commit, then answer who waited on it.

        An instance the store refuses even repaired (see :mod:`corral.store.writes`) stays in
        memory only: who waits on it is answered with the reason, the rest is committed.
        """
        assert self.store is not None
        dirty, self._dirty = self._dirty, {}
        finished, self._finished = self._finished, []
        acks, self._acks = self._acks, {}
        durable, self._durable = self._durable, []
        extra, self._extra = self._extra, []
        rows = [_asdict(i) for i in dirty.values()]
        self.results.writing(rows)
        try:
            written = await self.store.commit(rows, extra)
        except CommittedThenCancelled:
            raise  # on disk: nothing to keep for a retry
        except BaseException:
            self._keep(dirty, finished, acks, durable, extra)
            raise
        finally:
            self.results.written()
        self.commits += 1
        log_written(log, written)
        refused = {
            r.record["id"]: RecordRefused(
                f"the store refused task instance {r.record['id']}: {r.reason}. It is kept in "
                "memory only; check its arguments and labels for NUL or control characters"
            )
            for r in written.refused
        }
        for fut, ids in durable:
            if not fut.done():
                bad = next((refused[i] for i in ids if i in refused), None)
                if bad is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(bad)
        self.results.stored(rows, finished, refused)
        for inst in finished:
            await self._ended(inst)
        for node, leases in acks.items():
            self._ack_due.setdefault(node, []).extend(leases)

    async def _ended(self, inst: TaskInstance) -> None:
        """``inst``'s end is on disk: tell its map, or end the map it waited for."""
        if inst.parent is not None and inst.parent in self.maps:
            await self.mapping.child_done(inst)
        elif inst.id in self.maps:  # the parent ended before its map
            await self.mapping.end(self.maps[inst.id], cancel=True)
        elif inst.id in self._loaded_parents:  # ... before its map was asked for again
            self._loaded_parents.discard(inst.id)
            self._cancel_children(inst.id)
            await self._pump()

    def _keep(
        self,
        dirty: dict[int, TaskInstance],
        finished: list[TaskInstance],
        acks: dict[str, list[str]],
        durable: list[tuple[asyncio.Future[None], frozenset[int]]],
        extra: list[IdempotencyRow | AuditEntry],
    ) -> None:
        """Keep what a failed commit held for the next attempt (newer changes of an
        instance win)."""
        self._extra[:0] = extra
        self._dirty = {**dirty, **self._dirty}
        self._finished[:0] = finished
        for node, leases in acks.items():
            self._acks.setdefault(node, [])[:0] = leases
        self._durable[:0] = durable

    async def _send_acks(self) -> None:
        """Tell nodes which results are on disk. Not urgent (a node re-sends a result only
        after a second), so acks go out in batches on the tick, not one message per result."""
        due, self._ack_due = self._ack_due, {}
        nc = self.nc
        if nc.is_closed:
            return
        for node, leases in due.items():
            ack = wire.encode(wire.TaskAck(leases=leases))
            await nc.publish(subjects.node_tasks(node), ack, headers=wire.HEADERS)

    async def _commit_loop(self) -> None:
        """Commit whenever something changed; at once if someone waits on it, else after
        ``commit_delay`` (a fast task's queued, running and complete states then cost one
        write, and progress reports are batched)."""
        while True:
            await self._wake.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.commit_delay)
            self._wake.clear()
            self._urgent.clear()
            try:
                await self._commit()
            except CorralError as exc:
                await self._write_failed(exc)
                self._wake.set()
            else:
                self.backoff.succeeded()

    async def _write_failed(self, exc: CorralError) -> None:
        """A commit failed whole (a transient failure): log what waits, back off, and once
        :attr:`backoff` is past its bound, answer the callers waiting for durability."""
        now = time.monotonic()
        delay = self.backoff.failed(now)
        log.error(
            "task store write failed (%s); waiting: %d task instance(s), %d caller(s), "
            "%d result ack(s); retry %d in %.2fs",
            exc,
            len(self._dirty),
            len(self._durable),
            sum(len(leases) for leases in self._acks.values()),
            self.backoff.failures,
            delay,
        )
        if self.backoff.expired(now):
            durable, self._durable = self._durable, []
            error = StoreError(
                f"the task store has failed for {self.backoff.bound:.0f}s ({exc}): the "
                "instances are queued in memory and written once the store is back; check "
                "with task_history_detail before queuing them again"
            )
            for fut, _ in durable:
                if not fut.done():
                    fut.set_exception(error)
        await asyncio.sleep(delay)

    async def _tick_loop(self) -> None:
        period = min(0.1, self.config.down_after / 4)
        while True:
            await asyncio.sleep(period)
            await self._send_acks()
            now = self.clock()
            nodes = self.registry.nodes
            for name, workers in list(self.core.nodes.items()):
                record = nodes.get(name)
                if record is None or record.status != NodeStatus.UP:
                    status = record.status if record is not None else "unknown"
                    self.core.node_gone(name, now, f"it is {status}")
                elif record.instance != workers.instance:
                    self.core.node_gone(name, now, "it restarted")
            for name in self.core.orphan_nodes():
                record = nodes.get(name)
                if record is None or record.status != NodeStatus.UP:
                    self.core.lose_orphans(name, now, "is not UP after the restart")
            await self._resync(nodes, now)
            self.core.tick(now)
            await self._pump()

    # --- nodes --------------------------------------------------------------------------

    async def _resync(self, nodes: dict[str, Any], now: float) -> None:
        """Ask for a hello from task nodes UP again without a join (DOWN -> UP on heartbeats
        resuming): the scheduler dropped their workers when they went DOWN."""
        nc = self.nc
        for name in self._task_nodes:
            record = nodes.get(name)
            if record is None or record.status != NodeStatus.UP or name in self.core.nodes:
                continue
            if now - self._resync_asked.get(name, 0.0) >= 1.0:
                self._resync_asked[name] = now
                message = wire.encode(wire.TaskResync())
                await nc.publish(subjects.node_tasks(name), message, headers=wire.HEADERS)

    def _foreign(self, node: str, lease: str, what: str) -> bool:
        """True (and logged, counted) if ``node`` reports on a lease another node holds.

        The subject names the reporting node and only its own credential may publish there,
        so a report on someone else's lease is a forgery or a bug: it is refused."""
        holder = self.core.foreign(lease, node)
        if holder is None:
            return False
        self.counters["tasks.rejected.foreign-lease"] += 1
        log.warning(
            "task %s refused: node %s reported on lease %s, which node %s holds",
            what,
            node,
            lease,
            holder,
            extra={"node": node, "holder": holder, "lease": lease},
        )
        return True

    def _results(self, node: str, results: Iterable[wire.TaskResult], now: float) -> None:
        acks = self._acks.setdefault(node, [])
        for r in results:
            if self._foreign(node, r.lease, "result"):
                continue  # not acknowledged either: it was never this node's to send
            inst = self.core.finish(
                r.lease,
                r.outcome,
                now,
                result=r.result,
                error=r.error,
                traceback=r.traceback,
                worker=r.worker,
                reporter=node,
                logs=r.logs,
                log_limit=self.config.task_log_limit,
                seconds=r.seconds,
            )
            if inst is None:
                log.debug("stale result dropped", extra={"node": node, "lease": r.lease})
            else:
                self.results.reported(inst.id, r.lease)
            acks.append(r.lease)

    async def _on_report(self, msg: Any) -> None:
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            report = wire.decode(msg.data, wire.TaskReport, msg.headers)
        except CorralError as exc:
            log.warning("bad task report ignored: %s", exc)
            return
        now = self.clock()
        for started in report.started:
            if not self._foreign(node, started.lease, "start"):
                at = now - min(max(0.0, started.ago), 60.0)  # the node's delay in saying so
                self.core.started(started.lease, started.worker, at, reporter=node)
        for p in report.progress:
            if not self._foreign(node, p.lease, "progress"):
                self.core.progress(p.lease, p.percent, p.message, p.worker, reporter=node, now=now)
        if report.results:  # the ends they made decide how soon to commit (see _settle)
            self._results(node, report.results, now)
            self._wake.set()
        await self._pump()

    async def _on_hello(self, msg: Any) -> None:
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            hello = wire.decode(msg.data, wire.TaskHello, msg.headers)
        except CorralError as exc:
            if msg.reply:
                error = wire.error_reply(exc)
                await self.nc.publish(msg.reply, wire.encode(error), headers=wire.HEADERS)
            return
        record = self.registry.nodes.get(node)
        if record is None or record.instance != hello.instance or record.status != NodeStatus.UP:
            if msg.reply:
                error = wire.error_reply(
                    RetryLater("join first: this node instance is not UP", retry_after=0.5)
                )
                await self.nc.publish(msg.reply, wire.encode(error), headers=wire.HEADERS)
            return
        now = self.clock()
        self._task_nodes.add(node)
        self._results(node, hello.results, now)
        self.core.node_hello(
            node,
            hello.instance,
            hello.keys,
            hello.labels,
            hello.slots,
            hello.running,
            now,
            subtasks=hello.subtasks,
        )
        self.signatures.offer(node, hello.keys, hello.signatures)
        log.info(
            "task workers joined",
            extra={"node": node, "slots": hello.slots, "keys": len(hello.keys)},
        )
        await self._pump()
        self._wake.set()
        if msg.reply:
            await self.nc.publish(msg.reply, wire.encode(wire.Ok()), headers=wire.HEADERS)
