"""socketComm's ``Comm`` on corral groups: ``barrier``, ``collect``, ``distribute``,
point-to-point ``writeDataTo`` / ``readDataFrom`` and ``info``.

    from corral.compat.socketcomm import Comm
    comm = Comm(numProcs=8, procNum=rank, host="ignored", port=9021)
    comm.barrier()                 # the ranks that reached it (dead members left out)
    rows = comm.collect(row)       # rank 0: every rank's row in rank order; others: None
    params = comm.distribute(p)    # rank 0's value everywhere
    comm.writeDataTo(1, row)       # point to point, read in order by rank 1:
    row = comm.readDataFrom(0)

``host`` and ``port`` are accepted and ignored: members meet on the corral bus, in the group
named ``CORRAL_GROUP`` or ``comm-<port>``. Values are msgpack-able data, never pickles.
"""

from __future__ import annotations

import os
from typing import Any

from corral.sync import Group

__all__ = ["Comm"]


class Comm:
    """socketComm's ``Comm(numProcs, procNum, host, port, timeout, startupTimeout,
    allowStartupFailures)``."""

    def __init__(
        self,
        numProcs: int,  # noqa: N803 - socketComm's names
        procNum: int | None,  # noqa: N803
        host: str = "",
        port: int = 9021,
        timeout: float = 138240,
        startupTimeout: float = 50,  # noqa: N803
        allowStartupFailures: bool = True,  # noqa: N803
    ) -> None:
        self.timeout = timeout
        self.group = Group.join(
            os.environ.get("CORRAL_GROUP") or f"comm-{port}",
            numProcs,
            procNum,
            startup_timeout=startupTimeout,
            allow_startup_failures=bool(allowStartupFailures),
        )
        #: the rank after any renumbering of start-up failures (socketComm's procNum)
        self.procNum = self.group.rank
        #: the group's size after start-up failures (socketComm's numProcs)
        self.numProcs = self.group.size

    def _timeout(self, timeout: float) -> float:
        return self.timeout if timeout is None or timeout < 0 else timeout

    def barrier(self, timeout: float = -1) -> list[int]:
        """Wait for every live member; return the ranks that reached the barrier."""
        return self.group.barrier(self._timeout(timeout))

    def collect(self, msg: Any) -> list[Any] | None:
        """Send ``msg`` to rank 0, which gets every rank's, sorted by rank."""
        return self.group.collect(msg, self.timeout)

    def distribute(self, msg: Any = None) -> Any:
        """Return rank 0's ``msg`` on every rank."""
        return self.group.distribute(msg, self.timeout)

    def writeDataTo(self, procNum: int, msg: Any) -> None:  # noqa: N802, N803
        """Send ``msg`` to rank ``procNum``, which reads it with :meth:`readDataFrom`.

        Raises:
            UsageError: no such rank (or this member's own).
            GroupRefused: ``procNum`` died or left.
        """
        self.group.write_data_to(procNum, msg, self.timeout)

    def readDataFrom(self, procNum: int, timeout: float = -1) -> Any:  # noqa: N802, N803
        """Return the next ``msg`` rank ``procNum`` wrote to this member (waits for it).

        Raises:
            UsageError: no such rank (or this member's own).
            GroupRefused: ``procNum`` died or left with nothing more sent.
            GroupTimeout: nothing came within the timeout (``Comm``'s by default).
        """
        return self.group.read_data_from(procNum, self._timeout(timeout))

    def info(self, procNum: int | None = None) -> dict[str, Any]:  # noqa: N803
        """What is known of rank ``procNum`` (default: this one): ``rank``, ``size``,
        ``group``, ``host``, ``pid``, ``state`` (``alive``, ``dead``, ``left``), ...

        Raises:
            UsageError: no such rank.
        """
        return self.group.info(procNum)

    def close(self) -> None:
        """Leave the group."""
        self.group.leave()
