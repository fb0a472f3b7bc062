"""The host's CPU, memory, disk and load, as a node sends them with its heartbeats (psutil).

Sampling is cheap but not free (``/proc/stat``, ``/proc/meminfo``, a ``statvfs``), so a
:class:`HostStats` samples at most every ``every`` seconds and sends its last sample with
every heartbeat in between. CPU percent is measured between two samples
(``psutil.cpu_percent(interval=None)``: it never sleeps). A failing sample sends nothing
rather than stopping the heartbeats.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from corral.wire import NodeStats

__all__ = ["HostStats"]

log = logging.getLogger("corral.node")

#: one sampler per filesystem in this process (:meth:`HostStats.shared`)
_SHARED: dict[object, HostStats] = {}


class HostStats:
    """The latest sample of the host's load, refreshed at most every ``every`` seconds.

    Args:
        disk: A path on the disk whose use is reported (the node's data directory).
        every: Seconds between two samples.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self, disk: Path, every: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.disk = disk
        self.every = every
        self.clock = clock
        self._at = -float("inf")
        self._last: NodeStats | None = None
        psutil.cpu_percent(interval=None)  # the first call only starts the measure

    def __repr__(self) -> str:
        return f"<HostStats {self.disk} {self._last}>"

    @classmethod
    def shared(cls, disk: Path) -> HostStats:
        """The one sampler of this process for the filesystem ``disk`` is on: the nodes a
        process hosts (a hundred in a fleet benchmark) read the host once, not once each."""
        probe = disk
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            key: object = probe.stat().st_dev
        except OSError:
            key = str(disk)
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = cls(disk)
        return found

    def current(self) -> NodeStats | None:
        """The latest sample (taken now if the last is older than ``every``), or None if
        the host cannot be read."""
        now = self.clock()
        if now - self._at >= self.every:
            self._at = now
            self._last = self.sample()
        return self._last

    def sample(self) -> NodeStats | None:
        """Read the host now."""
        try:
            disk = self.disk if self.disk.exists() else Path(self.disk.anchor or "/")
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            return NodeStats(
                cpu_percent=round(psutil.cpu_percent(interval=None), 1),
                mem_percent=round(psutil.virtual_memory().percent, 1),
                disk_percent=round(psutil.disk_usage(str(disk)).percent, 1),
                load1=round(load, 2),
            )
        except (OSError, RuntimeError, ValueError) as exc:
            log.debug("host stats unavailable: %s", exc)
            return None
