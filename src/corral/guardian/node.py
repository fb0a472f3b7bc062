"""One subordinate guardian as its manager sees it: :class:`Node` (part of the seed's API).

A node holds the manager's local copy of the subordinate's view (kept fresh by the manager's
watch of the guardian bucket) and sends it requests through its manager's connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from corral import subjects, wire
from corral.errors import NoSuchGuardian, Timeout
from corral.guardian.machine import Mode, Status

if TYPE_CHECKING:
    from corral.guardian.client import GuardianClient

__all__ = ["Node"]

log = logging.getLogger("corral.guardian")


class Node:
    """One subordinate guardian as its manager sees it. Compare it with a state name.

    Made by :class:`~corral.guardian.manager.NodeManager`, which gives it what it uses of
    the manager.

    Args:
        name: The subordinate guardian's name.
        manager: The managing guardian's name ("" until attached).
        stale_after: Seconds without news before it is a connection error.
        news: The manager's condition, notified whenever a node's copy changes.
        call: Runs a bus call on the manager's event loop and returns its result.
        client: The manager's guardian client (raises if the manager is not attached).
    """

    def __init__(
        self,
        name: str,
        *,
        manager: Callable[[], str],
        stale_after: Callable[[], float],
        news: threading.Condition,
        call: Callable[[Any], Any],
        client: Callable[[], GuardianClient],
    ) -> None:
        self._manager = manager
        self._stale_after = stale_after
        self._news = news
        self._call = call
        self._client = client
        self.name = subjects.check_name(name, "guardian")
        self._view: wire.GuardianView | None = None
        self._heard = float("-inf")  # monotonic time of the last view
        self._held_instance = ""  # the node's run (instance) this manager took into MANAGED
        #: why the last request to it could not be delivered ("" once one was)
        self.fault = ""

    def __repr__(self) -> str:
        v = self._view
        if v is None:
            return f"<Node {self.name!r} never seen>"
        return (
            f"<Node {self.name!r} {v.state} request={v.request} mode={v.mode} status={self.status}>"
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.state == other
        if isinstance(other, Node):
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name

    # --- what the copy says ----------------------------------------------------------------

    def update(self, view: wire.GuardianView, age: float = 0.0) -> None:
        """Take ``view`` as the local copy unless it is older; ``age``: seconds since it was
        written (a replayed view)."""
        with self._news:
            old = self._view
            if old is None or old.instance != view.instance or view.seq >= old.seq:
                self._view = view
            self._heard = max(self._heard, time.monotonic() - max(0.0, age))
            self._news.notify_all()

    @property
    def heard(self) -> float:
        """When its view was last refreshed (``time.monotonic()``; -inf if never)."""
        return self._heard

    @property
    def held_instance(self) -> str:
        """The run (instance) of it this manager took into MANAGED ("" if none)."""
        return self._held_instance

    @property
    def view(self) -> wire.GuardianView | None:
        """The latest view of this node (``None`` before the first)."""
        return self._view

    @property
    def state(self) -> str:
        """Its current state ("" if never seen)."""
        return self._view.state if self._view else ""

    @property
    def request(self) -> str:
        """Its current request."""
        return self._view.request if self._view else ""

    @property
    def mode(self) -> str:
        """AUTO, MANAGED or MANUAL."""
        return self._view.mode if self._view else ""

    @property
    def managed_by(self) -> str:
        """The manager holding it in MANAGED mode ("" if none)."""
        return self._view.manager if self._view else ""

    @property
    def notifications(self) -> tuple[str, ...]:
        """Its current notifications."""
        return self._view.notifications if self._view else ()

    @property
    def connected(self) -> bool:
        """Its view is fresh (refreshed within the manager's ``stale_after``) and alive."""
        v = self._view
        return v is not None and v.alive and time.monotonic() - self._heard <= self._stale_after()

    @property
    def status(self) -> str:
        """OK, ERROR, NOTIFICATION, STALLED, or CONNECTION_ERROR when it went silent."""
        if not self.connected or self._view is None:
            return Status.CONNECTION_ERROR.value
        return self._view.status

    @property
    def stalled(self) -> bool:
        """It jumped while MANAGED and holds there (revive it or request again)."""
        return bool(self._view and self._view.stalled and self.connected)

    @property
    def arrived(self) -> bool:
        """It reached its request and that state's ``run`` returned True."""
        return bool(self._view and self._view.arrived and self.connected)

    @property
    def nominal(self) -> str:
        """Its system's ``nominal`` state ("" if none)."""
        return self._view.nominal if self._view else ""

    @property
    def OK(self) -> bool:  # noqa: N802 - the seed's spelling
        """LIGO's OK: executing, AUTO or MANAGED, REQUEST == STATE == NOMINAL, done, no
        error, and connected."""
        return bool(self._view and self._view.ok and self.connected)

    def _deliver(self, what: str, call: Any) -> bool:
        """Send a request; a node that does not answer is recorded as its fault (shown by
        :meth:`NodeManager.faults` and the checker), not raised into the manager's state.

        Returns:
            Whether it was delivered (the reply's view is then the local copy).
        """
        try:
            view = self._call(call)
        except (NoSuchGuardian, Timeout) as exc:
            self.fault = f"{what} not delivered: {exc}"
            log.warning(
                "manager request not delivered",
                extra={"guardian": self._manager(), "node": self.name, "error": str(exc)},
            )
            return False
        self.fault = ""
        self.update(view)
        return True

    # --- asking it things ------------------------------------------------------------------

    def set_request(self, state: str) -> None:
        """Ask it to walk to ``state``.

        A node that is not running (or does not answer) does not raise: the undelivered
        request is recorded as its :attr:`fault`, which :meth:`NodeManager.faults` reports.

        Raises:
            GuardianRefused: it refused (another manager holds it, no such state, ...).
        """
        self._deliver(f"request {state}", self._client().request(self.name, state))

    def set_managed(self) -> None:
        """Take it into MANAGED mode, held by this manager.

        Raises:
            GuardianRefused: another manager holds it (the error names it), or a person put it
                in MANUAL. A node that does not answer is recorded as its :attr:`fault`.
        """
        client = self._client()
        if self._deliver("set_managed", client.set_mode(self.name, Mode.MANAGED.value)):
            assert self._view is not None
            self._held_instance = self._view.instance

    def release(self) -> None:
        """Give it back: AUTO mode.

        Raises:
            GuardianRefused: this manager does not hold it.
        """
        client = self._client()
        self.update(self._call(client.set_mode(self.name, Mode.AUTO.value)))

    def revive(self) -> None:
        """Re-request its last request (clears a stall). Not delivered: see :meth:`set_request`.

        Raises:
            GuardianRefused: it refused.
        """
        self._deliver("revive", self._client().revive(self.name))
