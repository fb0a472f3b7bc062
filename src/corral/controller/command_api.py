"""The controller's bus endpoints for commands and reports (SEER), as a mixin of the controller.

Kept apart from :mod:`corral.controller.service` so that module stays about the registry and
the group commit; the decisions themselves live in :mod:`corral.controller.commands` and
:mod:`corral.controller.reports`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from corral import subjects, wire
from corral.controller.commands import CommandService, counts
from corral.controller.reports import ReportService
from corral.errors import CorralError, Refused
from corral.store import Store

__all__ = ["CommandEndpoints"]


class CommandEndpoints:
    """Handlers of ``corral.ctl.send|execute|command|commands|reports`` and node reports."""

    commands: CommandService
    reports: ReportService
    store: Store | None

    async def _reply(self, msg: Any, payload: msgspec.Struct) -> None:
        raise NotImplementedError  # provided by the controller

    async def _reject(self, msg: Any, exc: CorralError) -> None:
        raise NotImplementedError  # provided by the controller

    def _after_commit(self, reply: str, payload: msgspec.Struct) -> None:
        raise NotImplementedError  # provided by the controller

    def endpoints(self) -> dict[str, tuple[type[Any], Any]]:
        """Subject -> (message type, handler) for the controller to subscribe."""
        return {
            subjects.node_in_wildcard("out"): (wire.CommandReport, self._on_command_report),
            subjects.ctl("command"): (wire.CommandQuery, self._on_command),
            subjects.ctl("commands"): (wire.CommandsQuery, self._on_commands),
            subjects.node_in_wildcard("report"): (wire.Report, self._on_report),
            subjects.ctl("reports"): (wire.ReportsQuery, self._on_reports),
        }

    async def _on_send(self, msg: Any, _: str, request: wire.CommandRequest) -> None:
        """An operator's command: resolved, numbered, answered once it is on disk."""
        via_execute = msg.subject == subjects.ctl("execute")
        await self.commands.wait_settled()  # serials above what every node applied
        try:
            self.commands.accept(request, msg.reply or "", via_execute)
        except CorralError as exc:
            await self._reject(msg, exc)

    async def _on_report(self, msg: Any, node: str, report: wire.Report) -> None:
        subjects.check_name(report.topic, "report topic")
        self.reports.add(node, report)

    async def _on_reports(self, msg: Any, _: str, query: wire.ReportsQuery) -> None:
        await self._reply(msg, self.reports.snapshot(query.topic))

    async def _on_command_report(self, msg: Any, node: str, report: wire.CommandReport) -> None:
        self.commands.report(node, report)
        if msg.reply:
            # A final report: the node keeps re-sending it until it is on disk here.
            self._after_commit(msg.reply, wire.ReportAck(serial=report.serial))

    async def command_view(self, serial: int) -> wire.CommandView | None:
        """One command with every outcome: the book's live view, else the stored one.

        Returns:
            The view, or ``None`` if no command has that serial.

        Raises:
            StoreError: the store could not be read.
        """
        assert self.store is not None
        row = self.commands.rows.get(serial)
        live = self.commands.live_outcomes(serial)
        if row is not None and live is not None:  # followed by the book: no store read
            return _command_view(row, counts(live), live)
        found = await self.store.get_command(serial)
        if found is None:
            return None
        row, stored = found
        outcomes = self.commands.live_outcomes(row.serial) or [
            wire.OutcomeView(
                node=o.node,
                state=o.state,
                at=o.at,
                result=o.result,
                error=o.error,
                exit_code=o.exit_code,
                stdout=o.stdout,
                stderr=o.stderr,
            )
            for o in stored
        ]
        return _command_view(row, counts(outcomes), outcomes)

    async def command_views(self, limit: int, before: int | None) -> list[wire.CommandView]:
        """Recent commands, newest first, with per-state counts (no outcome details).

        Raises:
            StoreError: the store could not be read.
        """
        assert self.store is not None
        rows = await self.store.recent_commands(min(max(limit, 1), 1000), before)
        views = []
        for row, stored_counts in rows:
            live = self.commands.live_outcomes(row.serial)
            # The book is fresher than the last commit.
            views.append(_command_view(row, stored_counts if live is None else counts(live), []))
        return views

    async def _on_command(self, msg: Any, _: str, query: wire.CommandQuery) -> None:
        view = await self.command_view(query.serial)
        if view is None:
            last = self.commands.book.last_serial
            await self._reject(
                msg, Refused(f"no command #{query.serial}: serials so far run from 1 to {last}")
            )
            return
        await self._reply(msg, view)

    async def _on_commands(self, msg: Any, _: str, query: wire.CommandsQuery) -> None:
        views = await self.command_views(query.limit, query.before)
        await self._reply(msg, wire.CommandsReply(commands=views))


def _command_view(
    row: Any, counts: dict[str, int], outcomes: list[wire.OutcomeView]
) -> wire.CommandView:
    fields = msgspec.structs.asdict(row)
    del fields["body"]
    return wire.CommandView(**fields, counts=counts, outcomes=outcomes)
