"""The controller's bus endpoints for commands and reports (SEER): an object the controller
subscribes, given the services and the reply functions it uses.

Kept apart from :mod:`corral.controller.service` so that module stays about the registry and
the group commit; the decisions themselves live in :mod:`corral.controller.commands` and
:mod:`corral.controller.reports`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from corral import subjects, wire
from corral.controller.commands import CommandService, counts
from corral.controller.idempotency import Submissions
from corral.controller.reports import ReportService
from corral.controller.submit import Sender, submit
from corral.errors import CorralError, NotFound, OversizedMessage, Refused
from corral.states import CommandState
from corral.store import Store

__all__ = ["BUS_ROLES", "CommandEndpoints", "bus_caller"]

#: What a node's ``corral.in.<node>.out`` carries: one report, or several at once.
_REPORTS: Any = wire.CommandReport | wire.CommandReports

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
    """Handlers of ``corral.ctl.send|execute|command|commands|reports`` and node reports.

    Args:
        commands: The command router.
        reports: The node reports.
        store: The opened store (stored commands and outcomes).
        submissions: The idempotency keys of submissions.
        reply: Answers a bus message (``reply(msg, payload)``).
        reject: Answers a bus message with an error (``reject(msg, exc)``), and counts it.
        after_commit: Sends ``payload`` to a reply subject once the current state is on disk
            (``after_commit(subject, payload)``).
    """

    def __init__(
        self,
        *,
        commands: CommandService,
        reports: ReportService,
        store: Store,
        submissions: Submissions,
        reply: Callable[[Any, msgspec.Struct], Awaitable[None]],
        reject: Callable[[Any, CorralError], Awaitable[None]],
        after_commit: Callable[[str, msgspec.Struct], None],
    ) -> None:
        self.commands = commands
        self.reports = reports
        self.store = store
        self.submissions = submissions
        self._reply = reply
        self._reject = reject
        self._after_commit = after_commit
        #: keyed sends being answered (each waits for its commit off the subscription's loop)
        self._keyed: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<CommandEndpoints {len(self._keyed)} keyed sends in flight>"

    async def stop(self) -> None:
        """End the keyed sends not yet answered."""
        keyed = list(self._keyed)
        for task in keyed:
            task.cancel()
        for task in keyed:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def subscriptions(self) -> dict[str, tuple[type[Any], Any]]:
        """Subject -> (message type, handler) for the controller to subscribe."""
        return {
            # The bare subjects name no sender: an old client is told to update.
            subjects.ctl("send"): (wire.CommandRequest, self._on_send),
            subjects.ctl("execute"): (wire.CommandRequest, self._on_send),
            subjects.ctl_as("send", "*"): (wire.CommandRequest, self._on_send),
            subjects.ctl_as("execute", "*"): (wire.CommandRequest, self._on_send),
            subjects.node_in_wildcard("out"): (
                _REPORTS,
                self._on_command_report,
            ),
            subjects.node_in_wildcard(subjects.CATCHUP_VERB): (wire.CatchUp, self._on_catch_up),
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

    async def _on_command_report(
        self, msg: Any, node: str, report: wire.CommandReport | wire.CommandReports
    ) -> None:
        """A node's report, or several at once: each speaks for the node the subject names
        (its credential), whatever serials it gives. A final one is confirmed to the node,
        with others, once on disk.

        Raises:
            OversizedMessage: a batch of more than :data:`wire.MAX_BATCHED_REPORTS` reports
                (none of them is applied).
        """
        if isinstance(report, wire.CommandReport):
            self.commands.report(node, report)
            return
        if len(report.reports) > wire.MAX_BATCHED_REPORTS:
            raise OversizedMessage(
                f"{len(report.reports)} command reports in one message from node {node}, "
                f"over the {wire.MAX_BATCHED_REPORTS} a controller takes: none applied"
            )
        for one in report.reports:
            self.commands.report(node, one)

    async def _on_catch_up(self, msg: Any, node: str, ask: wire.CatchUp) -> None:
        # The node named by the subject (its credential) gets its own commands only.
        await self._reply(msg, await self.commands.catch_up(node, ask))

    async def command_view(self, serial: int) -> wire.CommandView | None:
        """One command with every outcome: the book's live view, else the stored one.

        Returns:
            The view, or ``None`` if no command has that serial.

        Raises:
            StoreError: the store could not be read.
        """
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
                msg, NotFound(f"no command #{query.serial}: serials so far run from 1 to {last}")
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
