"""The guardian automaton, sans I/O: requests, modes, jumps, stalls, errors, pause.

Theory of operation: the automaton never runs user code. It says which step comes next
(:meth:`Automaton.next_step`: run a state's ``main`` or ``run``), and the shell that ran it
reports back (:meth:`Automaton.step_done` / :meth:`Automaton.step_failed`). Every change of
where the automaton is in a state goes through one table, :data:`TRANSITIONS`, keyed by the
current :class:`Phase` and an :class:`Event`; an event the table does not list raises
:class:`IllegalTransition`.

A step carries the automaton's *epoch*; anything that moves the guardian while user code runs
(a request for a ``goto`` state, a reload) bumps it, so the stale step's result is ignored.

Who may ask what is a second table, :data:`MANAGER_MODE_CHANGES`, plus one rule per mode:

* AUTO: anyone's request counts; after a jump the guardian walks on to its request.
* MANAGED: only the recorded manager's requests count; after a jump it *stalls* (holds where it
  jumped) until its manager re-requests or revives it.
* MANUAL: only a person's requests count.

A person may always change the mode (taking a node back from its manager); a manager may take
an AUTO node into MANAGED, or keep one it already holds, and is refused, with the holder's
name, a node another manager holds or a person put in MANUAL.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from corral.errors import GuardianRefused
from corral.guardian.graph import Graph
from corral.guardian.machine import (
    MANAGER_MODE_CHANGES,
    TRANSITIONS,
    Event,
    IllegalTransition,
    Mode,
    Phase,
    Status,
)

__all__ = [
    "Automaton",
    "Event",
    "IllegalTransition",
    "MANAGER_MODE_CHANGES",
    "Mode",
    "Phase",
    "Requester",
    "Status",
    "Step",
    "TRANSITIONS",
]


@dataclass(frozen=True)
class Requester:
    """Who asks: a person (CLI, API, a script) or a manager guardian, by name."""

    name: str
    manager: bool = False

    def __str__(self) -> str:
        return f"manager {self.name}" if self.manager else f"{self.name} (a person)"


@dataclass(frozen=True)
class Step:
    """User code to run next: ``method`` (``main`` or ``run``) of ``state``.

    ``wait`` is true when the step should come one cycle after the previous one (a ``run``
    repeating in the same state) rather than at once (a state just entered).
    """

    state: str
    method: str
    epoch: int
    wait: bool = False


class Automaton:
    """One guardian's decisions.

    Args:
        name: the guardian's name (for messages).
        graph: its system's states and edges.
        initial: the state it starts in.
        request: the state it is first asked to reach (default: ``initial``).
        mode: its starting mode.
        nominal: the state it should normally be in (LIGO's NOMINAL; "" for none).

    Raises:
        GuardianRefused: ``initial``, ``request`` or ``nominal`` is not a state of ``graph``.
    """

    #: states kept in :attr:`trail`, and lines kept in :attr:`log_lines`
    TRAIL = 16
    LOG_LINES = 20

    def __init__(
        self,
        name: str,
        graph: Graph,
        initial: str,
        request: str | None = None,
        mode: Mode = Mode.AUTO,
        nominal: str = "",
    ) -> None:
        self.name = name
        self.graph = graph
        for s in (initial, request or initial):
            self._check_state(s, "start in")
        if nominal:
            self._check_state(nominal, "hold as nominal")
        #: the state it should normally be in ("" for none)
        self.nominal = nominal
        #: the last states entered (oldest first) and how many were entered in all
        self.trail: deque[str] = deque([initial], maxlen=self.TRAIL)
        self.entered = 1
        #: the last lines state code logged
        self.log_lines: deque[str] = deque(maxlen=self.LOG_LINES)
        self.state = initial
        self.request = request or initial
        self.mode = mode
        #: the manager holding a MANAGED guardian ("" if none)
        self.manager = ""
        self.phase = Phase.ENTER
        self.stalled = False
        self.paused = False
        #: the traceback of the user code that raised (ERROR)
        self.error = ""
        #: notifications raised by the last steps (see :meth:`step_done`)
        self.notifications: tuple[str, ...] = ()
        self.epoch = 0
        #: bumped on every change a viewer would see
        self.seq = 0
        self._last_method = ""

    def __repr__(self) -> str:
        return (
            f"<Automaton {self.name!r} {self.state}/{self.phase} request={self.request} "
            f"mode={self.mode} status={self.status}>"
        )

    # --- what a viewer sees ------------------------------------------------------------

    @property
    def status(self) -> Status:
        """ERROR, then STALLED, then NOTIFICATION, else OK (the most urgent wins)."""
        if self.phase is Phase.ERROR:
            return Status.ERROR
        if self.stalled:
            return Status.STALLED
        if self.notifications:
            return Status.NOTIFICATION
        return Status.OK

    @property
    def arrived(self) -> bool:
        """At the requested state, and its ``run`` returned True."""
        return self.state == self.request and self.phase is Phase.DONE

    @property
    def ok(self) -> bool:
        """LIGO's OK, as far as the guardian itself can tell (a reader adds "connected").

        Executing (not paused), in AUTO or MANAGED mode, REQUEST == STATE == NOMINAL, done
        (``run`` returned True), and no error. Without a ``nominal`` state, REQUEST == STATE.
        """
        return (
            not self.paused
            and self.mode in (Mode.AUTO, Mode.MANAGED)
            and self.state == self.request
            and (not self.nominal or self.state == self.nominal)
            and self.phase is Phase.DONE
            and not self.error
            and not self.stalled
        )

    def logged(self, lines: list[str]) -> None:
        """Keep what state code logged with ``log()`` (the last :attr:`LOG_LINES`)."""
        if lines:
            self.log_lines.extend(lines)
            self.changed()

    @property
    def path(self) -> list[str]:
        """The states still to walk to the request (empty when there or holding)."""
        if self.stalled or self.state == self.request:
            return []
        walk = self.graph.path(self.state, self.request)
        return walk[1:] if walk else []

    # --- what to run ---------------------------------------------------------------------

    def next_step(self) -> Step | None:
        """The user code to run next, or ``None`` when paused or in ERROR (wait for news)."""
        if self.paused or self.phase is Phase.ERROR:
            return None
        if self.phase is Phase.ENTER:
            return Step(self.state, "main", self.epoch)
        # RUN, or DONE and holding: run() again, one cycle later.
        return Step(self.state, "run", self.epoch, wait=self._last_method == "run")

    def step_done(self, step: Step, result: object, notes: tuple[str, ...] = ()) -> bool:
        """Take the return value of a step's user code.

        Args:
            step: the step that ran.
            result: what ``main``/``run`` returned.
            notes: the notifications it raised.

        Returns:
            True if the step was current (False: stale, ignored).
        """
        if step.epoch != self.epoch or step.state != self.state:
            return False
        self._last_method = step.method
        self._set_notes(step, notes)
        if isinstance(result, str) and result:
            self._jump(result, step)
        elif result is True:
            self._apply(Event.DONE)
            self._advance()
        elif result is None or result is False:
            self._apply(Event.ENTERED if step.method == "main" else Event.NOT_DONE)
        else:
            self._fail(
                f"{step.state}.{step.method}() returned {result!r}: return True (done), "
                "None/False (not yet), or a state name (jump)"
            )
        return True

    def step_failed(self, step: Step, traceback: str) -> bool:
        """User code raised: ERROR, with the traceback shown to viewers.

        Returns:
            True if the step was current (False: stale, ignored).
        """
        if step.epoch != self.epoch or step.state != self.state:
            return False
        self._fail(traceback)
        return True

    # --- what people and managers ask ----------------------------------------------------

    def set_request(self, target: str, who: Requester) -> None:
        """Ask the guardian to walk to ``target`` (clears a stall and an error).

        Raises:
            GuardianRefused: the mode does not take ``who``'s requests, ``target`` is not a
                requestable state, or no path leads there.
        """
        self._check_requester(who)
        self._check_state(target, "request")
        if not self.graph[target].request:
            raise GuardianRefused(
                f"state {target!r} of guardian {self.name!r} cannot be requested; requestable: "
                f"{', '.join(self.graph.requestable)}"
            )
        goto = self.graph[target].goto and self.state != target
        if not goto and self.graph.path(self.state, target) is None:
            raise GuardianRefused(
                f"guardian {self.name!r} has no path from {self.state} to {target}; "
                "add an edge to the system, or request a goto state first"
            )
        self.request = target
        self.stalled = False
        if goto:
            self._enter(target, Event.GOTO)
        elif self.phase is Phase.ERROR:
            self._clear()
        else:
            self._advance()
        self.changed()

    def revive(self, who: Requester) -> None:
        """Re-request the last request (clears a stall or an error).

        Raises:
            GuardianRefused: as :meth:`set_request`.
        """
        self.set_request(self.request, who)

    def set_mode(self, mode: Mode, who: Requester) -> None:
        """Change the mode; MANAGED records ``who`` as the manager.

        Raises:
            GuardianRefused: a manager asked for a change it may not make, or the guardian is
                held by another manager.
        """
        mode = Mode(mode)
        if who.manager:
            if self.mode is Mode.MANAGED and self.manager and self.manager != who.name:
                raise GuardianRefused(
                    f"guardian {self.name!r} is managed by {self.manager}; {who.name} cannot "
                    f"take it (a person can: `corral guardian mode {self.name} AUTO`)"
                )
            if (self.mode, mode) not in MANAGER_MODE_CHANGES:
                raise GuardianRefused(
                    f"guardian {self.name!r} is in {self.mode} mode; a manager cannot change it "
                    f"to {mode} (a person set it; a person must change it back)"
                )
        self.mode = mode
        self.manager = who.name if mode is Mode.MANAGED else ""
        if mode is not Mode.MANAGED and self.stalled:
            # Out of managed mode a jump recovers by itself: resume the walk.
            self.stalled = False
            self._advance()
        self.changed()

    def set_paused(self, paused: bool) -> None:
        """Pause (no user code runs; requests are still taken) or resume."""
        self.paused = paused
        self.changed()

    def reloaded(self, graph: Graph, nominal: str | None = None) -> None:
        """New code: keep state, request and mode; re-enter the current state.

        Args:
            graph: the new states and edges.
            nominal: the new code's ``nominal`` state (``None``: keep the old one).

        Raises:
            GuardianRefused: the new system lacks the current, the requested or the nominal
                state (the old code keeps running).
        """
        for s in (self.state, self.request, nominal or self.state):
            if s not in graph:
                raise GuardianRefused(
                    f"the reloaded system of guardian {self.name!r} has no state {s!r} (the "
                    f"guardian is using it); the previous code keeps running"
                )
        self.graph = graph
        if nominal is not None:
            self.nominal = nominal
        self.error = ""
        self._enter(self.state, Event.RELOAD)
        self.changed()

    # --- internals -----------------------------------------------------------------------

    def _check_state(self, name: str, verb: str) -> None:
        if name not in self.graph:
            raise GuardianRefused(
                f"guardian {self.name!r} has no state {name!r} to {verb}; states: "
                f"{', '.join(self.graph.names)}"
            )

    def _check_requester(self, who: Requester) -> None:
        if self.mode is Mode.MANAGED and who.name != self.manager:
            raise GuardianRefused(
                f"guardian {self.name!r} is MANAGED by {self.manager or 'a manager'}: it "
                f"takes requests only from it, not from {who}. Take it back with "
                f"`corral guardian mode {self.name} AUTO`"
            )
        if self.mode is Mode.MANUAL and who.manager:
            raise GuardianRefused(
                f"guardian {self.name!r} is in MANUAL mode: only a person's requests count, "
                f"not {who}'s"
            )

    def _apply(self, event: Event) -> None:
        try:
            nxt = TRANSITIONS[(self.phase, event)]
        except KeyError:
            raise IllegalTransition(
                f"guardian {self.name!r}: event {event} is illegal in phase {self.phase}"
            ) from None
        if nxt is not self.phase:
            self.phase = nxt
            self.changed()

    def _enter(self, state: str, event: Event) -> None:
        self._apply(event)
        if state != self.state:
            self.notifications = ()
        self.state = state
        if event is not Event.RELOAD:
            self.trail.append(state)
            self.entered += 1
        self.epoch += 1
        self._last_method = ""
        self.error = ""
        self.changed()

    def _jump(self, target: str, step: Step) -> None:
        if target not in self.graph:
            self._fail(
                f"{step.state}.{step.method}() returned {target!r}, which is not a state; "
                f"states: {', '.join(self.graph.names)}"
            )
            return
        self._enter(target, Event.JUMP)
        if self.mode is Mode.MANAGED:
            self.stalled = True

    def _advance(self) -> None:
        """If done in this state and not holding, follow the next edge towards the request."""
        if self.phase is not Phase.DONE or self.stalled or self.state == self.request:
            return
        walk = self.graph.path(self.state, self.request)
        if walk is not None and len(walk) > 1:
            self._enter(walk[1], Event.EDGE)

    def _fail(self, traceback: str) -> None:
        self._apply(Event.RAISED)
        self.error = traceback
        self.changed()

    def _clear(self) -> None:
        self._apply(Event.CLEAR)
        self.error = ""
        self.epoch += 1
        self._last_method = ""
        self.changed()

    def _set_notes(self, step: Step, notes: tuple[str, ...]) -> None:
        # main()'s notifications last into the first run(); a run() replaces them.
        merged = (
            tuple(dict.fromkeys((*self.notifications, *notes))) if step.method == "main" else notes
        )
        if merged != self.notifications:
            self.notifications = merged
            self.changed()

    def changed(self) -> None:
        """A new view is due: number it."""
        self.seq += 1
