"""Time series for the dashboard's charts, sampled from the controller's memory.

Theory of operation: :class:`Trends` is a plain core (no asyncio, no controller): it is given
a :class:`Sample` every :data:`STEP` seconds and the task instances that ended in between,
and keeps the last :data:`KEEP` samples (half an hour) in a ring, each numbered by a
sequence. :class:`Sampler` is the I/O shell: a task that reads the controller's memory into a
sample (no store query, no bus message), and a hook on the task service that hands it the
instances that ended, so a task queued and finished between two samples is still counted.

The charts page's event stream (:mod:`corral.dashboard.live`) sends the whole ring once and
then only the samples after the last one it sent: a viewer costs one small message per step.

Per-node CPU and memory come from each node record's ``stats`` (a mapping that nodes send
with their heartbeats, when they do): the keys ``cpu_percent`` and ``mem_percent``, read by
:func:`node_stats`. A node without them has no line; the page says "no data" when none has.
Only the first :data:`MAX_NODES` nodes (by name) with stats are kept, so a large fleet's
charts stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.core.commands import CommandState
from corral.core.taskstate import TaskInstance, TaskStatus

if TYPE_CHECKING:
    from corral.controller.parts import ControllerParts

__all__ = ["KEEP", "MAX_NODES", "STEP", "Sample", "Sampler", "Trends", "node_stats"]

log = logging.getLogger("corral.dashboard")

#: seconds between samples
STEP = 2.0
#: samples kept (half an hour at two seconds)
KEEP = 900
#: most nodes whose CPU and memory are kept
MAX_NODES = 32

_FINAL = (CommandState.DONE, CommandState.FAILED, CommandState.EXPIRED)


@dataclass
class Sample:
    """What the charts show at one moment; counts of ended things are since the last sample."""

    t: float
    #: nodes by liveness status (UP, DOWN, LEFT, REVOKED)
    nodes: dict[str, int] = field(default_factory=dict)
    queued: int = 0
    running: int = 0
    #: instances given to a node but not started there yet (prefetched), if the scheduler says
    assigned: int = 0
    #: command outcomes that became done, failed or expired since the last sample
    commands: dict[str, int] = field(default_factory=dict)
    #: node name -> (cpu percent, memory percent)
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def _pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return round(float(value), 2)


def node_stats(record: Any) -> tuple[float | None, float | None]:
    """A node record's CPU and memory percent, from its ``stats`` (None where absent).

    The only place the charts touch the nodes' heartbeat stats: ``record.stats`` may be a
    mapping or a struct; ``cpu_percent`` and ``mem_percent`` are read from it, and anything
    missing or not a number is None.

    Args:
        record: a :class:`~corral.records.NodeRecord` (or anything with ``stats``).

    Returns:
        ``(cpu_percent, mem_percent)``, each None when the node does not send it.
    """
    stats = getattr(record, "stats", None)
    if stats is None:
        return None, None
    if isinstance(stats, Mapping):
        return _num(stats.get("cpu_percent")), _num(stats.get("mem_percent"))
    return _num(getattr(stats, "cpu_percent", None)), _num(getattr(stats, "mem_percent", None))


class Trends:
    """The last :data:`KEEP` samples, and the task ends gathered for the next one.

    Args:
        keep: how many samples to keep.
    """

    def __init__(self, keep: int = KEEP) -> None:
        self.samples: deque[tuple[int, dict[str, Any]]] = deque(maxlen=keep)
        self.seq = 0
        self._ended: dict[str, int] = {}
        self._run: list[float] = []
        self._wait: list[float] = []

    def __repr__(self) -> str:
        return f"<Trends {len(self.samples)} samples, seq={self.seq}>"

    def tasks_ended(self, instances: Iterable[TaskInstance]) -> None:
        """Count instances that ended (complete, failed, cancelled) and their durations."""
        for inst in instances:
            status = str(inst.status)
            self._ended[status] = self._ended.get(status, 0) + 1
            if inst.finished_at and inst.started_at:
                self._run.append(max(0.0, inst.finished_at - inst.started_at))
            if inst.started_at and inst.queued_at:
                self._wait.append(max(0.0, inst.started_at - inst.queued_at))

    def add(self, sample: Sample) -> dict[str, Any]:
        """Record ``sample`` with the task ends gathered since the last one.

        Returns:
            The sample as the charts receive it.
        """
        ended, self._ended = self._ended, {}
        run, self._run = self._run, []
        wait, self._wait = self._wait, []
        self.seq += 1
        row = {
            "seq": self.seq,
            "t": round(sample.t, 3),
            "up": sample.nodes.get("UP", 0),
            "down": sample.nodes.get("DOWN", 0),
            "left": sample.nodes.get("LEFT", 0),
            "queued": sample.queued,
            "running": sample.running,
            "assigned": sample.assigned,
            "complete": ended.get(TaskStatus.COMPLETE, 0),
            "failed": ended.get(TaskStatus.FAILED, 0),
            "cancelled": ended.get(TaskStatus.CANCELLED, 0),
            "run_p50": _pct(run, 0.5),
            "run_p95": _pct(run, 0.95),
            "wait_p50": _pct(wait, 0.5),
            "cmd_done": sample.commands.get(CommandState.DONE, 0),
            "cmd_failed": sample.commands.get(CommandState.FAILED, 0),
            "cmd_expired": sample.commands.get(CommandState.EXPIRED, 0),
            "cpu": {n: c for n, (c, _) in sample.stats.items() if c is not None},
            "mem": {n: m for n, (_, m) in sample.stats.items() if m is not None},
        }
        self.samples.append((self.seq, row))
        return row

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The samples after sequence ``seq`` (all of them for 0), oldest first."""
        return [row for s, row in self.samples if s > seq]


