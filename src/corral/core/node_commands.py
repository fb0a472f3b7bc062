"""A node's side of command delivery, without I/O: events in, actions out.

Theory of operation: the controller publishes every command live, by core NATS, on a subject
every node shares (a command for a few nodes as a mark there, its body on each target's own
subject); :class:`~corral.core.command_chain.Chain` puts what arrives in serial order, finds
gaps by serial and asks for what was missed. :class:`NodeCommands` decides everything about
the commands it hands on; the I/O shell (:class:`corral.node.commands.CommandRunner`) feeds it
events and performs the actions it returns, in order:

==============================  ===========================================================
event                           what the core decides
==============================  ===========================================================
:meth:`~NodeCommands.replay`    journaled commands (received, not applied before a
                                restart) go first; those applied meanwhile go
:meth:`~NodeCommands.join`      a join: from now on commands are applied; what was missed
                                up to the controller's last serial is fetched
:meth:`~NodeCommands.live`      a message of the shared live subject: in order, or held
                                behind a gap that is fetched (:class:`Fetch`)
:meth:`~NodeCommands.direct`    the body of a command to a few nodes (own subject)
:meth:`~NodeCommands.fetched`   the controller's answer to a :class:`Fetch`
:meth:`~NodeCommands.received`  a command in serial order: a duplicate is skipped
                                (:meth:`corral.core.serials.Applied.offer`); one behind a
                                busy runner is journaled and reported ``delivered``; else
                                it is queued
:meth:`~NodeCommands.running`   the handler is slow: its command is journaled (a node
                                killed now resumes it); ``running`` reported
:meth:`~NodeCommands.finished`  the handler ended: its final report, the serial saved, the
                                journal entry removed
:meth:`~NodeCommands.acked`     the controller has final reports on disk: stop re-sending
:meth:`~NodeCommands.tick`      final reports not acknowledged for a while are sent again,
                                the wait doubling up to a bound; overdue fetches
==============================  ===========================================================

A delivery may carry an opaque token (:class:`Ack` gives it back once the command is
journaled or applied); live deliveries carry none.

When it is free, the core takes the next queued command: one broadcast resolved before this
node joined (or not naming it) is skipped; one older than its retire window, judged by the
controller's clock, is reported ``expired`` and not run; anything else is :class:`Run`.
Exactly once from the node's point of view, in serial order; an outcome is never lost, since
a final report is re-sent until the controller acknowledges it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral import wire
from corral.core.command_chain import Chain, Fetch
from corral.core.serials import Applied
from corral.errors import UsageError
from corral.states import CommandState

__all__ = [
    "Ack",
    "Action",
    "Fetch",
    "Journal",
    "NodeCommands",
    "RESEND_EVERY",
    "RESEND_MAX",
    "Run",
    "Save",
    "Send",
    "Skip",
    "Unjournal",
]

#: Seconds before a final report the controller has not acknowledged is sent again; the wait
#: doubles after each re-send up to RESEND_MAX, so an overloaded controller is not flooded.
#: The controller confirms within half a second when it keeps up; in a burst of broadcasts
#: to 1,000 nodes it may lag a second behind (a re-send then only adds to its load).
RESEND_EVERY = 2.0
RESEND_MAX = 8.0


@dataclass(frozen=True)
class Run:
    """Run this command's handler; tell :meth:`NodeCommands.finished` how it ended."""

    command: wire.NodeCommand


@dataclass(frozen=True)
class Ack:
    """Acknowledge this delivery (the opaque token given to :meth:`NodeCommands.received`)."""

    token: Any


@dataclass(frozen=True)
class Journal:
    """Write this command to the journal (it is acknowledged next, not yet applied)."""

    command: wire.NodeCommand


@dataclass(frozen=True)
class Unjournal:
    """Remove command ``serial`` from the journal: it was applied."""

    serial: int


@dataclass(frozen=True)
class Send:
    """Publish a report; a ``final`` one asks the controller to acknowledge it."""

    serial: int
    state: CommandState
    data: bytes
    final: bool


