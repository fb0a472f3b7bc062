"""What became of each command at each node it was sent to, without I/O (SEER's command book).

Theory of operation: the controller resolves a command's targets at send time
(:mod:`corral.core.addressing`) and gives it the next serial. From then on every target node
has exactly one :class:`Outcome` for it, moved by the node's reports along
:data:`TRANSITIONS`: ``pending`` (did not answer yet) → ``delivered`` (queued on the node
behind earlier commands) → ``running`` → ``done`` or ``failed``. A node that does not answer
within the command's retire window is marked ``expired``, and a node that returns later skips
the command and says so; if it ran the command anyway (its clock was behind) its own report
is the truth and replaces ``expired``. ``done`` and ``failed`` are final.

:class:`CommandBook` holds the commands still of interest, applies reports, expires the
overdue, and keeps the rows to persist and the updates to publish until the I/O shell takes
them (group commit: one transaction and one publish per batch, not per report).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from corral.errors import IllegalTransition, UsageError
from corral.states import CommandState

__all__ = [
    "CommandBook",
    "CommandState",
    "IllegalOutcome",
    "Outcome",
    "TRANSITIONS",
    "TrackedCommand",
]


S = CommandState
#: Every legal move of one node's outcome. Anything else is a stale or bogus report.
TRANSITIONS: dict[CommandState, frozenset[CommandState]] = {
    S.PENDING: frozenset({S.DELIVERED, S.RUNNING, S.DONE, S.FAILED, S.EXPIRED}),
    S.DELIVERED: frozenset({S.RUNNING, S.DONE, S.FAILED, S.EXPIRED}),
    # RUNNING→RUNNING carries output; RUNNING→EXPIRED: its node went away meanwhile.
    S.RUNNING: frozenset({S.RUNNING, S.DONE, S.FAILED, S.EXPIRED}),
    # A node whose clock was behind may have run it after all: its report is the truth.
    S.EXPIRED: frozenset({S.DONE, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
}


#: A report that would move an outcome backwards (e.g. ``done`` → ``running``): the one
#: :class:`~corral.errors.IllegalTransition`, under the name this module always exported.
IllegalOutcome = IllegalTransition


@dataclass
class Outcome:
    """One node's outcome of one command."""

    node: str
    state: CommandState = CommandState.PENDING
    at: float = 0.0
    result: Any = None
    error: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""


