"""The app factory: the controller as shipped, with its HTTP API and web dashboard.

Theory of operation: :class:`~corral.controller.service.Controller` serves the bus and knows
nothing of HTTP; it is given an :data:`~corral.controller.parts.HttpFactory` and, once
started, calls it with its :class:`~corral.controller.parts.ControllerParts`. This module,
above both the controller and the dashboard in the import layers (``docs/architecture.md``),
is that factory: it builds the API's FastAPI app, mounts the dashboard under ``/ui`` on it,
and serves both on one port. ``corral controller`` and :class:`ControllerService` use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from corral.config import Config
from corral.controller.api import ApiServer, build_app
from corral.controller.api_calls import ApiCalls
from corral.controller.monitoring import Monitor, Watched
from corral.controller.parts import ControllerParts
from corral.controller.probes import mount_monitoring
from corral.controller.service import Controller
from corral.dashboard.routes import Dashboard, mount
from corral.tokens import TokenChecker

__all__ = ["ControllerService", "WebServer"]


class WebServer(ApiServer):
    """The controller's HTTP server: the API's functions and, under ``/ui``, the dashboard.

    Args:
        parts: The started controller's services.
    """

    def __init__(self, parts: ControllerParts) -> None:
        checker = TokenChecker(parts.store)
        app = build_app(ApiCalls(parts), checker)
        #: the web dashboard (issue #8), sharing the API's token checker
        self.dashboard: Dashboard = mount(app, parts, checker)
        super().__init__(parts.config, app)
        watched = Watched(
            id=parts.id,
            started=parts.started,
            config=parts.config,
            clock=parts.clock,
            registry=parts.registry,
            commands=parts.commands,
            tasks=parts.tasks,
            store=parts.store,
            nc=parts.nc,
            counters=parts.counters,
            backoff=parts.backoff,
            limiter=lambda: self.limiter,
            leadership=parts.leadership,
        )
        #: /metrics, /healthz, /readyz and /status (docs/operations.md, Monitoring)
        self.monitor: Monitor = mount_monitoring(app, watched, checker)

    async def stop(self) -> None:
        """Stop the dashboard's guardian watches, charts' sampler and monitor, then serving."""
        await self.dashboard.stop()
        await self.monitor.stop()
        await super().stop()


class ControllerService(Controller):
    """The controller with its HTTP API and dashboard (``corral controller``).

    Args:
        config: bus, store, HTTP and timing settings (``api_port = -1`` serves no HTTP).
        clock: wall-clock source (seconds since the epoch); injectable for tests.
    """

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        super().__init__(config, clock, http=WebServer)
