"""A node's applied serials, without I/O (SEER ``checkSerial``).

The controller gives every command the next serial (:mod:`corral.core.commands`); a node
finds a gap in the serials published live and fetches what it missed
(:mod:`corral.core.command_chain`), and expiry past the retire window is the command book's
(SEER ``retireSerials``). On the node,
:class:`Applied` applies commands in serial order exactly once, whatever order or how many
times they arrive; :class:`corral.core.node_commands.NodeCommands` takes every delivery
through it.
"""

from __future__ import annotations

__all__ = ["Applied"]


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
        if expected is None and not self._early:
            self.last = serial  # the usual case, in order: nothing waits before it
            return [command]
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
