"""Node reports, aggregated and pushed to the sinks every interval (SEER REPORT, ``doUpdates``).

Nodes publish :class:`~corral.wire.Report` messages on ``corral.in.<node>.report``. The
controller keeps the latest value per node per topic; every ``report_interval`` it sends what
changed, with the aggregates, to every sink node (``corral.node.<sink>.reports``) and to
watchers of each topic (``corral.events.report.<topic>``, ``corral watch TOPIC``). Nothing is
sent in an interval where nothing changed.

Aggregators are plain functions registered per topic, given ``{node: latest value}``::

    from corral import aggregator

    @aggregator("temperature")
    def hottest(values: dict[str, float]) -> float:
        return max(values.values())

A failing aggregator is logged and its topic's aggregate left out; reports still flow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from corral import bus, subjects, wire
from corral.core.registry import NodeStatus, Registry

__all__ = ["ReportService", "aggregator"]

log = logging.getLogger("corral.controller.reports")

F = TypeVar("F", bound=Callable[[dict[str, Any]], Any])
_AGGREGATORS: dict[str, Callable[[dict[str, Any]], Any]] = {}


def aggregator(topic: str) -> Callable[[F], F]:
    """Register ``fn({node: value}) -> aggregate`` for report ``topic`` (in the controller)."""

    def register(fn: F) -> F:
        _AGGREGATORS[topic] = fn
        return fn

    return register


class ReportService:
    """The latest reports, their aggregates, and the periodic push to sinks.

    Args:
        registry: to find the sink nodes.
        aggregators: ``topic -> fn``; default every one registered with :func:`aggregator`.
    """

    def __init__(
        self,
        registry: Registry,
        aggregators: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
    ) -> None:
        self.registry = registry
        self.aggregators = dict(_AGGREGATORS if aggregators is None else aggregators)
        self.latest: dict[tuple[str, str], wire.ReportEntry] = {}
        self._changed: dict[tuple[str, str], wire.ReportEntry] = {}
        self.nc: bus.NATS | None = None

    def __repr__(self) -> str:
        return f"<ReportService latest={len(self.latest)} changed={len(self._changed)}>"

    def add(self, node: str, report: wire.Report) -> None:
        """Keep ``report`` as the latest of ``node`` on its topic."""
        entry = wire.ReportEntry(node=node, topic=report.topic, value=report.value, at=report.at)
        self.latest[(node, report.topic)] = entry
        self._changed[(node, report.topic)] = entry

    def aggregates(self, topics: set[str]) -> dict[str, Any]:
        """Run the aggregators of ``topics`` over the latest values."""
        out: dict[str, Any] = {}
        for topic in topics:
            fn = self.aggregators.get(topic)
            if fn is None:
                continue
            values = {n: e.value for (n, t), e in self.latest.items() if t == topic}
            try:
                out[topic] = fn(values)
            except Exception:
                log.exception("aggregator of topic %r failed; its aggregate is left out", topic)
        return out

    def snapshot(self, topic: str = "") -> wire.ReportUpdate:
        """Every latest report (of ``topic``, if given) with the aggregates."""
        entries = [e for e in self.latest.values() if not topic or e.topic == topic]
        entries.sort(key=lambda e: (e.topic, e.node))
        return wire.ReportUpdate(
            reports=entries, aggregates=self.aggregates({e.topic for e in entries})
        )

    async def push(self) -> None:
        """Send what changed since the last push to every sink and to each topic's watchers."""
        if not self._changed or self.nc is None:
            return
        changed, self._changed = list(self._changed.values()), {}
        topics = {e.topic for e in changed}
        aggregates = self.aggregates(topics)
        update = wire.encode(wire.ReportUpdate(reports=changed, aggregates=aggregates))
        for name, record in self.registry.nodes.items():
            if record.status == NodeStatus.UP and record.attributes.get("sink"):
                await self.nc.publish(
                    subjects.node_out(name, "reports"), update, headers=wire.HEADERS
                )
        for topic in topics:
            per_topic = wire.ReportUpdate(
                reports=[e for e in changed if e.topic == topic],
                aggregates={topic: aggregates[topic]} if topic in aggregates else {},
            )
            await self.nc.publish(
                subjects.report_events(topic), wire.encode(per_topic), headers=wire.HEADERS
            )
