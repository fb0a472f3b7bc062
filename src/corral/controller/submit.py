"""One way in for a command, whichever way it came: the bus, the HTTP API or the dashboard.

Each front end only says who sends (the credential the bus subject names, the API token, the
signed-in user) and hands the command to :func:`submit`, which checks it
(:meth:`~corral.controller.commands.CommandService.check`: targets, kind, sizes, timeout, the
configured ``retire_after`` when none is given, EXECUTE only with the execute role), honours
an idempotency key, and records it with its audit entry in the controller's next group commit.
The same bad command is thus refused with the same error everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from corral import wire

if TYPE_CHECKING:
    from corral.controller.commands import CommandService
    from corral.controller.idempotency import Stamp, Submissions

__all__ = ["Sender", "submit"]


class Sender(msgspec.Struct, frozen=True, kw_only=True):
    """Who sends a command, as the front end established it.

    Attributes:
        actor: who the audit log names (``bus:operator``, ``api:<token>``, a dashboard user).
        role: their role (``admin``, ``operator``, ``execute``...).
        scope: whose idempotency keys these are (default: ``actor``).
        claimed: an actor the client named itself, recorded only as ``on_behalf_of``.
    """

    actor: str
    role: str
    scope: str = ""
    claimed: str = ""


async def submit(
    commands: CommandService,
    submissions: Submissions,
    request: wire.CommandRequest,
    sender: Sender,
    *,
    via_execute: bool,
    key: str | None = None,
    reply: str | None = None,
) -> wire.CommandAccepted | None:
    """Check, number and record a command; answer once it is on disk.

    Args:
        commands: the controller's command service.
        submissions: its idempotency keys.
        request: the command; its ``actor`` and ``idempotency_key`` are ignored (``sender``
            and ``key`` say them).
        sender: who sends it.
        via_execute: it came the EXECUTE way, open only to the execute role.
        key: an idempotency key: a repeat within the window gets the first answer.
        reply: for the bus, the subject to answer on ("" for none): without a key this
            returns at once, with ``None``, and the group commit sends the answer. ``None``:
            wait until the command is on disk and return the answer.

    Returns:
        The accepted command (its serial and nodes), or ``None`` when ``reply`` answers.

    Raises:
        UsageError: a malformed command (see ``CommandService.check``).
        Refused: no node matched, or EXECUTE came without the execute role.
        IdempotencyKeyReused: ``key`` came with another command before.
        StoreError: the command or the key could not be written or read.
    """
    request = msgspec.structs.replace(request, actor=sender.actor, idempotency_key="")
    await commands.wait_settled()  # serials above what every node applied
    if reply is not None and not key:
        # The bus's fast path: no task per command, the commit answers on ``reply``.
        commands.accept(request, reply, via_execute, role=sender.role, claimed=sender.claimed)
        return None

    async def durably(stamp: Stamp | None) -> wire.CommandAccepted:
        return await commands.accept_durably(
            request, via_execute, role=sender.role, claimed=sender.claimed, stamp=stamp
        )

    function = "execute_command" if via_execute else "send_command"
    scope = sender.scope or sender.actor
    return await submissions.once(
        scope, key or None, function, request, wire.CommandAccepted, durably
    )