@dataclass
class TrackedCommand:
    """A command the book still follows: its serial, when it was sent, and per-node outcomes.

    ``outcomes`` may be filled directly before the command is given to
    :meth:`CommandBook.track`; from then on only the book moves them, and keeps a tally of how
    many are in each state, so that asking whether a command is settled does not walk a
    thousand outcomes on every tick.
    """

    serial: int
    created: float
    retire_after: float
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    _tally: dict[CommandState, int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __repr__(self) -> str:
        counts = {state.value: n for state, n in self.tally().items() if n}
        return f"<TrackedCommand #{self.serial} {counts}>"

    def tally(self) -> dict[CommandState, int]:
        """How many of its outcomes are in each state."""
        if self._tally is None:
            self._tally = dict.fromkeys(CommandState, 0)
            for o in self.outcomes.values():
                self._tally[o.state] += 1
        return self._tally

    def recount(self) -> None:
        """Count the outcomes afresh (after they were changed other than through the book)."""
        self._tally = None

    def moved(self, old: CommandState, new: CommandState) -> None:
        """Count one outcome moved from ``old`` to ``new`` (the book calls this)."""
        if self._tally is not None:
            self._tally[old] -= 1
            self._tally[new] += 1

    @property
    def waiting(self) -> int:
        """How many nodes have not answered yet (``pending`` or ``delivered``)."""
        tally = self.tally()
        return tally[S.PENDING] + tally[S.DELIVERED]

    @property
    def settled(self) -> bool:
        """True once every node is done, failed or expired."""
        return self.waiting + self.tally()[S.RUNNING] == 0


class CommandBook:
    """The controller's live record of commands and their per-node outcomes.

    Args:
        last_serial: the highest serial ever issued (from the store), so serials continue
            after a restart and are never reused.
        output_limit: the most characters of stdout (and of stderr) kept per outcome.
    """

    def __init__(self, last_serial: int = 0, output_limit: int = 65_536) -> None:
        self.last_serial = last_serial
        self.output_limit = output_limit
        self.commands: dict[int, TrackedCommand] = {}
        #: outcomes changed since the I/O shell last took them (to persist and to publish)
        self._changed: dict[tuple[int, str], Outcome] = {}

    def __repr__(self) -> str:
        return f"<CommandBook last={self.last_serial} tracked={len(self.commands)}>"

    def issue(self, nodes: Iterable[str], now: float, retire_after: float) -> TrackedCommand:
        """Give a new command the next serial and a ``pending`` outcome per target node.

        Raises:
            UsageError: ``retire_after`` is negative.
        """
        if retire_after < 0:
            raise UsageError(f"retire_after must be 0 or more seconds, got {retire_after}")
        self.last_serial += 1
        command = TrackedCommand(self.last_serial, now, retire_after)
        for node in nodes:
            command.outcomes[node] = Outcome(node, at=now)
        self.commands[command.serial] = command
        return command

    def continue_above(self, serial: int) -> bool:
        """Make sure the next serial is above ``serial``: one a node has applied, or one the
        command log holds, which a restored or replaced store may not know of.

        Args:
            serial: a serial some node may have applied.

        Returns:
            True if ``serial`` was above every serial this book knew (it was raised).
        """
        if serial <= self.last_serial:
            return False
        self.last_serial = serial
        return True

    def track(self, command: TrackedCommand) -> None:
        """Follow a command loaded from the store (after a controller restart)."""
        command.recount()  # its outcomes were filled from outside
        self.commands[command.serial] = command
        self.last_serial = max(self.last_serial, command.serial)

    def stranger(self, serial: int, node: str) -> bool:
        """True if the book follows command ``serial`` and ``node`` is not one of its targets.

        Such a report is refused: a node may only speak of commands resolved to it.

        Args:
            serial: the command a report names.
            node: the reporting node (from the subject, so from its credential).

        Returns:
            Whether ``node`` reports on a command that was never its own.
        """
        command = self.commands.get(serial)
        return command is not None and node not in command.outcomes

    def report(
        self,
        serial: int,
        node: str,
        state: CommandState,
        now: float,
        **details: Any,
    ) -> Outcome | None:
        """Apply a node's report on command ``serial``.

        Args:
            serial: the command.
            node: the reporting node (from the subject: it cannot speak for another).
            state: its new state.
            now: the controller's clock.
            details: ``result``, ``error``, ``exit_code``, ``stdout``, ``stderr``; output of
                successive ``running`` reports is appended (bounded by ``output_limit``).

        Returns:
            The updated outcome, or ``None`` if the book does not follow this command or the
            node was not one of its targets (a report for a forgotten command).

        Raises:
            IllegalTransition: the report would move the outcome backwards.
        """
        command = self.commands.get(serial)
        if command is None:
            return None
        outcome = command.outcomes.get(node)
        if outcome is None:
            return None
        self._move(
            command,
            outcome,
            state,
            now,
            f"node {node} reported {state} for command #{serial}, "
            f"which it had already reported {outcome.state}",
        )
        for key in ("result", "error", "exit_code"):
            if key in details and details[key] is not None:
                setattr(outcome, key, details[key])
        for key in ("stdout", "stderr"):
            text = details.get(key) or ""
            if text:
                joined = getattr(outcome, key) + text
                setattr(outcome, key, joined[-self.output_limit :])
        return outcome

    def _move(
        self,
        command: TrackedCommand,
        outcome: Outcome,
        new: CommandState,
        now: float,
        refusal: str = "",
    ) -> None:
        """Move ``outcome`` to ``new`` if :data:`TRANSITIONS` allows it, and note the change.

        Raises:
            IllegalTransition: it does not (``refusal`` says why, if given).
        """
        if new not in TRANSITIONS[outcome.state]:
            raise IllegalTransition(
                refusal
                or f"command #{command.serial} at node {outcome.node} cannot go from "
                f"{outcome.state} to {new}"
            )
        command.moved(outcome.state, new)
        outcome.state = new
        outcome.at = now
        self._changed[(command.serial, outcome.node)] = outcome

    def expire(
        self, now: float, live: Callable[[str], bool] = lambda node: True
    ) -> list[tuple[int, Outcome]]:
        """Mark ``expired`` what will not be answered.

        An outcome still pending or delivered past its retire window; and one running at a
        node that is not ``live`` and has not been heard of for a retire window (if that node
        comes back and reports, its report replaces ``expired``).

        Returns:
            ``(serial, outcome)`` for each outcome expired now.
        """
        out = []
        for command in self.commands.values():
            if now - command.created <= command.retire_after or command.settled:
                continue
            for outcome in command.outcomes.values():
                if (
                    outcome.state is S.RUNNING
                    and not live(outcome.node)
                    and now - outcome.at > command.retire_after
                ):
                    self._move(command, outcome, S.EXPIRED, now)
                    outcome.error = (
                        f"node {outcome.node} went away while running it and has not come "
                        f"back within {command.retire_after:g} s; its report will replace "
                        "this if it does"
                    )
                    out.append((command.serial, outcome))
                elif outcome.state in (S.PENDING, S.DELIVERED):
                    self._move(command, outcome, S.EXPIRED, now)
                    outcome.error = (
                        f"not delivered within the {command.retire_after:g} s retire window "
                        "(the node was away); it will not run there. Send it again if still wanted"
                    )
                    out.append((command.serial, outcome))
        return out

    def take_changes(self) -> list[tuple[int, Outcome]]:
        """The outcomes changed since the last call, for one transaction and one publish."""
        changed, self._changed = self._changed, {}
        # Copies: the outcome may move again before this batch is written and announced.
        return [(serial, replace(outcome)) for (serial, _), outcome in changed.items()]

    def restore_changes(self, changes: Iterable[tuple[int, Outcome]]) -> None:
        """Put back changes whose write failed, so the next flush retries them."""
        for serial, outcome in changes:
            self._changed.setdefault((serial, outcome.node), outcome)

    def forget(self, now: float, keep: float) -> list[int]:
        """Stop following settled commands older than ``keep`` seconds (the store has them).

        Returns:
            The serials forgotten.
        """
        gone = [s for s, c in self.commands.items() if c.settled and now - c.created > keep]
        for serial in gone:
            del self.commands[serial]
        return gone

    def behind(self) -> dict[str, int]:
        """How many commands each node has not answered yet (pending or delivered)."""
        out: dict[str, int] = {}
        for command in self.commands.values():
            if not command.waiting:
                continue
            for outcome in command.outcomes.values():
                if outcome.state in (S.PENDING, S.DELIVERED):
                    out[outcome.node] = out.get(outcome.node, 0) + 1
        return out