@dataclass(frozen=True)
class Save:
    """Persist ``serial`` as the last applied (and tell the heartbeats)."""

    serial: int


@dataclass(frozen=True)
class Skip:
    """Command ``serial`` is not applied here, for ``reason`` (for the log; nothing to do)."""

    serial: int
    reason: str


#: What the shell performs.
Action = Run | Ack | Journal | Unjournal | Send | Save | Skip | Fetch


@dataclass
class _Queued:
    command: wire.NodeCommand
    #: its delivery, still to acknowledge (None: acknowledged, or a live one with none)
    token: Any
    #: written to the journal (removed once applied)
    journaled: bool = False


class NodeCommands:
    """One node's command decisions: dedup, order, expiry, journal and report re-sends.

    Args:
        name: the node's name (whether a broadcast to a list names it).
        last: the last serial applied (persisted by the shell, or 0).
        wall: the controller's clock (our wall clock plus the offset learned at join).
        clock: a monotonic clock, for re-sending reports.
        max_report_bytes: the largest report sent; a larger one becomes a ``failed`` one.

    Raises:
        UsageError: ``max_report_bytes`` is not positive.
    """

    def __init__(
        self,
        name: str,
        last: int = 0,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        max_report_bytes: int = 1024 * 1024,
    ) -> None:
        if max_report_bytes <= 0:
            raise UsageError(f"max_report_bytes must be positive, got {max_report_bytes}")
        self.name = name
        self.wall = wall
        self.clock = clock
        self.max_report_bytes = max_report_bytes
        #: the last serial applied (run, expired or skipped): what the shell persists
        self.last = last
        #: serials taken in, applied or queued: dedup of redeliveries and re-publications
        self.seen = Applied(last)
        #: broadcasts to every node below this serial were resolved before this node first
        #: joined (the controller says so in its first join reply)
        self.first_serial = 0
        #: until the first join it cannot tell which broadcasts are its own: nothing runs
        self.joined = False
        #: the command whose handler runs, if any
        self.current: _Queued | None = None
        self._queue: deque[_Queued] = deque()
        #: final reports not yet acknowledged, by serial
        self.outbox: dict[int, Send] = {}
        #: when each report in the outbox is due again, and the wait after that
        self._due: dict[int, tuple[float, float]] = {}
        #: the live chain: order, gaps and fetches
        self.chain = Chain(name, last, clock=clock)

    def __repr__(self) -> str:
        running = self.current.command.serial if self.current else None
        return (
            f"<NodeCommands {self.name!r} last={self.last} running={running} "
            f"queued={len(self._queue)} outbox={len(self.outbox)}>"
        )

    @property
    def queued(self) -> int:
        """How many commands wait behind the running one."""
        return len(self._queue)

    # --- events -------------------------------------------------------------------------

    def replay(self, journaled: list[wire.NodeCommand]) -> list[Action]:
        """Commands found in the journal at start, in any order.

        Args:
            journaled: the commands read back from the journal.

        Returns:
            :class:`Unjournal` for those applied already; the others are queued first.
        """
        out: list[Action] = []
        for command in sorted(journaled, key=lambda c: c.serial):
            if not self.seen.offer(command.serial, command):
                out.append(Unjournal(command.serial))
            else:
                self._queue.append(_Queued(command, None, journaled=True))
        return out + self._next()

    def join(self, first_serial: int = 0, last_serial: int = 0) -> list[Action]:
        """The node joined (again): commands may be applied from now on.

        Args:
            first_serial: the join reply's bound for broadcasts (0: none); the highest wins.
            last_serial: the last serial the controller published live: what this node
                missed up to it is fetched.

        Returns:
            What to do with the commands that waited for it.
        """
        self.first_serial = max(self.first_serial, first_serial)
        self.joined = True
        return self._take(self.chain.join(first_serial, last_serial)) + self._next()

    def live(self, msg: wire.LiveCommand) -> list[Action]:
        """A message of the shared live subject (a command, or a mark of one to a few nodes).

        Returns:
            What to do with the commands now in order, and a :class:`Fetch` for a gap.
        """
        return self._take(self.chain.live(msg))

    def direct(self, command: wire.NodeCommand) -> list[Action]:
        """The body of a command to this node among a few (from its own subject)."""
        return self._take(self.chain.direct(command))

    def tip(self, serial: int) -> list[Action]:
        """The controller announced ``serial`` as the last it published live."""
        return self._take(self.chain.tip(serial))

    def fetched(self, ask: Fetch, covered: int, commands: list[bytes]) -> list[Action]:
        """The controller answered ``ask`` with this node's commands in
        ``(ask.after, covered]`` (encoded).

        Raises:
            msgspec.DecodeError: a body does not decode.
        """
        return self._take(self.chain.fetched(ask, covered, commands))

    def fetch_failed(self, ask: Fetch) -> None:
        """``ask`` got no answer: it is asked again at a later :meth:`tick`."""
        self.chain.failed(ask)

    def _take(self, taken: tuple[list[wire.NodeCommand], list[Fetch]]) -> list[Action]:
        commands, fetches = taken
        out: list[Action] = []
        for command in commands:
            out += self.received(command, None)
        return out + list(fetches)

    def received(self, command: wire.NodeCommand, token: Any) -> list[Action]:
        """A delivery of ``command``.

        Args:
            command: the command as delivered.
            token: what :class:`Ack` gives back when the delivery is to be acknowledged.

        Returns:
            For a duplicate, its acknowledgement; for one behind another that must be
            acknowledged (so the next can come) or behind a slow one, its journal entry,
            acknowledgement and ``delivered`` report; then whatever may run now.
        """
        if not self.seen.offer(command.serial, command):
            # Applied or queued already: a redelivery, or a re-publication after a restart.
            return [*_ack(token), Skip(command.serial, "duplicate")]
        entry = _Queued(command, token)
        out: list[Action] = []
        slow = self.current is not None and self.current.journaled
        if (token is not None and (self.current is not None or self._queue)) or slow:
            out += self._wait_journaled(entry)
        self._queue.append(entry)
        return out + self._next()

    def _wait_journaled(self, entry: _Queued) -> list[Action]:
        """Journal a command waiting behind another (a node killed now still has it), and
        say it waits. A live one behind quick ones is not: a burst would write a file per
        command, and a node killed meanwhile fetches it again after its last applied."""
        if entry.journaled or not self._meant_for_me(entry.command):
            return []
        out: list[Action] = [Journal(entry.command), *_ack(entry.token)]
        out.append(self._report(entry.command.serial, CommandState.DELIVERED))
        entry.token = None
        entry.journaled = True
        return out

    def running(self, serial: int, stdout: str = "", stderr: str = "") -> list[Action]:
        """The handler of ``serial`` still runs (with output since the last call).

        Args:
            serial: the running command.
            stdout: what it printed since the last call.
            stderr: what it printed to stderr since the last call.

        Returns:
            Journal and acknowledge it if not done yet (the next command may come), then a
            ``running`` report.
        """
        current = self._current(serial)
        out: list[Action] = []
        if not current.journaled:
            out += [Journal(current.command), *_ack(current.token)]
            current.token = None
            current.journaled = True
            for entry in self._queue:  # they wait behind a slow one now
                out += self._wait_journaled(entry)
        out.append(self._report(serial, CommandState.RUNNING, stdout=stdout, stderr=stderr))
        return out

    def finished(self, serial: int, state: CommandState, **fields: Any) -> list[Action]:
        """The handler of ``serial`` ended (``done`` or ``failed``, with the report's fields).

        Args:
            serial: the running command.
            state: ``done`` or ``failed``.
            fields: the report's ``result``, ``error``, ``exit_code``, ``stdout``, ``stderr``.

        Returns:
            Its final report, the serial to save, its journal entry removed or its delivery
            acknowledged, then whatever may run next.

        Raises:
            UsageError: ``serial`` is not running, or ``state`` is not final.
        """
        current = self._current(serial)
        if not state.final:
            raise UsageError(f"a handler ends done or failed, not {state}")
        self.current = None
        out: list[Action] = [self._report(serial, state, **fields)]
        return out + self._applied(current) + self._next()

    def acked(self, *serials: int) -> None:
        """The controller has the final reports on ``serials`` on disk: stop re-sending them.

        Args:
            serials: the commands the controller's :class:`~corral.wire.ReportAck` names.
        """
        for serial in serials:
            self.outbox.pop(serial, None)
            self._due.pop(serial, None)

    def tick(self) -> list[Action]:
        """Re-send the final reports that waited their whole period unacknowledged.

        A report sent a moment ago is most likely being written by the controller right now.

        Returns:
            A :class:`Send` for each report due again, and a :class:`Fetch` if one is due.
        """
        now = self.clock()
        out: list[Action] = list(self.chain.tick())
        for serial, send in self.outbox.items():
            due, wait = self._due.get(serial, (0.0, RESEND_EVERY))
            if due <= now:
                wait = min(2 * wait, RESEND_MAX)
                self._due[serial] = (now + wait, wait)
                out.append(send)
        return out

    # --- decisions ----------------------------------------------------------------------

    def _current(self, serial: int) -> _Queued:
        if self.current is None or self.current.command.serial != serial:
            running = self.current.command.serial if self.current else "nothing"
            raise UsageError(f"command #{serial} is not running (running: {running})")
        return self.current

    def _meant_for_me(self, command: wire.NodeCommand) -> bool:
        if not command.to_all:
            return True
        if self.name in command.skip:  # '*' sent while this node had left
            return False
        if command.only:
            return self.name in command.only
        return command.serial >= self.first_serial  # '*': unless resolved before we joined

    def _next(self) -> list[Action]:
        """Take queued commands until one runs or none is left."""
        out: list[Action] = []
        while self.joined and self.current is None and self._queue:
            entry = self._queue.popleft()
            command = entry.command
            if command.serial <= self.last:
                out += [Skip(command.serial, "applied already"), *self._done_with(entry)]
            elif not self._meant_for_me(command):
                out.append(Skip(command.serial, "not for this node"))
                out += self._applied(entry)
            elif (age := self.wall() - command.created) > command.retire_after:
                error = (
                    f"arrived {age:.0f} s after it was sent, past its "
                    f"{command.retire_after:g} s retire window: not run"
                )
                out.append(self._report(command.serial, CommandState.EXPIRED, error=error))
                out += self._applied(entry)
            else:
                self.current = entry
                out.append(Run(command))
        return out

    def _applied(self, entry: _Queued) -> list[Action]:
        self.last = max(self.last, entry.command.serial)
        return [Save(self.last), *self._done_with(entry)]

    @staticmethod
    def _done_with(entry: _Queued) -> list[Action]:
        if entry.journaled:
            return [Unjournal(entry.command.serial)]
        return _ack(entry.token)

    def _report(self, serial: int, state: CommandState, **fields: Any) -> Send:
        data = wire.encode(wire.CommandReport(serial=serial, state=state, **fields))
        if len(data) > self.max_report_bytes:
            error = (
                f"the {state} report is {len(data)} bytes, over the {self.max_report_bytes}-byte "
                "limit (max_command_bytes): return less, or write it to a file and return its "
                "path"
            )
            state = CommandState.FAILED if state.last_word else state
            data = wire.encode(wire.CommandReport(serial=serial, state=state, error=error))
        send = Send(serial, state, data, final=state.last_word)
        if send.final:
            self.outbox[serial] = send  # re-sent until the controller has it (see acked)
            self._due[serial] = (self.clock() + RESEND_EVERY, RESEND_EVERY)
        return send


def _ack(token: Any) -> list[Action]:
    """Acknowledge a delivery that has a token (a live one has none)."""
    return [] if token is None else [Ack(token)]
