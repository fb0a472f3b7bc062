"""The guardian's state machines as data: its enums and its transition tables.

Everything that decides how a guardian moves within a state is :data:`TRANSITIONS`, keyed by
the current :class:`Phase` and an :class:`Event`; what a manager may do to a guardian's mode is
:data:`MANAGER_MODE_CHANGES`. :class:`~corral.guardian.core.Automaton` applies them.
"""

from __future__ import annotations

import enum

from corral.errors import IllegalTransition
from corral.states import GuardianMode, GuardianStatus

__all__ = [
    "Event",
    "IllegalTransition",
    "MANAGER_MODE_CHANGES",
    "Mode",
    "Phase",
    "Status",
    "TRANSITIONS",
]


#: Whose requests a guardian follows (:class:`corral.states.GuardianMode`, on the wire).
Mode = GuardianMode
#: The one word a viewer looks at first (:class:`corral.states.GuardianStatus`).
Status = GuardianStatus


class Phase(enum.StrEnum):
    """Where the automaton is within its current state."""

    ENTER = "ENTER"  # main() is due
    RUN = "RUN"  # run() is due, it has not returned True yet
    DONE = "DONE"  # run() returned True and the guardian holds (arrived, stalled, no path)
    ERROR = "ERROR"  # user code raised; nothing runs until a request, revive or reload


class Event(enum.StrEnum):
    """What happened to the automaton."""

    ENTERED = "ENTERED"  # main() returned None
    NOT_DONE = "NOT_DONE"  # run() returned None/False
    DONE = "DONE"  # main() or run() returned True
    JUMP = "JUMP"  # main() or run() named another state
    EDGE = "EDGE"  # the walk follows an edge
    GOTO = "GOTO"  # a goto state was requested: go there now
    RAISED = "RAISED"  # user code raised
    CLEAR = "CLEAR"  # a request, revive or reload clears an error (re-enter the state)
    RELOAD = "RELOAD"  # new code: re-enter the current state


_ACTIVE = (Phase.ENTER, Phase.RUN, Phase.DONE)

#: (phase, event) -> next phase. Anything else is illegal.
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.ENTER, Event.ENTERED): Phase.RUN,
    (Phase.ENTER, Event.DONE): Phase.DONE,
    (Phase.RUN, Event.NOT_DONE): Phase.RUN,
    (Phase.RUN, Event.DONE): Phase.DONE,
    (Phase.DONE, Event.DONE): Phase.DONE,
    (Phase.DONE, Event.NOT_DONE): Phase.RUN,
    (Phase.DONE, Event.EDGE): Phase.ENTER,
    (Phase.ERROR, Event.CLEAR): Phase.ENTER,
    (Phase.ERROR, Event.RELOAD): Phase.ENTER,
    **{(p, Event.JUMP): Phase.ENTER for p in _ACTIVE},
    **{(p, Event.GOTO): Phase.ENTER for p in (*_ACTIVE, Phase.ERROR)},
    **{(p, Event.RAISED): Phase.ERROR for p in _ACTIVE},
    **{(p, Event.RELOAD): Phase.ENTER for p in _ACTIVE},
}

#: Mode changes a manager (as opposed to a person) may make: (current, new). Holding is
#: checked as well: a MANAGED node stays with the manager that holds it.
MANAGER_MODE_CHANGES: frozenset[tuple[Mode, Mode]] = frozenset(
    {(Mode.AUTO, Mode.MANAGED), (Mode.MANAGED, Mode.MANAGED), (Mode.MANAGED, Mode.AUTO)}
)
