"""The task scheduler service: the I/O shell around :class:`corral.core.scheduler.Scheduler`.

Theory of operation: every event (a task queued through the API, a node's hello or report,
the tick) is fed to the scheduler core; then :meth:`TaskService._pump` drains its outboxes:
runs go to each node at once in one ``TaskAssign`` per node, stops as ``TaskStop``, and the
changed instances join the next group commit. The commit loop is the only writer: it upserts
everything changed since the last commit in one transaction, and only then answers what
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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from corral import subjects, wire
from corral.controller.task_maps import TaskMaps, _Map
from corral.core.scheduler import Scheduler
from corral.core.taskstate import TaskInstance
from corral.errors import CorralError, NotFound, Timeout
from corral.records import AuditEntry, IdempotencyRow
from corral.store.tasks import TaskStore

if TYPE_CHECKING:
    from corral.controller.service import Controller

__all__ = ["TaskService"]

log = logging.getLogger("corral.controller.tasks")

_asdict = msgspec.structs.asdict


class TaskService:
    """Queues, runs and persists task instances for one controller.

    Args:
        controller: The controller (its bus connection, store, registry, configuration).
    """

    def __init__(self, controller: Controller) -> None:
        self.ctl = controller
        config = controller.config
        self.clock = controller.clock
        self.core = Scheduler(
            prefetch=config.task_prefetch,
            grace=config.cancel_grace,
            # After a restart an orphan waits for its node's hello while the node is UP
            # (a dead node is DOWN after down_after); this is only the upper bound.
            orphan_grace=max(30.0, 4 * config.down_after),
        )
        self.max_attempts = config.task_max_attempts
        self.store: TaskStore | None = None
        self._next_id = 1
        self._dirty: dict[int, TaskInstance] = {}
        self._finished: list[TaskInstance] = []
        #: finished instances whose final state is not on disk yet
        self._settling: dict[int, TaskInstance] = {}
        self._acks: dict[str, list[str]] = {}
        self._durable: list[asyncio.Future[None]] = []
        #: idempotency keys and audit entries of the calls that changed instances, written
        #: in the same commit as those instances
        self._extra: list[IdempotencyRow | AuditEntry] = []
        self._waiters: dict[int, list[asyncio.Future[TaskInstance]]] = {}
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
        self.mapping = TaskMaps(self)
        #: nodes that ever offered tasks, and when each was last asked to say hello again
        self._task_nodes: set[str] = set()
        self._resync_asked: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<TaskService {self.core!r} commits={self.commits}>"

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load unfinished instances, subscribe to the nodes' task subjects, start the loops.

        Raises:
            StoreError: The store could not be read.
        """
        assert self.ctl.store is not None and self.ctl.nc is not None
        self.store = TaskStore(self.ctl.store)
        self._next_id = await self.store.max_id() + 1
        self.core.load(await self.store.load_active(), self.clock())
        await self._pump()
        nc = self.ctl.nc
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

    async def stop(self) -> None:
        """Stop the loops and write what is pending."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(CorralError):
            await self._commit()
            await self._send_acks()
        if self.store is not None:
            self.store.close()

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
        durable: bool = True,
        extra: Callable[[list[TaskInstance]], list[IdempotencyRow | AuditEntry]] | None = None,
    ) -> list[TaskInstance]:
        """Queue one instance of task ``key`` per msgpack-encoded argument mapping.

        Returns once every instance is on disk (at once with ``durable=False``, for a caller
        that waits for the result next: the commit of a result includes its instance).
        ``extra`` makes, from the instances, the rows written in the same transaction as
        they are: the submission's idempotency key and its audit entry.

        Returns:
            The instances, in the order of ``args``.

        Raises:
            UnknownTask: no node offers ``key``.
            StoreError: the store failed (the instances are kept and retried).
        """
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
        self.core.queue(batch, now)
        self._next_id += len(batch)
        if extra is not None:
            self._extra.extend(extra(batch))
        await self._pump()
        if durable:
            await self._until_durable()
        return batch

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
        except NotFound:
            assert self.store is not None
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
        await self._until_durable()
        return inst

    async def wait(self, ids: Sequence[int], timeout: float) -> list[TaskInstance]:
        """Wait until every instance in ``ids`` has finished (and is on disk).

        Returns:
            The instances, in the order of ``ids``.

        Raises:
            NotFound: an id names no instance.
            Timeout: they did not all finish within ``timeout`` seconds.
        """
        assert self.store is not None
        loop = asyncio.get_running_loop()
        futures: dict[int, asyncio.Future[TaskInstance]] = {}
        for ident in ids:
            if ident in self.core.active or ident in self._settling:
                fut: asyncio.Future[TaskInstance] = loop.create_future()
                self._waiters.setdefault(ident, []).append(fut)
                futures[ident] = fut
        done: dict[int, TaskInstance] = {}
        rest = [i for i in ids if i not in futures]
        for inst in await self.store.get_many(rest):
            done[inst.id] = inst
        missing = [i for i in rest if i not in done]
        if missing:
            self._forget(futures)
            raise NotFound(f"no task instance {missing[0]}")
        try:
            async with asyncio.timeout(timeout):
                for ident, fut in futures.items():
                    done[ident] = await fut
        except TimeoutError:
            left = [i for i, f in futures.items() if not f.done()]
            self._forget(futures)
            raise Timeout(
                f"{len(left)} task instance(s) not finished within {timeout}s "
                f"(first: {left[0] if left else '-'})"
            ) from None
        return [done[i] for i in ids]

    def _forget(self, futures: dict[int, asyncio.Future[TaskInstance]]) -> None:
        for ident, fut in futures.items():
            waiters = self._waiters.get(ident, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(ident, None)
            fut.cancel()

    @property
    def maps(self) -> dict[int, _Map]:
        """Maps in progress, by parent id."""
        return self.mapping.maps

    def running(self) -> list[TaskInstance]:
        """The unfinished instances that hold a lease, by id."""
        return sorted((i for i in self.core.active.values() if i.lease), key=lambda i: i.id)

    # --- the core's outboxes ------------------------------------------------------------

    async def _pump(self) -> None:
        """Carry out the core's decisions: send runs and stops, queue the writes."""
        changed, runs, stops, finished = self.core.take()
        for inst in changed:
            self._dirty[inst.id] = inst
        self._finished.extend(finished)
        for inst in finished:
            self._settling[inst.id] = inst
        if changed or finished:
            self._wake.set()
        if finished:
            self._urgent.set()
        nc = self.ctl.nc
        if nc is None:
            return
        for node, insts in runs.items():
            batch = wire.TaskAssign(
                runs=[wire.TaskRun(i.id, i.lease, i.key, i.args, i.attempts) for i in insts]
            )
            await nc.publish(subjects.node_tasks(node), wire.encode(batch), headers=wire.HEADERS)
        for stop in stops:
            message = wire.encode(wire.TaskStop(lease=stop.lease, force=stop.force))
            await nc.publish(subjects.node_tasks(stop.node), message, headers=wire.HEADERS)

    async def _until_durable(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable.append(fut)
        self._wake.set()
        self._urgent.set()
        await fut

    async def _commit(self) -> None:
        """Write everything changed since the last commit, then answer who waited on it."""
        assert self.store is not None
        dirty, self._dirty = self._dirty, {}
        finished, self._finished = self._finished, []
        acks, self._acks = self._acks, {}
        durable, self._durable = self._durable, []
        extra, self._extra = self._extra, []
        try:
            await self.store.commit([_asdict(i) for i in dirty.values()], extra)
        except BaseException:
            self._extra[:0] = extra
            # Keep everything for the next attempt (newer changes of the same instance win).
            self._dirty = {**dirty, **self._dirty}
            self._finished[:0] = finished
            for node, leases in acks.items():
                self._acks.setdefault(node, [])[:0] = leases
            self._durable[:0] = durable
            raise
        self.commits += 1
        for fut in durable:
            if not fut.done():
                fut.set_result(None)
        for inst in finished:
            self._settling.pop(inst.id, None)
            for waiter in self._waiters.pop(inst.id, ()):
                if not waiter.done():
                    waiter.set_result(inst)
            if inst.parent is not None and inst.parent in self.maps:
                await self.mapping.child_done(inst)
            elif inst.id in self.maps:  # the parent ended before its map
                await self.mapping.end(self.maps[inst.id], cancel=True)
        for node, leases in acks.items():
            self._ack_due.setdefault(node, []).extend(leases)

    async def _send_acks(self) -> None:
        """Tell nodes which results are on disk. Not urgent (a node re-sends a result only
        after a second), so acks go out in batches on the tick, not one message per result."""
        due, self._ack_due = self._ack_due, {}
        nc = self.ctl.nc
        if nc is None or nc.is_closed:
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
            except CorralError:
                log.exception("task store write failed; retrying")
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _tick_loop(self) -> None:
        period = min(0.1, self.ctl.config.down_after / 4)
        while True:
            await asyncio.sleep(period)
            await self._send_acks()
            now = self.clock()
            nodes = self.ctl.registry.nodes
            for name, workers in list(self.core.nodes.items()):
                record = nodes.get(name)
                if record is None or record.status != "UP":
                    status = record.status if record is not None else "unknown"
                    self.core.node_gone(name, now, f"it is {status}")
                elif record.instance != workers.instance:
                    self.core.node_gone(name, now, "it restarted")
            for name in self.core.orphan_nodes():
                record = nodes.get(name)
                if record is None or record.status != "UP":
                    self.core.lose_orphans(name, now, "is not UP after the restart")
            await self._resync(nodes, now)
            self.core.tick(now)
            await self._pump()

    # --- nodes --------------------------------------------------------------------------

    async def _resync(self, nodes: dict[str, Any], now: float) -> None:
        """Ask for a hello from task nodes UP again without a join (DOWN -> UP on heartbeats
        resuming): the scheduler dropped their workers when they went DOWN."""
        nc = self.ctl.nc
        if nc is None:
            return
        for name in self._task_nodes:
            record = nodes.get(name)
            if record is None or record.status != "UP" or name in self.core.nodes:
                continue
            if now - self._resync_asked.get(name, 0.0) >= 1.0:
                self._resync_asked[name] = now
                message = wire.encode(wire.TaskResync())
                await nc.publish(subjects.node_tasks(name), message, headers=wire.HEADERS)

    def _results(self, node: str, results: Iterable[wire.TaskResult], now: float) -> None:
        acks = self._acks.setdefault(node, [])
        for r in results:
            inst = self.core.finish(
                r.lease,
                r.outcome,
                now,
                result=r.result,
                error=r.error,
                traceback=r.traceback,
                worker=r.worker,
            )
            if inst is None:
                log.debug("stale result dropped", extra={"node": node, "lease": r.lease})
            acks.append(r.lease)

    async def _on_report(self, msg: Any) -> None:
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            report = wire.decode(msg.data, wire.TaskReport, msg.headers)
        except CorralError as exc:
            log.warning("bad task report ignored: %s", exc)
            return
        for p in report.progress:
            self.core.progress(p.lease, p.percent, p.message, p.worker)
        if report.results:
            self._results(node, report.results, self.clock())
            self._wake.set()
            self._urgent.set()
        await self._pump()

    async def _on_hello(self, msg: Any) -> None:
        assert self.ctl.nc is not None
        try:
            node = subjects.parse_node_in(msg.subject)[0]
            hello = wire.decode(msg.data, wire.TaskHello, msg.headers)
        except CorralError as exc:
            if msg.reply:
                error = wire.ErrorReply(code=wire.error_code(exc), error=str(exc))
                await self.ctl.nc.publish(msg.reply, wire.encode(error), headers=wire.HEADERS)
            return
        record = self.ctl.registry.nodes.get(node)
        if record is None or record.instance != hello.instance or record.status != "UP":
            if msg.reply:
                error = wire.ErrorReply(
                    code="retry", error="join first: this node instance is not UP", retry_after=0.5
                )
                await self.ctl.nc.publish(msg.reply, wire.encode(error), headers=wire.HEADERS)
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
        log.info(
            "task workers joined",
            extra={"node": node, "slots": hello.slots, "keys": len(hello.keys)},
        )
        await self._pump()
        self._wake.set()
        if msg.reply:
            await self.ctl.nc.publish(msg.reply, wire.encode(wire.Ok()), headers=wire.HEADERS)
