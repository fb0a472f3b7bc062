"""What a system module is written with: :class:`GuardState` and :func:`notify`.

A state's ``main`` and ``run`` are the user's code. They are plain synchronous methods, called on
the guardian's own worker thread (never on the event loop), so they may block, sleep, or call a
:class:`~corral.guardian.NodeManager`; the guardian keeps answering requests meanwhile.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

__all__ = ["GuardState", "notify"]

log = logging.getLogger("corral.guardian")


class GuardState:
    """One state of a guardian system. Subclass it; the class name is the state's name.

    Class attributes:
        goto: the state may be jumped to from anywhere; requesting it goes there at once
            (without waiting for the current state to finish).
        request: the state may be requested (a person's or a manager's target).
        index: an optional number shown beside the name (LIGO's state index).

    ``main`` runs once on entry, then ``run`` repeatedly until it returns ``True`` (done). Either
    may return another state's name instead: a *jump* straight there.
    """

    goto: ClassVar[bool] = False
    request: ClassVar[bool] = True
    index: ClassVar[int | None] = None

    #: the guardian's name, set before ``main`` runs
    guardian: str = ""

    def main(self) -> Any:
        """Run once when the state is entered.

        Returns:
            ``None`` to go on to :meth:`run`, ``True`` if the state is already done, or the
            name of a state to jump to.
        """
        return None

    def run(self) -> Any:
        """Run repeatedly (once per cycle) while the guardian is in this state.

        Returns:
            ``True`` when done, ``None``/``False`` to be called again next cycle, or the name
            of a state to jump to.
        """
        return True

    def __repr__(self) -> str:
        return f"<GuardState {type(self).__name__} goto={self.goto} request={self.request}>"


class _Notes(threading.local):
    """The notification list of the step running on this thread (``None`` outside one)."""

    current: list[str] | None = None


_notes = _Notes()


def notify(message: str) -> None:
    """Raise a notification, shown by every viewer and by the manager's checker.

    Call it from a state's ``main`` or ``run``; it lasts until the next cycle that does not
    raise it again (call it every cycle while the condition holds).

    Args:
        message: what a person watching should know.
    """
    notes = _notes.current
    if notes is None:
        log.warning("notify() outside a guardian state: %s", message)
        return
    if message not in notes:
        notes.append(str(message))
