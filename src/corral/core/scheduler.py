"""The task scheduler without I/O: queues, matching, leases, attempts, cancellation.

Theory of operation: the controller feeds events in — a task queued, a node's workers said
hello, a result, a node gone, the clock ticking — and drains three outboxes: the instances
that changed (to persist, in one transaction per group commit), the runs to send to each node
(one message per node per batch), and the stop requests. Nothing here waits or does I/O.

* **Queues.** One heap per (task key, required labels), ordered by (priority, arrival): FIFO
  within a priority, lower priority first (Pydra's order). A node takes from every queue whose
  key it offers and whose labels it carries; when several match, the best head wins.
* **Leases.** Giving an instance to a node gives it a new lease: a random token (128 bits by
  default) that no other node can guess. A result or progress report is accepted only under
  the current lease and only from the node holding it (:meth:`Scheduler.foreign` names the
  real holder of a lease another node reports on), so a node that was declared dead and comes
  back cannot overwrite the re-run's result, and no node can finish another node's task.
  When a node goes away (DOWN, LEFT, restarted) every lease it held is lost: the instance
  is re-queued in its old place, or fails once ``max_attempts`` leases have been lost. After
  a controller restart, running instances are orphans until their node says hello and lists
  them (those it does not list are lost), or the node is gone
  (:meth:`Scheduler.lose_orphans`), or at the latest ``orphan_grace`` seconds.
* **Capacity.** A node takes up to ``slots * prefetch`` instances at once: its worker
  processes run ``slots`` of them, the rest wait in the workers' pipes (Celery's prefetch), so
  a worker never idles waiting for the next round trip. An instance given to a node is
  ``assigned`` until the node says a worker started it (:meth:`Scheduler.started`): only
  then is it ``running``, with its ``started_at``.
* **Adaptive prefetch.** ``prefetch`` is a ceiling. For each task key the core keeps an
  exponentially weighted mean of its run time (as the worker measured it), and its
  prefetch ``p = clamp(ceil(prefetch_target / mean), 1, prefetch)``: about
  ``prefetch_target`` seconds of queued work per slot. A held instance of the key takes
  ``1/p`` of a worker slot, and a node takes instances while their shares fit in its slots.
  Short tasks get the whole ceiling (big batches, few messages); a key that runs for seconds
  gets 1, so its instances never wait behind each other (nor a short task behind them) on a
  busy node while another node idles. A key with no measured run yet gets 1 too, until its
  first result.
* **Placement.** Filling happens in two rounds: first every node gets work for its idle
  worker slots (most idle first), and only then do nodes fill their prefetch. So six tasks
  queued on three idle nodes of two slots run on all three, not two at a time on one.
* **Cancellation.** A queued instance is dequeued (queued -> cancel-requested -> cancelled in
  one step); a running one gets a stop request (the task sees ``ctx.stop_requested``), and with
  ``force`` a kill of its worker process after ``grace`` seconds. A forced cancel always
  ends: if the node does not report the task ended within another ``grace`` after the kill
  (it never got the run, it hangs), the instance is ``cancelled`` without it and its slot is
  freed; at once if the stop cannot even be sent (:meth:`Scheduler.unreachable`) or the node
  is gone (it loses its leases).
* **Sending.** A run taken from the outbox is assigned in memory only; the service persists
  it once its message is on the bus. If that fails it reports :meth:`Scheduler.unsent`: the
  assignment is undone (no attempt counted, the slot freed) and the instance is queued
  again in its old place, or failed when it can never be sent.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import math
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from corral.core.taskstate import TaskInstance, TaskStatus, cut_log, move
from corral.errors import NotFound, UnknownTask
from corral.states import TaskOutcome

__all__ = ["LEASE_BYTES", "NodeWorkers", "Scheduler", "Stop", "new_lease"]

S = TaskStatus
QueueKey = tuple[str, tuple[str, ...]]

#: Random bytes in a lease: unguessable by a node that does not hold it.
LEASE_BYTES = 16
#: Seconds of queued work per worker slot that the adaptive prefetch aims at.
PREFETCH_TARGET = 0.005
#: Weight of the newest run in a key's mean run time.
RUN_TIME_WEIGHT = 0.3


_random = bytearray()  # random bytes from the OS, drawn 4 KiB at a time (one system call)
_random_pid = 0  # the process that drew them: a forked child draws its own


def new_lease() -> str:
    """A fresh lease: ``LEASE_BYTES`` random bytes from the OS, URL-safe base64 (22 chars).

    Returns:
        The lease text.
    """
    global _random_pid
    if len(_random) < LEASE_BYTES or _random_pid != os.getpid():
        _random[:] = secrets.token_bytes(LEASE_BYTES * 256)
        _random_pid = os.getpid()
    raw = bytes(_random[-LEASE_BYTES:])
    del _random[-LEASE_BYTES:]
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class NodeWorkers:
    """A node's worker slots as the scheduler sees them."""

    name: str
    instance: str
    keys: frozenset[str]
    labels: frozenset[str]
    slots: int
    capacity: int
    #: lease -> instance id of everything given to this node and not finished
    leases: dict[str, int] = field(default_factory=dict)
    #: keys among ``keys`` that are subtasks
    subtasks: frozenset[str] = frozenset()
    #: capacity lent to it while tasks there wait for their maps
    lent: int = 0

    @property
    def free(self) -> int:
        """How many more instances it may take now."""
        return self.capacity - len(self.leases)

    @property
    def idle(self) -> int:
        """How many of its worker slots (and lent slots) have nothing to run now."""
        return max(1, self.slots) + self.lent - len(self.leases)

    def matches(self, queue: QueueKey) -> bool:
        """True if this node can run what ``queue`` holds."""
        key, labels = queue
        return key in self.keys and self.labels.issuperset(labels)


