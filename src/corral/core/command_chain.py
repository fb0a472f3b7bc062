"""A node's view of the live command chain, without I/O: gaps found by serial (SEER's
``checkSerial``), filled in order, exactly once.

Theory of operation: the controller publishes every command's serial once on the shared live
subject, in serial order, each naming the serial published before it (``prev``). A command
for every node (or many) carries its body; one for a few nodes is a *mark* naming them, its
body going to each target's own subject. :class:`Chain` takes those messages in any order,
with losses, and hands the node's commands on in serial order:

* a message whose ``prev`` the node has heard extends the chain: its body (or, for a mark
  naming this node, the body from the node's own subject) is handed on;
* one whose ``prev`` it has not heard shows a gap: it is held, and the gap is fetched from the
  controller (:class:`Fetch`); the answer (:meth:`Chain.fetched`, paged) hands on the node's
  commands of the gap, then the held ones follow;
* a mark naming this node waits for its body; one that does not come within
  :data:`BODY_WAIT` is fetched;
* the controller's announcements and join replies name the last serial published: a node
  that has heard less for :data:`TIP_WAIT` (the last message was lost, or it was away)
  fetches up to it.

Before the node's first join it cannot tell which commands are its own: messages are held,
nothing is fetched. Duplicates (a re-publication, a late body) are dropped by serial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from corral import wire

__all__ = ["BODY_WAIT", "Chain", "FETCH_WAIT", "Fetch", "TIP_WAIT"]

#: Seconds a mark naming this node waits for its body on the node's own subject.
BODY_WAIT = 1.0
#: Seconds an announced last serial may run ahead of what was heard (it may be in flight).
TIP_WAIT = 1.0
#: Seconds before a fetch not answered is asked again.
FETCH_WAIT = 5.0

_body_decoder = msgspec.msgpack.Decoder(wire.NodeCommand)


@dataclass(frozen=True)
class Fetch:
    """Ask the controller for this node's commands with serials in ``(after, upto]``."""

    after: int
    upto: int


class Chain:
    """Order and fill the live command chain for node ``name``.

    Args:
        name: the node's name (whether a mark names it).
        heard: the serial up to which everything is accounted for (the last applied).
        clock: a monotonic clock.
    """

    def __init__(
        self, name: str, heard: int = 0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.clock = clock
        #: every serial up to this one was handed on, or is not this node's
        self.heard = heard
        #: chain messages past a gap, or behind a mark waiting for its body, by serial
        self.held: dict[int, wire.LiveCommand] = {}
        #: bodies of marks naming this node that came before their mark, by serial
        self.bodies: dict[int, wire.NodeCommand] = {}
        #: until the first join nothing is handed on or fetched
        self.joined = False
        #: the fetch in flight and when it was asked, if any
        self.asking: tuple[Fetch, float] | None = None
        #: the highest serial the controller said it published, and when it was heard
        self._tip = (0, 0.0)
        #: since when the chain waits for the body of the mark at its head
        self._body_since: float | None = None

    def __repr__(self) -> str:
        return (
            f"<Chain {self.name!r} heard={self.heard} held={len(self.held)} asking={self.asking}>"
        )

    # --- events -------------------------------------------------------------------------

    def live(self, msg: wire.LiveCommand) -> tuple[list[wire.NodeCommand], list[Fetch]]:
        """A message from the shared live subject.

        Returns:
            The commands to hand on, in serial order, and a fetch if a gap showed.
        """
        if msg.serial <= self.heard or msg.serial in self.held:
            return [], []  # heard already: a re-publication
        self.held[msg.serial] = msg
        return self._drain()

    def direct(self, command: wire.NodeCommand) -> tuple[list[wire.NodeCommand], list[Fetch]]:
        """The body of a command to a few nodes, from this node's own subject."""
        if command.serial <= self.heard or command.serial in self.bodies:
            return [], []
        self.bodies[command.serial] = command
        return self._drain()

    def join(
        self, first_serial: int, last_serial: int
    ) -> tuple[list[wire.NodeCommand], list[Fetch]]:
        """The node joined: ``first_serial`` from a first join reply (0: none), and the last
        serial the controller published."""
        self.joined = True
        if first_serial:
            self._skip_to(first_serial - 1)  # nothing before its first join is its own
        self._tip = (max(self._tip[0], last_serial), -TIP_WAIT)  # fetch it at once
        return self._drain()

    def tip(self, serial: int) -> tuple[list[wire.NodeCommand], list[Fetch]]:
        """The controller announced ``serial`` as the last it published."""
        if serial > self._tip[0]:
            self._tip = (serial, self.clock())
        return self._drain()

    def fetched(
        self, ask: Fetch, covered: int, commands: list[bytes]
    ) -> tuple[list[wire.NodeCommand], list[Fetch]]:
        """The controller answered ``ask``: this node's commands in ``(ask.after, covered]``.

        Raises:
            msgspec.DecodeError: a body does not decode (the controller's fault: logged).
        """
        if self.asking is not None and self.asking[0] == ask:
            self.asking = None
        decoded = sorted((_body_decoder.decode(b) for b in commands), key=lambda c: c.serial)
        out = [c for c in decoded if self.heard < c.serial <= covered]
        for c in out:
            self.bodies.pop(c.serial, None)
        self._skip_to(covered)
        more, fetch = self._drain()
        return out + more, fetch

    def failed(self, ask: Fetch) -> None:
        """Asking ``ask`` failed (no answer): the next :meth:`tick` asks again."""
        if self.asking is not None and self.asking[0] == ask:
            self.asking = None

    def tick(self) -> list[Fetch]:
        """What is overdue: a body, an announced serial, an unanswered fetch."""
        if self.asking is not None and self.clock() - self.asking[1] >= FETCH_WAIT:
            self.asking = None
        return self._drain()[1]

    # --- decisions ----------------------------------------------------------------------

    def _skip_to(self, serial: int) -> None:
        if serial <= self.heard:
            return
        self.heard = serial
        for s in [s for s in self.held if s <= serial]:
            del self.held[s]
        for s in [s for s in self.bodies if s <= serial]:
            del self.bodies[s]

    def _drain(self) -> tuple[list[wire.NodeCommand], list[Fetch]]:
        out: list[wire.NodeCommand] = []
        if not self.joined:
            return out, []
        want = 0
        while self.held:
            serial = min(self.held)
            msg = self.held[serial]
            if msg.prev > self.heard:
                want = msg.prev  # a gap: fetch it, the held ones follow
                break
            if msg.body:
                out.append(_body_decoder.decode(msg.body))
            elif self.name in msg.nodes:
                body = self.bodies.pop(serial, None)
                if body is None:
                    # Its body is on our own subject, perhaps still on its way.
                    now = self.clock()
                    if self._body_since is None:
                        self._body_since = now
                    if now - self._body_since >= BODY_WAIT:
                        want = serial
                    break
                out.append(body)
            self._body_since = None
            del self.held[serial]
            self.heard = serial
        tip, at = self._tip
        if not want and not self.held and tip > self.heard and self.clock() - at >= TIP_WAIT:
            want = tip  # the last serial announced did not come
        if not want or self.asking is not None:
            return out, []
        ask = Fetch(self.heard, want)
        self.asking = (ask, self.clock())
        return out, [ask]
