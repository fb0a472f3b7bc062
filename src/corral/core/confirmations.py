"""Which of the nodes' final reports to confirm, and how, without I/O.

Theory of operation: a node re-sends a final report until the controller confirms that it is
on disk. Confirming each report with its own message would double a broadcast's messages, so
confirmations are batched two ways. A command every target of which has reported a final
outcome (``done`` or ``failed``, by itself) now on disk is *settled*: its serial rides on the
next message every node receives anyway (the next live command, or a confirmation of its own
when none comes), and every target drops its report. A report whose command does not settle
within :data:`HOLD` seconds (a target is slow, away, or expired) is confirmed to its node
alone, with every other such report of that node, in one message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from corral.core.commands import CommandState, Outcome

__all__ = ["Confirmations", "HOLD"]

#: Seconds a report on disk waits for its command to settle before it is confirmed alone
#: (nodes re-send after two seconds).
HOLD = 0.4

_REPORTED = (CommandState.DONE, CommandState.FAILED)


class Confirmations:
    """The reports on disk not yet confirmed, and the commands settled.

    Args:
        targets: how many targets command ``serial`` has (``None``: not followed).
        hold: :data:`HOLD`.
        clock: a monotonic clock.
    """

    def __init__(
        self,
        targets: Callable[[int], int | None],
        hold: float = HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.targets = targets
        self.hold = hold
        self.clock = clock
        #: node -> serial -> when its final report was on disk, not yet confirmed
        self._waiting: dict[str, dict[int, float]] = {}
        #: serial -> the nodes waiting for it
        self._by_serial: dict[int, set[str]] = {}
        #: serial -> how many targets' reported final outcomes are on disk
        self._reported: dict[int, int] = {}
        #: settled serials not yet sent
        self._settled: list[int] = []

    def __repr__(self) -> str:
        return f"<Confirmations waiting={len(self._by_serial)} settled={self._settled}>"

    def durable(
        self, reports: Iterable[tuple[str, int]], outcomes: Iterable[tuple[int, Outcome]]
    ) -> None:
        """A batch is on disk: final ``reports`` (node, serial) to confirm, and the
        ``outcomes`` it wrote (copies, as written)."""
        now = self.clock()
        for node, serial in reports:
            self._waiting.setdefault(node, {}).setdefault(serial, now)
            self._by_serial.setdefault(serial, set()).add(node)
        for serial, outcome in outcomes:
            if outcome.state not in _REPORTED:
                continue
            count = self._reported[serial] = self._reported.get(serial, 0) + 1
            if count == self.targets(serial):
                del self._reported[serial]
                self._settled.append(serial)
                for node in self._by_serial.pop(serial, ()):
                    self._waiting[node].pop(serial, None)

    def settled(self) -> tuple[int, ...]:
        """Take the serials settled since the last call (to send to every node)."""
        out, self._settled = tuple(self._settled), []
        return out

    def settled_again(self, serials: Iterable[int]) -> None:
        """Serials taken by :meth:`settled` but not sent: send them next time."""
        self._settled[:0] = serials

    def due(self) -> dict[str, tuple[int, ...]]:
        """Take, per node, the reports on disk whose command did not settle in time."""
        limit = self.clock() - self.hold
        out: dict[str, tuple[int, ...]] = {}
        for node, serials in list(self._waiting.items()):
            late = tuple(s for s, at in serials.items() if at <= limit)
            for s in late:
                del serials[s]
                nodes = self._by_serial.get(s)
                if nodes is not None:
                    nodes.discard(node)
                    if not nodes:
                        del self._by_serial[s]
            if not serials:
                del self._waiting[node]
            if late:
                out[node] = late
        return out

    def forget(self, serials: Iterable[int]) -> None:
        """The book stopped following these commands: they will not settle."""
        for serial in serials:
            self._reported.pop(serial, None)
