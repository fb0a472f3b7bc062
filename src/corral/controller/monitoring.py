"""What operators watch: the controller's metrics (Prometheus), read when scraped.

Theory of operation: almost every number is read from the controller's memory when it is
scraped (the registry, the command book, the scheduler's active instances, the bus client's
statistics, the controller's counters), so nothing on a hot path pays for metrics. Only four
things are observed as they happen, each at most once per batch or tick: the event loop's lag
(a task that sleeps :data:`LAG_EVERY` seconds and measures how late it woke; the worst is
kept), the store's
commits (a hook the store's writer thread calls with each transaction's time and size), and
the tasks that finished (the task service's ``on_finished`` hook, per commit batch), whose
wait and run times go into histograms and whose failures are kept for ``corral status``.

Each controller has its own :class:`prometheus_client.CollectorRegistry`: two controllers in
one process (the tests) never share a metric. The monitor is given the controller's parts it
reads (:class:`Watched`), never the controller itself.

The HTTP side (the routes, who may call them) is :mod:`corral.controller.probes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from corral._version import __version__
from corral.core.commands import CommandState
from corral.core.registry import NodeStatus
from corral.core.taskstate import TaskInstance, TaskStatus

if TYPE_CHECKING:
    from corral.bus import NATS
    from corral.config import Config
    from corral.controller.commands import CommandService
    from corral.controller.leadership import Leadership
    from corral.controller.tasks import TaskService
    from corral.core.limits import CallLimiter
    from corral.core.registry import Registry
    from corral.store import Store
    from corral.store.writes import Backoff

__all__ = ["LAG_EVERY", "RECENT", "Monitor", "Watched"]

log = logging.getLogger("corral.monitoring")

#: seconds between two measures of the event loop's lag: short enough that a block of 50 ms
#: is seen whenever it happens (a wake-up due during it is late), cheap at 20 wake-ups a second
LAG_EVERY = 0.05
#: failed tasks (and commands) ``/status`` lists
RECENT = 10

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TASK_SECONDS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
_UNITS = (1, 2, 5, 10, 20, 50, 100, 200, 512)


def _no_limiter() -> CallLimiter | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Watched:
    """What the monitor reads of a started controller.

    Attributes:
        id: The controller's id.
        started: When it started (epoch seconds).
        config: Its settings (``bus_url``, ``metrics_public``).
        clock: Its wall clock.
        registry: The node registry.
        commands: The command router (its book and counters).
        tasks: The task service (its scheduler's active instances, its ``on_finished`` hook).
        store: The opened store (its writer, a read for ``/readyz``).
        nc: The controller's bus connection (connected? its statistics).
        counters: The controller's counters (``heartbeat``, ``join``, ``rejected.<code>``...).
        backoff: The store writes' backoff (failures in a row), if the controller keeps one.
        limiter: Gives the API's per-token limiter (its refusals), once the API serves.
        leadership: Its role among several controllers (``None``: it leads alone).
    """

    id: str
    started: float
    config: Config
    clock: Callable[[], float]
    registry: Registry
    commands: CommandService
    tasks: TaskService | None
    store: Store | None
    nc: NATS | None
    counters: Mapping[str, int] = field(default_factory=dict)
    backoff: Backoff | None = None
    limiter: Callable[[], CallLimiter | None] = _no_limiter
    leadership: Leadership | None = None


class Monitor(Collector):
    """The controller's metrics: collected at scrape time, plus the few observed histograms.

    Args:
        ctl: The controller's parts to watch.
    """

    def __init__(self, ctl: Watched) -> None:
        self.ctl = ctl
        self.registry = CollectorRegistry(auto_describe=False)
        self.loop_lag = Histogram(
            "corral_event_loop_lag_seconds",
            "How late the controller's event loop ran a timer (measured every 0.05 s).",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "corral_store_commit_seconds",
            "Time of one store transaction (one group commit), in the store's writer thread.",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.commit_units = Histogram(
            "corral_store_commit_units",
            "Writes (units) in one store transaction: the group commit's batch size.",
            buckets=_UNITS,
            registry=self.registry,
        )
        self.task_wait = Histogram(
            "corral_task_wait_seconds",
            "Seconds from queued to started, of finished task instances.",
            buckets=_TASK_SECONDS,
            registry=self.registry,
        )
        self.task_run = Histogram(
            "corral_task_run_seconds",
            "Seconds from started to finished, of finished task instances.",
            buckets=_TASK_SECONDS,
            registry=self.registry,
        )
        self.registry.register(self)
        #: the last lag measured, and the worst since the monitor started, in seconds
        self.last_lag = 0.0
        self.max_lag = 0.0
        self.finished: dict[str, int] = {}
        #: the latest failed task instances: (at, id, key, node, error)
        self.failures: deque[tuple[float, int, str, str, str]] = deque(maxlen=RECENT)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        lag, worst, done = self.last_lag * 1000, self.max_lag * 1000, sum(self.finished.values())
        return f"<Monitor lag={lag:.1f}ms max={worst:.1f}ms finished={done}>"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start measuring the loop's lag; hook the store's commits and the tasks' ends."""
        tasks = self.ctl.tasks
        if tasks is not None:
            tasks.on_finished.append(self.tasks_finished)
        writer = self._writer()
        if writer is not None:
            writer.observe = self.store_committed
        self._task = asyncio.create_task(self._lag_loop(), name="loop-lag")

    async def stop(self) -> None:
        """Stop measuring and unhook."""
        tasks = self.ctl.tasks
        if tasks is not None and self.tasks_finished in tasks.on_finished:
            tasks.on_finished.remove(self.tasks_finished)
        writer = self._writer()
        if writer is not None and writer.observe == self.store_committed:
            writer.observe = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _writer(self) -> Any:
        store = self.ctl.store
        return getattr(store, "writer", None) if store is not None else None

    async def _lag_loop(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_EVERY)
            self.last_lag = max(0.0, time.monotonic() - before - LAG_EVERY)
            self.max_lag = max(self.max_lag, self.last_lag)
            self.loop_lag.observe(self.last_lag)

    # --- hooks --------------------------------------------------------------------------

    def store_committed(self, seconds: float, units: int) -> None:
        """The store's writer committed ``units`` writes in ``seconds`` (its thread)."""
        self.commit_seconds.observe(seconds)
        self.commit_units.observe(units)

    def tasks_finished(self, instances: Iterable[TaskInstance]) -> None:
        """Count instances that ended, observe their times, keep the latest failures."""
        for inst in instances:
            status = str(inst.status)
            self.finished[status] = self.finished.get(status, 0) + 1
            if inst.started_at is not None:
                self.task_wait.observe(max(0.0, inst.started_at - inst.queued_at))
                if inst.finished_at is not None:
                    self.task_run.observe(max(0.0, inst.finished_at - inst.started_at))
            if status == TaskStatus.FAILED:
                at = inst.finished_at or 0.0
                self.failures.append((at, inst.id, inst.key, inst.node, inst.error[:200]))

    # --- scrape time --------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe ahead of a scrape (the registry does not ask: no auto-describe)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every metric read from the controller's memory now."""
        ctl = self.ctl
        info = GaugeMetricFamily(
            "corral_controller_info", "This controller.", labels=["version", "controller"]
        )
        info.add_metric([__version__, ctl.id[:8]], 1.0)
        yield info
        nodes = GaugeMetricFamily("corral_nodes", "Nodes by status.", labels=["status"])
        for status, count in sorted(self.node_counts().items()):
            nodes.add_metric([status], count)
        yield nodes
        beats = ctl.counters.get("heartbeat", 0)
        yield CounterMetricFamily("corral_heartbeats", "Heartbeats received.", value=beats)
        joins = ctl.counters.get("join", 0)
        yield CounterMetricFamily("corral_joins", "Joins received.", value=joins)
        lag = GaugeMetricFamily(
            "corral_event_loop_lag_last_seconds", "The event loop's latest lag.", self.last_lag
        )
        yield lag
        yield GaugeMetricFamily(
            "corral_event_loop_lag_max_seconds",
            "The event loop's worst lag since the controller started.",
            self.max_lag,
        )
        yield from self._store()
        yield from self._commands()
        yield from self._tasks()
        yield from self._bus()
        refused = CounterMetricFamily(
            "corral_refused", "Calls and messages refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self.refusals().items()):
            refused.add_metric([reason], count)
        yield refused

    def node_counts(self) -> dict[str, int]:
        """Nodes by status (every status present, zero or not)."""
        counts = {str(s): 0 for s in NodeStatus}
        for record in self.ctl.registry.nodes.values():
            counts[str(record.status)] = counts.get(str(record.status), 0) + 1
        return counts

    def task_counts(self) -> dict[str, int]:
        """Unfinished task instances by status (queue depth is ``queued``)."""
        counts = {str(s): 0 for s in TaskStatus if s not in _ENDED}
        tasks = self.ctl.tasks
        if tasks is not None:
            for inst in tasks.core.active.values():
                counts[str(inst.status)] = counts.get(str(inst.status), 0) + 1
        return counts

    def refusals(self) -> dict[str, int]:
        """Refused messages and calls by reason, from every counter that keeps them."""
        out: dict[str, int] = {}
        sources: list[tuple[str, dict[str, int]]] = [
            ("", dict(self.ctl.counters)),
            ("commands.", self.ctl.commands.counters),
        ]
        for prefix, counters in sources:
            for key, count in counters.items():
                if ".rejected." in f".{key}":
                    reason = (prefix + key).replace("rejected.", "")
                    out[reason] = out.get(reason, 0) + count
        limiter = self.ctl.limiter()
        if limiter is not None:
            for why, count in limiter.refused.items():
                out[f"api.{why}"] = count
        return out

    def _store(self) -> Iterator[Metric]:
        writer = self._writer()
        if writer is not None:
            yield GaugeMetricFamily(
                "corral_store_pending_units", "Writes waiting for the writer.", writer.pending
            )
            log_sync = getattr(writer, "log_sync", None)
            if log_sync is not None:  # SQLite with store_fsync_interval > 0
                yield CounterMetricFamily(
                    "corral_store_log_fsyncs",
                    "Fsyncs of the SQLite store's log by its writer's fsync thread.",
                    value=log_sync.syncs,
                )
        yield GaugeMetricFamily(
            "corral_store_failures",
            "Store writes failed in a row (0 when the last one committed).",
            self.store_failures(),
        )

    def store_failures(self) -> int:
        """Store writes failed in a row (0 once one commits, or without a backoff)."""
        backoff = self.ctl.backoff
        return backoff.failures if backoff is not None else 0

    def _commands(self) -> Iterator[Metric]:
        book = self.ctl.commands.book
        states = {str(s): 0 for s in CommandState}
        for command in book.commands.values():
            for state, count in command.tally().items():
                states[str(state)] += count
        outcomes = GaugeMetricFamily(
            "corral_command_outcomes",
            "Outcomes of the commands the controller follows, by state.",
            labels=["state"],
        )
        for name, count in states.items():
            outcomes.add_metric([name], count)
        yield outcomes
        accepted = self.ctl.commands.counters.get("commands", 0)
        yield CounterMetricFamily("corral_commands", "Commands accepted.", value=accepted)
        yield GaugeMetricFamily("corral_command_last_serial", "Last serial.", book.last_serial)

    def _tasks(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "corral_tasks", "Unfinished task instances by status.", labels=["status"]
        )
        for status, count in self.task_counts().items():
            active.add_metric([status], count)
        yield active
        ended = CounterMetricFamily(
            "corral_tasks_finished", "Task instances that ended, by status.", labels=["status"]
        )
        for status in sorted(_ENDED):
            ended.add_metric([str(status)], self.finished.get(str(status), 0))
        yield ended

    def _bus(self) -> Iterator[Metric]:
        nc = self.ctl.nc
        stats = getattr(nc, "stats", {}) if nc is not None else {}
        connected = 1.0 if nc is not None and nc.is_connected else 0.0
        yield GaugeMetricFamily("corral_bus_connected", "1 while connected to NATS.", connected)
        yield CounterMetricFamily(
            "corral_bus_reconnects", "Reconnections to NATS.", value=stats.get("reconnects", 0)
        )
        for key, doc in (("in_msgs", "Messages received."), ("out_msgs", "Messages sent.")):
            yield CounterMetricFamily(f"corral_bus_{key}", doc, value=stats.get(key, 0))


_ENDED = frozenset({TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED})
