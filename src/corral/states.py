"""Every state corral puts on the wire: one StrEnum per machine, at the bottom of the layers.

The values are the strings the wire and the store always carried (``"UP"``, ``"done"``,
``"complete"``, ``"AUTO"``...), so an enum member *is* that string to msgspec, JSON and SQL,
and older peers read it unchanged. The message structs in :mod:`corral.wire` and
:mod:`corral.api_models` are typed with these enums, so a message naming a state that does
not exist is refused when it is decoded, with an error that lists the ones that do.

Each machine's transition table lives beside the core that applies it (the registry's in
:mod:`corral.core.registry`, a task instance's in :mod:`corral.core.taskstate`, a command
outcome's in :mod:`corral.core.commands`, a guardian's in :mod:`corral.guardian.machine`); an
illegal move raises the one :class:`~corral.errors.IllegalTransition`.
"""

from __future__ import annotations

import enum

__all__ = [
    "CommandState",
    "GuardianMode",
    "GuardianStatus",
    "NodeStatus",
    "TaskOutcome",
    "TaskStatus",
]


class NodeStatus(enum.StrEnum):
    """Where a node stands in the registry (the liveness machine)."""

    UP = "UP"
    DOWN = "DOWN"  # silent for longer than down_after
    LEFT = "LEFT"  # stopped cleanly and said so
    REVOKED = "REVOKED"  # its credential was revoked


class CommandState(enum.StrEnum):
    """Where a command stands at one node (a node's report, and the controller's outcome)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        """True for ``done`` and ``failed``: nothing changes it any more."""
        return self in (CommandState.DONE, CommandState.FAILED)

    @property
    def last_word(self) -> bool:
        """True for what a node says last about a command (``done``, ``failed``,
        ``expired``): such a report is kept and re-sent until the controller has it."""
        return self in (CommandState.DONE, CommandState.FAILED, CommandState.EXPIRED)


class TaskStatus(enum.StrEnum):
    """Where a task instance stands."""

    QUEUED = "queued"
    #: given to a node, waiting in a worker's pipe (prefetched); no worker has started it
    ASSIGNED = "assigned"
    RUNNING = "running"
    CANCEL_REQUESTED = "cancel-requested"
    CANCELLED = "cancelled"
    COMPLETE = "complete"
    FAILED = "failed"


class TaskOutcome(enum.StrEnum):
    """How one attempt of a task ended, as its node reports it."""

    COMPLETE = "complete"
    FAILED = "failed"
    #: the task stopped on request (``ctx.check_stop()``, or cancelled before it started)
    STOPPED = "stopped"


class GuardianMode(enum.StrEnum):
    """Whose requests a guardian follows, and what it does after a jump."""

    AUTO = "AUTO"
    MANAGED = "MANAGED"
    MANUAL = "MANUAL"


class GuardianStatus(enum.StrEnum):
    """The one word a viewer or manager looks at first."""

    OK = "OK"
    ERROR = "ERROR"
    NOTIFICATION = "NOTIFICATION"
    STALLED = "STALLED"
    #: never set by a guardian itself: what a viewer sees when it stopped hearing from one
    CONNECTION_ERROR = "CONNECTION_ERROR"
