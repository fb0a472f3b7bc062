"""The dashboard's charts page: nodes, queue, task throughput and latency, command outcomes,
per-node CPU and memory, drawn by the vendored uPlot from :mod:`corral.dashboard.trends`."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from corral.dashboard.auth import Gate
from corral.dashboard.trends import KEEP, STEP
from corral.dashboard.web import render
from corral.tokens import Role

__all__ = ["ChartPages"]


class ChartPages:
    """The dashboard's charts page.

    Args:
        gate: who is signed in, with which role.
    """

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __repr__(self) -> str:
        return "<ChartPages>"

    async def charts(self, request: Request) -> Response:
        """Charts that move live (the samples come over ``/ui/events/charts``)."""
        session = await self.gate.require(request, Role.READ)
        return render("charts.html", session, step=STEP, minutes=round(KEEP * STEP / 60))