@dataclass(frozen=True)
class Stop:
    """Ask ``node`` to stop the task under ``lease``; ``force``: kill its worker process."""

    node: str
    lease: str
    force: bool


class Scheduler:
    """Every unfinished task instance and every node's worker slots.

    Args:
        prefetch: most instances a node holds per worker slot (1 = only what it runs); the
            ceiling of the adaptive prefetch.
        prefetch_target: seconds of queued work per worker slot the adaptive prefetch aims at.
        grace: seconds between a forced cancel's stop request and the kill.
        orphan_grace: seconds a restarted controller waits for a node to claim its leases.
        lease_factory: makes each new lease (random by default; injectable for tests). A
            lease it returns that is already held is drawn again.
    """

    def __init__(
        self,
        prefetch: int = 16,
        grace: float = 5.0,
        orphan_grace: float = 5.0,
        lease_factory: Callable[[], str] = new_lease,
        prefetch_target: float = PREFETCH_TARGET,
    ) -> None:
        self.prefetch = max(1, prefetch)
        self.prefetch_target = prefetch_target
        #: each task key's mean run time in seconds (EWMA of the workers' measurements)
        self.run_time: dict[str, float] = {}
        self._weights: dict[str, float] = {}  # key -> 1 / key_prefetch(key), when measured
        self.grace = grace
        self.orphan_grace = orphan_grace
        #: unfinished instances by id
        self.active: dict[int, TaskInstance] = {}
        self.nodes: dict[str, NodeWorkers] = {}
        #: every key a node has offered since start (and of the instances loaded)
        self.known_keys: set[str] = set()
        self._queues: dict[QueueKey, list[tuple[int, int, int]]] = {}
        self._order = itertools.count()
        self._seq: dict[int, int] = {}  # id -> arrival order (kept across re-queues)
        self._leases: dict[str, int] = {}  # lease -> id
        self._new_lease = lease_factory
        self._orphans: dict[int, float] = {}  # id -> deadline for its node's hello
        self._kill_at: dict[int, float] = {}  # id -> when a forced cancel kills
        self._give_up: dict[int, float] = {}  # id -> when a forced cancel stops waiting
        # --- outboxes, drained by the service ---
        self.changed: dict[int, TaskInstance] = {}
        self.runs: dict[str, list[TaskInstance]] = {}
        self.stops: list[Stop] = []
        self.finished: list[TaskInstance] = []

    def __repr__(self) -> str:
        queued = sum(1 for i in self.active.values() if i.status == S.QUEUED)
        return (
            f"<Scheduler active={len(self.active)} queued={queued} nodes={len(self.nodes)} "
            f"leases={len(self._leases)}>"
        )

    # --- loading ------------------------------------------------------------------------

    def load(self, instances: Iterable[TaskInstance], now: float) -> None:
        """Take back the unfinished instances a previous controller persisted.

        Queued ones go back in their queues in their old order; running ones become orphans
        that their node must claim within ``orphan_grace``; a cancel requested of an instance
        that held no lease completes at once.
        """
        for inst in sorted(instances, key=lambda i: i.id):
            self.active[inst.id] = inst
            self.known_keys.add(inst.key)
            self._seq[inst.id] = next(self._order)
            if inst.status == S.QUEUED:
                self._push(inst)
            elif inst.lease:
                self._leases[inst.lease] = inst.id
                self._orphans[inst.id] = now + self.orphan_grace
            elif inst.status == S.CANCEL_REQUESTED:
                self._end(inst, S.CANCELLED, now, "cancelled", "cancelled while queued")
            else:  # running without a lease cannot happen; treat it as lost
                self._lose(inst, now, "no lease after restart")

    # --- queueing -----------------------------------------------------------------------

    def queue(self, instances: Iterable[TaskInstance], now: float) -> None:
        """Accept new instances and start what free slots allow.

        Raises:
            UnknownTask: no node has offered one of the keys (nothing is queued then).
        """
        batch = list(instances)
        for inst in batch:
            if inst.key not in self.known_keys:
                offered = ", ".join(sorted(self.known_keys)) or "none yet"
                raise UnknownTask(
                    f"no node offers task {inst.key!r} (offered: {offered}); start a node "
                    "with `corral node --tasks MODULE` whose module defines it"
                )
        for inst in batch:
            inst.status = S.QUEUED.value
            inst.queued_at = inst.queued_at or now
            self.active[inst.id] = inst
            self._seq[inst.id] = next(self._order)
            self.changed[inst.id] = inst
            self._push(inst)
        self._fill_all(now)

    def _push(self, inst: TaskInstance) -> None:
        qkey = (inst.key, tuple(sorted(inst.labels)))
        heapq.heappush(
            self._queues.setdefault(qkey, []), (inst.priority, self._seq[inst.id], inst.id)
        )

    def _head(self, qkey: QueueKey) -> tuple[int, int, int] | None:
        """The best still-queued entry of a queue (dropping cancelled ones on the way)."""
        heap = self._queues[qkey]
        while heap:
            entry = heap[0]
            inst = self.active.get(entry[2])
            if inst is not None and inst.status == S.QUEUED and not inst.lease:
                return entry
            heapq.heappop(heap)
        return None

    def _fill_all(self, now: float) -> None:
        # Idle worker slots first (most idle first), then prefetch (most free first): a
        # batch spreads over the idle nodes instead of filling one node's pipes.
        nodes = [n for n in self.nodes.values() if n.free > 0]
        if not nodes:
            return
        for node in sorted(nodes, key=lambda n: -n.idle):
            if node.idle > 0:
                self._fill(node, now, node.idle)
        for node in sorted(nodes, key=lambda n: -n.free):
            self._fill(node, now)

    def _fill(self, node: NodeWorkers, now: float, most: int | None = None) -> None:
        """Give ``node`` the best queued instances it can run until it is full (or until
        it took ``most``)."""
        free = node.free if most is None else min(most, node.free)
        if free <= 0:
            return
        queues = [q for q in self._queues if node.matches(q)]
        room = max(1, node.slots) + node.lent + 1e-9
        load = sum(
            self.weight(self.active[i].key) for i in node.leases.values() if i in self.active
        )
        while free > 0 and queues:
            best: tuple[int, int, int] | None = None
            best_q: QueueKey | None = None
            for q in queues:
                if load + self.weight(q[0]) > room:
                    continue  # no room for this key's work; a shorter key's may still fit
                head = self._head(q)
                if head is not None and (best is None or head < best):
                    best, best_q = head, q
            if best is None or best_q is None:
                return
            heapq.heappop(self._queues[best_q])
            load += self.weight(best_q[0])
            self._assign(self.active[best[2]], node, now)
            free -= 1

    def key_prefetch(self, key: str) -> int:
        """Instances of ``key`` a node holds per worker slot: about ``prefetch_target``
        seconds of its work, between 1 (long or never measured) and ``prefetch``."""
        mean = self.run_time.get(key)
        if mean is None:
            return 1
        if mean * self.prefetch <= self.prefetch_target:  # (and no overflow for tiny means)
            return self.prefetch
        return max(1, math.ceil(self.prefetch_target / mean))

    def weight(self, key: str) -> float:
        """The share of a worker slot one held instance of ``key`` takes: ``1 / key_prefetch``.
        A node holds instances while their shares fit in its slots (plus what it was lent)."""
        return self._weights.get(key, 1.0)  # never measured: a whole slot

    def measured(self, key: str, seconds: float) -> None:
        """A run of ``key`` took ``seconds`` in its worker: update the key's mean."""
        if seconds < 0 or not math.isfinite(seconds):
            return
        mean = self.run_time.get(key)
        self.run_time[key] = seconds if mean is None else mean + RUN_TIME_WEIGHT * (seconds - mean)
        self._weights[key] = 1.0 / self.key_prefetch(key)

    def _assign(self, inst: TaskInstance, node: NodeWorkers, now: float) -> None:
        move(inst, S.ASSIGNED)
        lease = self._new_lease()
        while lease in self._leases or not lease:  # never two instances under one lease
            lease = self._new_lease()
        inst.lease, inst.node, inst.worker = lease, node.name, -1
        inst.attempts += 1
        inst.started_at = None  # set when a worker starts it
        inst.history.append(
            {"attempt": inst.attempts, "node": node.name, "lease": lease, "assigned": now}
        )
        node.leases[lease] = inst.id
        self._leases[lease] = inst.id
        self.changed[inst.id] = inst
        self.runs.setdefault(node.name, []).append(inst)

    # --- nodes --------------------------------------------------------------------------

    def node_hello(
        self,
        name: str,
        instance: str,
        keys: Iterable[str],
        labels: Iterable[str],
        slots: int,
        running: Iterable[str],
        now: float,
        subtasks: Iterable[str] = (),
    ) -> None:
        """A node's workers introduce themselves (after every join).

        ``running`` lists the leases the node still holds; every other lease this scheduler
        thinks it holds is lost. A node restarted under the same name loses all of them. A
        repeated hello from a node already registered (a retry) only updates its keys and
        slots: leases given since it was written would otherwise look lost.
        """
        old = self.nodes.get(name)
        if old is not None and old.instance != instance:
            self.node_gone(name, now, "the node restarted")
        node = self.nodes.get(name)
        reconcile = node is None
        if node is None:
            node = self.nodes[name] = NodeWorkers(
                name=name,
                instance=instance,
                keys=frozenset(keys),
                labels=frozenset(labels),
                slots=slots,
                capacity=max(1, slots) * self.prefetch,
            )
        else:
            node.keys, node.labels = frozenset(keys), frozenset(labels)
            node.slots, node.capacity = slots, max(1, slots) * self.prefetch + node.lent
        node.subtasks = frozenset(subtasks)
        self.known_keys.update(node.keys)
        if reconcile:
            self._reconcile(node, set(running), now)
        self._fill_all(now)

    def _reconcile(self, node: NodeWorkers, held: set[str], now: float) -> None:
        """Take back the leases ``node`` still holds; the others it held are lost."""
        name = node.name
        for lease, ident in list(self._leases.items()):
            inst = self.active.get(ident)
            if inst is None or inst.node != name:
                continue
            if lease in held:
                node.leases[lease] = ident
                self._orphans.pop(ident, None)
                if inst.status == S.CANCEL_REQUESTED:  # re-send: the node may not have seen it
                    self.stops.append(Stop(name, lease, False))
            else:
                node.leases.pop(lease, None)
                self._orphans.pop(ident, None)
                self._lose(inst, now, f"node {name} no longer holds it")

    def orphan_nodes(self) -> set[str]:
        """Nodes that held leases before a restart and have not said hello yet."""
        return {self.active[i].node for i in self._orphans if i in self.active}

    def lose_orphans(self, name: str, now: float, why: str) -> None:
        """Node ``name`` is gone: the leases it held before the restart are lost."""
        for ident in [i for i in self._orphans if i in self.active]:
            inst = self.active[ident]
            if inst.node == name:
                del self._orphans[ident]
                self._lose(inst, now, f"node {name} {why}")

    def lend(self, name: str, slots: int) -> bool:
        """Lend node ``name`` extra capacity (a task there waits for its map's subtasks, so
        its slot runs them meanwhile); a negative number takes it back. Returns whether it
        was done: not for a node without workers here, nor below nothing lent (a node that
        said hello again since starts with nothing lent)."""
        node = self.nodes.get(name)
        if node is None or node.lent + slots < 0:
            return False
        node.lent += slots
        node.capacity += slots
        return True

    def node_gone(self, name: str, now: float, reason: str) -> None:
        """Node ``name`` is DOWN, LEFT or restarted: every lease it held is lost."""
        node = self.nodes.pop(name, None)
        if node is None:
            return
        for ident in list(node.leases.values()):
            inst = self.active.get(ident)
            if inst is not None:
                self._lose(inst, now, f"node {name}: {reason}")
        self._fill_all(now)

    def _lose(self, inst: TaskInstance, now: float, why: str) -> None:
        """The lease of ``inst`` is gone: re-queue it, or give up after max_attempts."""
        self._leases.pop(inst.lease, None)
        node = self.nodes.get(inst.node)
        if node is not None:
            node.leases.pop(inst.lease, None)
        if inst.status == S.CANCEL_REQUESTED:
            self._end(inst, S.CANCELLED, now, "lost", f"cancelled; its worker was lost ({why})")
            return
        if inst.attempts >= inst.max_attempts:
            error = f"lost its worker {inst.attempts} times (max_attempts); last: {why}"
            self._end(inst, S.FAILED, now, "lost", error)
            return
        self._close_attempt(inst, now, "lost", why)
        move(inst, S.QUEUED)
        inst.lease, inst.worker = "", -1
        self.changed[inst.id] = inst
        self._push(inst)

    # --- results ------------------------------------------------------------------------

    def lease_of(self, lease: str) -> TaskInstance | None:
        """The instance holding ``lease`` now, or ``None`` for a stale or unknown lease."""
        ident = self._leases.get(lease)
        return None if ident is None else self.active.get(ident)

    def foreign(self, lease: str, node: str) -> str | None:
        """Who really holds ``lease``, if ``node`` reports on it without holding it.

        Args:
            lease: the lease a report names.
            node: the node that sent the report (from its subject, so from its credential).

        Returns:
            The holder's name when another node holds ``lease``; ``None`` when ``node`` holds
            it or nobody does (a stale or unknown lease, dropped as such).
        """
        inst = self.lease_of(lease)
        if inst is None or inst.node == node:
            return None
        return inst.node

    def started(self, lease: str, worker: int, now: float, *, reporter: str | None = None) -> None:
        """A worker of the node holding ``lease`` started its task: ``assigned`` becomes
        ``running`` and ``started_at`` is set (ignored under a stale lease, from a
        ``reporter`` node that does not hold it, and for an instance already started)."""
        inst = self.lease_of(lease)
        if inst is None or (reporter is not None and inst.node != reporter):
            return
        if inst.status == S.ASSIGNED or inst.started_at is None:
            self._start(inst, worker, now)

    def _start(self, inst: TaskInstance, worker: int, now: float) -> None:
        if inst.status == S.ASSIGNED:
            move(inst, S.RUNNING)
        attempt = inst.history[-1] if inst.history else {}
        if attempt.get("lease") == inst.lease:
            now = max(now, attempt.get("assigned", now))  # never before it was given out
            attempt["started"] = now
        inst.started_at = now
        if worker >= 0:
            inst.worker = worker
        self.changed[inst.id] = inst

    def progress(
        self,
        lease: str,
        percent: float,
        message: str,
        worker: int,
        *,
        reporter: str | None = None,
        now: float | None = None,
    ) -> None:
        """A running task reported progress (ignored under a stale lease, and from a
        ``reporter`` node that does not hold the lease). An ``assigned`` instance that
        reports progress has started (at ``now``, when given)."""
        inst = self.lease_of(lease)
        if inst is None or (reporter is not None and inst.node != reporter):
            return
        if inst.status == S.ASSIGNED and inst.started_at is None and now is not None:
            # an older node, which does not say "started": its progress says it
            self._start(inst, worker, now)
        inst.progress = max(0.0, min(100.0, percent))
        inst.message = message
        if worker >= 0:
            inst.worker = worker
        self.changed[inst.id] = inst

    def finish(
        self,
        lease: str,
        outcome: str,
        now: float,
        *,
        result: bytes | None = None,
        error: str = "",
        traceback: str = "",
        worker: int = -1,
        reporter: str | None = None,
        logs: str = "",
        log_limit: int = 65_536,
        seconds: float = -1.0,
    ) -> TaskInstance | None:
        """A task ended on its node: ``outcome`` is ``complete``, ``failed`` or ``stopped``.

        Args:
            lease: the lease it ran under.
            outcome: how it ended.
            now: the clock.
            result: its result (msgpack), for ``complete``.
            error: why it failed or stopped.
            traceback: the task's traceback, for ``failed``.
            worker: the worker slot that ran it.
            reporter: the reporting node; one that does not hold ``lease`` changes nothing.
            logs: what the attempt printed and logged (added to the instance's logs).
            log_limit: most characters of logs kept per instance (oldest cut first).
            seconds: how long the run took in its worker (negative: not measured); it
                feeds the key's adaptive prefetch.

        Returns:
            The instance, or ``None`` for a stale lease or another node's lease (the result
            is dropped).
        """
        inst = self.lease_of(lease)
        if inst is None or (reporter is not None and inst.node != reporter):
            return None
        if inst.status == S.ASSIGNED:  # ended before the node said it started (an older node)
            self._start(inst, worker, now)
        if worker >= 0:
            inst.worker = worker
        before = self.weight(inst.key)
        self.measured(inst.key, seconds)
        refill_all = self.weight(inst.key) != before  # room may have opened anywhere
        if logs:
            head = f"--- attempt {inst.attempts} on {inst.node} ---\n" if inst.attempts > 1 else ""
            inst.logs = cut_log(inst.logs + head + logs, log_limit)
        self._leases.pop(lease, None)
        node = self.nodes.get(inst.node)
        if node is not None:
            node.leases.pop(lease, None)
        if outcome == TaskOutcome.COMPLETE:
            inst.result = result
            inst.progress = 100.0
            self._end(inst, S.COMPLETE, now, outcome, "")
        elif outcome == TaskOutcome.STOPPED and inst.status == S.CANCEL_REQUESTED:
            self._end(inst, S.CANCELLED, now, "cancelled", error or "stopped on request")
        else:
            inst.traceback = traceback
            self._end(inst, S.FAILED, now, outcome, error or outcome)
        if refill_all:
            self._fill_all(now)
        elif node is not None:
            self._fill(node, now)
        return inst

    def _close_attempt(self, inst: TaskInstance, now: float, outcome: str, error: str) -> None:
        if inst.history and "ended" not in inst.history[-1]:
            inst.history[-1].update(
                {"ended": now, "outcome": outcome, "worker": inst.worker, "error": error}
            )

    def _end(
        self, inst: TaskInstance, status: TaskStatus, now: float, outcome: str, error: str
    ) -> None:
        if inst.status == S.QUEUED and status == S.CANCELLED:
            move(inst, S.CANCEL_REQUESTED)
        self._close_attempt(inst, now, outcome, error)
        move(inst, status)
        inst.error = error if status != S.COMPLETE else ""
        inst.finished_at = now
        self.active.pop(inst.id, None)
        self._seq.pop(inst.id, None)
        self._orphans.pop(inst.id, None)
        self._kill_at.pop(inst.id, None)
        self._give_up.pop(inst.id, None)
        self.changed[inst.id] = inst
        self.finished.append(inst)

    # --- cancellation -------------------------------------------------------------------

    def cancel(self, ident: int, now: float, *, force: bool = False) -> TaskInstance:
        """Cancel instance ``ident``: dequeue it, or ask its task to stop.

        Cancelling an instance already finished changes nothing and returns it as it is;
        cancelling again with ``force`` upgrades a cooperative cancel.

        Raises:
            NotFound: no unfinished instance has that id (look it up in the store).
        """
        inst = self.active.get(ident)
        if inst is None:
            raise NotFound(f"no unfinished task instance {ident}")
        inst.cancel_at = inst.cancel_at or now
        if inst.status == S.QUEUED:
            self._end(inst, S.CANCELLED, now, "cancelled", "cancelled while queued")
            return inst
        if inst.status in (S.ASSIGNED, S.RUNNING):
            move(inst, S.CANCEL_REQUESTED)
            self.stops.append(Stop(inst.node, inst.lease, False))
        if force and not inst.force:
            inst.force = True
            self._kill_at[ident] = now + self.grace
        self.changed[ident] = inst
        return inst

    def unreachable(self, lease: str, now: float, why: str) -> None:
        """A forced stop for ``lease`` could not be sent: end that forced cancel now.

        Nothing else changes: an instance not under a forced cancel waits for its node.
        """
        inst = self.lease_of(lease)
        if inst is not None and inst.force and inst.status == S.CANCEL_REQUESTED:
            self._abandon(inst, now, f"node {inst.node} is unreachable ({why})")

    def _abandon(self, inst: TaskInstance, now: float, why: str) -> None:
        """End a forced cancel without the node's word: free the lease and the slot."""
        self._leases.pop(inst.lease, None)
        node = self.nodes.get(inst.node)
        if node is not None:
            node.leases.pop(inst.lease, None)
        self._end(inst, S.CANCELLED, now, "cancelled", f"cancelled (forced); {why}")
        if node is not None:
            self._fill(node, now)

    # --- sending ------------------------------------------------------------------------

    def unsent(
        self, leases: Iterable[str], now: float, why: str, *, permanent: bool = False
    ) -> None:
        """The runs under ``leases`` could not be put on the bus: undo their assignment.

        Each instance goes back to its queue in its old place, its attempt not counted and
        its node's slot freed; it is given out again on the next tick. One that was asked to
        cancel meanwhile is cancelled. With ``permanent`` (it can never be sent, e.g. it is
        larger than the bus carries) it fails with ``why`` instead. A lease that is no
        longer current (the instance finished or moved on) is ignored.

        Args:
            leases: The leases of the runs that were not sent.
            now: The time.
            why: What went wrong (kept as the instance's error when it fails).
            permanent: Fail the instances instead of queueing them again.
        """
        for lease in leases:
            inst = self.lease_of(lease)
            if inst is None:
                continue
            del self._leases[lease]
            node = self.nodes.get(inst.node)
            if node is not None:
                node.leases.pop(lease, None)
            # The attempt never happened: no count, no history entry, no node.
            if inst.history and inst.history[-1].get("lease") == lease:
                inst.history.pop()
            inst.attempts = max(0, inst.attempts - 1)
            inst.lease, inst.node, inst.worker = "", "", -1
            inst.started_at = inst.history[-1].get("started") if inst.history else None
            if inst.status == S.CANCEL_REQUESTED:
                self._end(inst, S.CANCELLED, now, "cancelled", "cancelled before it was sent")
            elif permanent:
                self._end(inst, S.FAILED, now, "unsent", f"could not be sent to a node: {why}")
            else:
                move(inst, S.QUEUED)
                self.changed[inst.id] = inst
                self._push(inst)

    # --- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Let time pass: orphans whose node never claimed them, forced cancels due."""
        for ident, deadline in list(self._orphans.items()):
            if now >= deadline:
                del self._orphans[ident]
                inst = self.active.get(ident)
                if inst is not None:
                    self._lose(inst, now, f"node {inst.node} did not claim it after a restart")
        for ident, due in list(self._kill_at.items()):
            if now >= due:
                del self._kill_at[ident]
                inst = self.active.get(ident)
                if inst is not None and inst.lease:
                    self.stops.append(Stop(inst.node, inst.lease, True))
                    self._give_up[ident] = now + self.grace
        for ident, due in list(self._give_up.items()):
            if now >= due:
                del self._give_up[ident]
                inst = self.active.get(ident)
                if inst is not None:
                    why = f"node {inst.node} did not confirm the kill within {self.grace:g}s"
                    self._abandon(inst, now, why)
        self._fill_all(now)

    # --- outboxes -----------------------------------------------------------------------

    def take(
        self,
    ) -> tuple[list[TaskInstance], dict[str, list[TaskInstance]], list[Stop], list[TaskInstance]]:
        """Drain the outboxes: (changed, runs per node, stops, finished)."""
        out = (list(self.changed.values()), self.runs, self.stops, self.finished)
        self.changed, self.runs, self.stops, self.finished = {}, {}, [], []
        return out
