"""The controller's bus endpoints for commands and reports (SEER), as a mixin of the controller.

Kept apart from :mod:`corral.controller.service` so that module stays about the registry and
the group commit; the decisions themselves live in :mod:`corral.controller.commands` and
:mod:`corral.controller.reports`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from corral import subjects, wire
from corral.controller.commands import CommandService, counts
from corral.controller.idempotency import Submissions
from corral.controller.reports import ReportService
from corral.controller.submit import Sender, submit
from corral.errors import CorralError, Refused
from corral.states import CommandState
from corral.store import Store

__all__ = ["BUS_ROLES", "CommandEndpoints", "bus_caller"]

#: The credentials that may send state-changing requests on the bus, and their roles.
BUS_ROLES = {"admin": "admin", "operator": "operator", "controller": "controller"}


def bus_caller(subject: str) -> tuple[str, str, str]:
    """Who sent a request on ``corral.ctl.<verb>.<credential>``: the server let only that
    credential publish there (its JWT's permissions), so the subject names the sender.

    Returns:
        ``(verb, actor, role)``: e.g. ``("send", "bus:operator", "operator")``.

    Raises:
        InvalidName: the subject names no sender (an old client sent it).
        Refused: the credential it names may not send such requests.
    """
    verb, credential = subjects.parse_ctl_as(subject)
    role = BUS_ROLES.get(credential)
    if role is None:
        raise Refused(
            f"credential {credential!r} may not make requests that change state: use the "
            "admin or operator credential (<data_dir>/auth/admin.creds, operator.creds)"
        )
    return verb, f"bus:{credential}", role


class CommandEndpoints:
    """Handlers of ``corral.ctl.send|execute|command|commands|reports`` and node reports."""

    commands: CommandService
    reports: ReportService
    store: Store | None
    submissions: Submissions
    #: keyed sends being answered (each waits for its commit off the subscription's loop)
    _keyed: set[asyncio.Task[None]]

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
        """An operator's command: resolved, numbered, answered once it is on disk.

        The actor is the credential the subject names; what the client put in ``actor`` is
        kept only as ``on_behalf_of``. With an idempotency key, a repeat gets the first
        answer (the lookup may read the store, so it runs off this subscription's loop).
        """
        verb, actor, role = bus_caller(msg.subject)
        sender = Sender(actor=actor, role=role, claimed=request.actor)
        via_execute = verb == "execute"
        if request.idempotency_key:
            task = asyncio.create_task(self._send_keyed(msg, request, sender, via_execute))
            self._keyed.add(task)
            task.add_done_callback(self._keyed.discard)
            return
        try:
            await submit(
                self.commands,
                self.submissions,
                request,
                sender,
                via_execute=via_execute,
                reply=msg.reply or "",
            )
        except CorralError as exc:
            await self._reject(msg, exc)

    async def _send_keyed(
        self, msg: Any, request: wire.CommandRequest, sender: Sender, via_execute: bool
    ) -> None:
        """Answer a keyed send: the first answer for a repeat, else accept and wait for disk."""
        try:
            accepted = await submit(
                self.commands,
                self.submissions,
                request,
                sender,
                via_execute=via_execute,
                key=request.idempotency_key,
            )
        except CorralError as exc:
            await self._reject(msg, exc)
            return
        assert accepted is not None  # keyed: answered here, once on disk
        await self._reply(msg, accepted)

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
                state=CommandState(o.state),
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