class Sampler:
    """Feeds :class:`Trends` from a controller every ``step`` seconds.

    Args:
        controller: whose memory to read.
        trends: where the samples go.
        step: seconds between samples.
        clock: wall-clock seconds (the samples' time axis).
    """

    def __init__(
        self,
        controller: ControllerParts,
        trends: Trends,
        step: float = STEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctl = controller
        self.trends = trends
        self.step = step
        self.clock = clock
        #: serial -> its final outcome counts at the last sample
        self._seen: dict[int, tuple[int, ...]] = {}
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Sampler every {self.step}s {self.trends!r}>"

    def start(self) -> None:
        """Hook the task service and start sampling (once)."""
        if self._task is not None:
            return
        tasks = self.ctl.tasks
        if tasks is not None:
            tasks.on_finished.append(self.trends.tasks_ended)
        self._command_ends()  # what ended before we started is not this interval's
        self._task = asyncio.create_task(self._run(), name="dashboard-trends")

    async def stop(self) -> None:
        """Stop sampling and unhook."""
        tasks = self.ctl.tasks
        if tasks is not None and self.trends.tasks_ended in tasks.on_finished:
            tasks.on_finished.remove(self.trends.tasks_ended)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.trends.add(self.sample())
            except Exception:  # a chart must never take the controller down
                log.exception("dashboard sample failed")
            await asyncio.sleep(self.step)

    def sample(self) -> Sample:
        """Read the controller's memory into a sample (counts of ends since the last)."""
        sample = Sample(t=self.clock(), commands=self._command_ends())
        with_stats: list[tuple[str, tuple[float | None, float | None]]] = []
        for record in self.ctl.registry.all():
            status = str(record.status)
            sample.nodes[status] = sample.nodes.get(status, 0) + 1
            cpu, mem = node_stats(record)
            if cpu is not None or mem is not None:
                with_stats.append((record.name, (cpu, mem)))
        sample.stats = dict(sorted(with_stats)[:MAX_NODES])
        core = self.ctl.tasks.core if self.ctl.tasks is not None else None
        if core is not None:
            for inst in core.active.values():
                status = str(inst.status)
                if status == TaskStatus.QUEUED:
                    sample.queued += 1
                elif status == "assigned":  # the scheduler's prefetched state, where it has one
                    sample.assigned += 1
                elif inst.lease:
                    sample.running += 1
        return sample

    def _command_ends(self) -> dict[str, int]:
        """Outcomes that became final since the last sample, from each command's tally
        (kept up to date by the book: no walk over every outcome)."""
        out = dict.fromkeys((str(s) for s in _FINAL), 0)
        seen: dict[int, tuple[int, ...]] = {}
        for serial, command in self.ctl.commands.book.commands.items():
            tally = command.tally()
            now = tuple(tally[s] for s in _FINAL)
            before = self._seen.get(serial, (0,) * len(_FINAL))
            for state, a, b in zip(_FINAL, before, now, strict=True):
                out[str(state)] += max(0, b - a)  # expired -> done moves one, not two
            seen[serial] = now
        self._seen = seen
        return out
