"""What the HTTP API and the dashboard are given of a running controller: its public parts.

Theory of operation: the API's functions and the dashboard's pages read and drive the
controller's services (registry, command router, scheduler, groups, reports, store), but
never the controller itself: they get this record, built by
:meth:`corral.controller.service.Controller.parts` once the controller has started, with a
plain ``audit(entry)`` callable for the audit log and a ``wake()`` for the group commit
instead of the controller's private queues. So the controller's internals can change
without them, and nothing below the app factory (:mod:`corral.app`) imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from corral.bus import NATS
    from corral.config import Config
    from corral.controller.command_api import CommandEndpoints
    from corral.controller.commands import CommandService
    from corral.controller.groups import GroupService
    from corral.controller.idempotency import Submissions
    from corral.controller.leadership import Leadership
    from corral.controller.reports import ReportService
    from corral.controller.tasks import TaskService
    from corral.core.registry import Registry
    from corral.records import AuditEntry
    from corral.store import Store
    from corral.store.writes import Backoff

__all__ = ["ControllerParts", "HttpFactory", "HttpServer"]


@dataclass(frozen=True, kw_only=True)
class ControllerParts:
    """A started controller's services, for the API and the dashboard.

    Attributes:
        id: The controller's id (announced on the bus).
        started: When it started (seconds since the epoch).
        config: Its settings.
        clock: Its wall-clock source.
        registry: The node registry.
        commands: The command router.
        endpoints: The command views (a command with its outcomes, recent commands).
        reports: The node reports, aggregated.
        groups: The process-group coordinator.
        tasks: The task scheduler service.
        submissions: The idempotency keys of submissions.
        store: The opened store.
        nc: The controller's bus connection.
        audit: Queues an audit entry for the controller's next group commit.
        wake: Wakes the group commit (after a registry record was changed in place).
        counters: The controller's counters (heartbeats, joins, refusals), for metrics.
        backoff: The store writes' backoff (failures in a row), for metrics and readiness.
        leadership: Its role among several controllers: the API refuses writes on a
            standby (``None``: it leads alone).
    """

    id: str
    started: float
    config: Config
    clock: Callable[[], float]
    registry: Registry
    commands: CommandService
    endpoints: CommandEndpoints
    reports: ReportService
    groups: GroupService
    tasks: TaskService
    submissions: Submissions
    store: Store
    nc: NATS
    audit: Callable[[AuditEntry], None]
    wake: Callable[[], None]
    counters: Mapping[str, int] = field(default_factory=dict)
    backoff: Backoff | None = None
    leadership: Leadership | None = None


class HttpServer(Protocol):
    """What the controller starts and stops of the HTTP server an app factory gives it."""

    url: str

    async def start(self) -> None:
        """Bind the port and start serving."""

    async def stop(self) -> None:
        """Stop serving."""


#: Builds the HTTP server for a started controller (see :mod:`corral.app`).
HttpFactory = Callable[[ControllerParts], HttpServer]
