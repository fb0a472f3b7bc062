"""What a system module is written with: :class:`GuardState`, :func:`notify` and :func:`log`.

A state's ``main`` and ``run`` are the user's code. They are plain synchronous methods, called on
the guardian's own worker thread (never on the event loop), so they may block, sleep, or call a
:class:`~corral.guardian.NodeManager`; the guardian keeps answering requests meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

__all__ = ["GuardState", "Timers", "log", "notify"]

_logger = logging.getLogger("corral.guardian")


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

    @property
    def timer(self) -> Timers:
        """LIGO's state timers: ``self.timer['settle'] = 5`` starts one; ``self.timer['settle']``
        is True once it expired (and for a timer never started)."""
        timers: Timers | None = self.__dict__.get("_timers")
        if timers is None:
            timers = self.__dict__["_timers"] = Timers()
        return timers

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


class Timers(dict[str, float]):
    """Named countdowns of one state: set seconds, read whether they expired."""

    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, time.monotonic() + float(seconds))

    def __getitem__(self, name: str) -> bool:
        deadline = self.get(name)
        return deadline is None or time.monotonic() >= deadline


class _Notes(threading.local):
    """The notification list of the step running on this thread (``None`` outside one)."""

    current: list[str] | None = None
    #: the lines ``log()`` wrote during this step (``None`` outside one)
    logged: list[str] | None = None
    #: the guardian whose step runs on this thread
    guardian: str = ""


#: this thread's step: its notifications and log lines (set by the guardian's runtime)
step_notes = _Notes()


def notify(message: str) -> None:
    """Raise a notification, shown by every viewer and by the manager's checker.

    Call it from a state's ``main`` or ``run``; it lasts until the next cycle that does not
    raise it again (call it every cycle while the condition holds).

    Args:
        message: what a person watching should know.
    """
    notes = step_notes.current
    if notes is None:
        _logger.warning("notify() outside a guardian state: %s", message)
        return
    if message not in notes:
        notes.append(str(message))


def log(message: object, *args: object) -> None:
    """Log a line from state code (LIGO's ``log()``): to corral's log and the guardian's view.

    The line goes through the ``corral.guardian`` logger (with the guardian's name) and is kept
    in the guardian's view (its last lines; ``corral guardian show NAME`` prints them).

    Args:
        message: the text, or a ``%``-format string for ``args``.
        args: values for ``%`` placeholders in ``message``.
    """
    text = str(message) % args if args else str(message)
    _logger.info(text, extra={"guardian": step_notes.guardian or "?"})
    lines = step_notes.logged
    if lines is not None:
        lines.append(text)
