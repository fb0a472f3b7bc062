"""Command serials, catch-up and retirement, without I/O (SEER ``checkSerial``, ``retireSerials``).

Theory of operation: the controller gives every command the next serial — strictly increasing,
never reused (the counter is persisted) — and records the nodes it resolved to. A node reports
the last serial it applied in every heartbeat. :meth:`SerialLog.catch_up` then says which
commands that node still lacks, oldest first, and which of those are older than their retire
window and must be reported *expired* for that node instead (SEER dropped stored messages after
two minutes; its successor said when a message was no longer available). On the node,
:class:`Applied` applies commands in serial order exactly once, whatever order or how many times
they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Applied", "CatchUp", "Command", "SerialLog"]


@dataclass(frozen=True)
class Command:
    """What the log remembers of a command."""

    serial: int
    created: float
    targets: frozenset[str]
    retire_after: float = 120.0


@dataclass
class CatchUp:
    """What a node that was away should get: commands to deliver, and ones it missed for good."""

    deliver: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)


class SerialLog:
    """The controller's record of recent commands.

    Args:
        last: the highest serial ever issued (from the store), so serials survive restarts.
    """

    def __init__(self, last: int = 0) -> None:
        self.last = last
        self.commands: dict[int, Command] = {}

    def __repr__(self) -> str:
        return f"<SerialLog last={self.last} kept={len(self.commands)}>"

    def issue(self, targets: frozenset[str], now: float, retire_after: float = 120.0) -> Command:
        """Record a new command for ``targets``; it gets the next serial.

        Raises:
            ValueError: a negative retire window.
        """
        if retire_after < 0:
            raise ValueError(f"retire_after must be >= 0 seconds, got {retire_after}")
        self.last += 1
        command = Command(self.last, now, targets, retire_after)
        self.commands[command.serial] = command
        return command

    def catch_up(self, node: str, applied: int, now: float) -> CatchUp:
        """What ``node``, whose last applied serial is ``applied``, still lacks."""
        out = CatchUp()
        for serial in sorted(s for s in self.commands if s > applied):
            command = self.commands[serial]
            if node not in command.targets:
                continue
            if now - command.created > command.retire_after:
                out.expired.append(serial)
            else:
                out.deliver.append(serial)
        return out

    def forget(self, now: float, horizon: float = 86_400.0) -> list[int]:
        """Drop the records of commands older than ``horizon`` seconds.

        A record is small (serial, time, targets): it is kept well past the retire window so a
        node that returns late is still told which commands it missed for good. The command
        bodies live in the durable stream, with their own retention.

        Returns:
            The serials forgotten.
        """
        gone = [s for s, c in self.commands.items() if now - c.created > horizon]
        for serial in gone:
            del self.commands[serial]
        return gone


class Applied:
    """A node's side: apply each serial once, in order, whatever arrives twice or early.

    Args:
        last: the last serial this node applied (persisted by the node, or 0).
    """

    def __init__(self, last: int = 0) -> None:
        self.last = last
        self._early: dict[int, object] = {}

    def __repr__(self) -> str:
        return f"<Applied last={self.last} waiting={sorted(self._early)}>"

    def offer(self, serial: int, command: object, expected: set[int] | None = None) -> list[object]:
        """A command arrived; return those now ready to apply, in serial order.

        Args:
            serial: its serial.
            command: the command itself (opaque here).
            expected: serials addressed to this node between ``last`` and ``serial`` (from the
                controller); without it, a gap is assumed to be commands for other nodes.

        Returns:
            The commands to apply now (empty for a duplicate or one that must wait).
        """
        if serial <= self.last or serial in self._early:
            return []  # seen already: applied exactly once from this node's point of view
        self._early[serial] = command
        ready = []
        for s in sorted(self._early):
            missing = expected is not None and any(self.last < e < s for e in expected)
            if missing:
                break
            ready.append(self._early.pop(s))
            self.last = s
        return ready

    def skip(self, serial: int) -> None:
        """Move past ``serial`` without applying it (it expired for this node)."""
        self.last = max(self.last, serial)
