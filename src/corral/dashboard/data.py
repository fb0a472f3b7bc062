"""What each dashboard page shows, as plain JSON-able data.

The same functions fill the server-rendered page and the server-sent events that keep it
live, so a page and its updates never disagree. Everything here reads the controller's
memory (registry, command book, scheduler, groups, reports) or its store; nothing changes.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

import msgspec

from corral import api_models as m
from corral import wire
from corral.controller.api_calls import ApiCalls

if TYPE_CHECKING:
    from corral.controller.parts import ControllerParts

__all__ = [
    "command_detail",
    "command_history",
    "fleet",
    "groups",
    "matches",
    "reports",
    "target_hints",
    "tasks_live",
]


def matches(record: Any, pattern: str) -> bool:
    """True if a node matches ``pattern``: a glob on its name, or one of its labels
    (``label:NAME`` or plain ``NAME``)."""
    pattern = pattern.strip()
    if not pattern:
        return True
    if pattern.startswith("label:"):
        return pattern[6:] in record.labels
    return fnmatch.fnmatchcase(record.name, pattern) or pattern in record.labels


def fleet(ctl: ControllerParts, pattern: str = "") -> list[dict[str, Any]]:
    """Every node (matching ``pattern``): status and since, labels, serial, behind, slots,
    and its host's stats (None until a heartbeat brings them)."""
    behind = ctl.commands.book.behind()
    core = ctl.tasks.core if ctl.tasks is not None else None
    out = []
    for r in ctl.registry.all():
        if not matches(r, pattern):
            continue
        workers = core.nodes.get(r.name) if core is not None else None
        busy = 0
        if workers is not None and core is not None:
            busy = sum(
                1
                for i in workers.leases.values()
                if i in core.active and core.active[i].worker >= 0
            )
        out.append(
            {
                "name": r.name,
                "status": r.status,
                "since": r.since,
                "last_seen": r.last_seen,
                "labels": list(r.labels),
                "interfaces": list(r.interfaces),
                "sink": bool(r.attributes.get("sink")),
                "last_serial": r.last_serial,
                "behind": behind.get(r.name, 0) if r.status != "LEFT" else 0,
                "slots": r.slots,
                "busy": busy,
                "host": r.host,
                "pid": r.pid,
                "version": r.version,
                # cpu_percent, mem_percent, disk_percent, load1 from its last heartbeat
                "stats": r.stats,
            }
        )
    return out


def target_hints(ctl: ControllerParts, most: int = 200) -> list[str]:
    """Targets to suggest in the command form: each label (``label:NAME``), then node names.

    ``*`` (every node) is offered by the form itself.
    """
    labels = sorted({f"label:{label}" for r in ctl.registry.all() for label in r.labels})
    names = sorted(r.name for r in ctl.registry.all())
    return (labels + names)[:most]


def _command(view: Any) -> dict[str, Any]:
    return msgspec.to_builtins(view)  # type: ignore[no-any-return]


async def command_history(ctl: ControllerParts, limit: int = 50) -> list[dict[str, Any]]:
    """The latest commands, newest first, with how many nodes are in each state."""
    from corral.controller.commands import counts

    assert ctl.store is not None
    found = list(await ctl.store.recent_commands(limit, None))
    # Commands accepted but not yet written by the group commit are newer than any stored.
    newest = found[0][0].serial if found else 0
    fresh: list[tuple[Any, dict[str, int]]] = [
        (r, {}) for s, r in ctl.commands.rows.items() if s > newest
    ]
    rows = sorted(fresh, key=lambda f: -f[0].serial) + found
    out = []
    for row, stored in rows[:limit]:
        live = ctl.commands.live_outcomes(row.serial)
        out.append(
            {
                "serial": row.serial,
                "created": row.created,
                "actor": row.actor,
                "kind": row.kind,
                "name": row.name,
                "targets": list(row.targets),
                "nodes": list(row.nodes),
                "counts": stored if live is None else counts(live),
            }
        )
    return out


async def command_detail(ctl: ControllerParts, serial: int) -> dict[str, Any] | None:
    """One command and every node's outcome (the book's live view over the stored one)."""
    live = ctl.commands.live_outcomes(serial)
    # A command just accepted is in the service's memory before the group commit writes it:
    # without its row the page (and its live updates) showed blank kind, actor and targets.
    row: Any = ctl.commands.rows.get(serial)
    stored: Any = ()
    if row is None or live is None:
        assert ctl.store is not None
        found = await ctl.store.get_command(serial)
        if found is None and live is None:
            return None
        if found is not None:
            row, stored = found
    head: dict[str, Any] = {"serial": serial}
    if row is not None:
        head.update(
            created=row.created,
            actor=row.actor,
            kind=row.kind,
            name=row.name,
            targets=list(row.targets),
            nodes=list(row.nodes),
            unknown=list(row.unknown),
        )
        if live is None:
            live = [
                msgspec.convert(
                    {
                        k: getattr(o, k)
                        for k in (
                            "node",
                            "state",
                            "at",
                            "result",
                            "error",
                            "exit_code",
                            "stdout",
                            "stderr",
                        )
                    },
                    type=wire.OutcomeView,
                )
                for o in stored
            ]
    outcomes = [_command(o) for o in live or []]
    head["outcomes"] = outcomes
    return head


async def tasks_live(ctl: ControllerParts) -> dict[str, Any]:
    """Running instances with their progress, and the queue's first page."""
    calls = ApiCalls(ctl)
    running = [msgspec.to_builtins(s) for s in await calls.task_statuses()]
    queue = await calls.list_queue(m.PageRequest(page=1, per_page=50))
    return {
        "running": running,
        "queue": [
            {"id": t.id, "key": t.key, "priority": t.priority, "queued_at": t.queued_at}
            for t in queue.items
        ],
        "queued": queue.total,
    }


def groups(ctl: ControllerParts) -> list[dict[str, Any]]:
    """Every live group: phase, members, the current barrier and who it still waits for."""
    service = ctl.groups
    if service is None:
        return []
    out = []
    for (name, run), g in sorted(service.groups.items()):
        members = sorted(g.members.values(), key=lambda mb: (mb.rank, mb.id))
        current = g.round
        missing: list[str] = []
        barrier = None
        if current is not None:
            barrier = {"kind": current.kind, "seq": current.seq, "arrived": len(current.arrived)}
            missing = [
                mb.id
                for mb in members
                if mb.alive and not mb.left and mb.rank not in current.arrived
            ]
        out.append(
            {
                "name": name,
                "run": run,
                "phase": str(g.phase),
                "size": g.size,
                "members": [
                    {
                        "id": mb.id,
                        "rank": mb.rank,
                        "host": mb.host,
                        "pid": mb.pid,
                        "alive": mb.alive and not mb.left,
                    }
                    for mb in members
                ],
                "barrier": barrier,
                "missing": missing,
            }
        )
    return out


def reports(ctl: ControllerParts) -> dict[str, Any]:
    """The latest report of every node and topic, and each topic's aggregate."""
    snap = ctl.reports.snapshot()
    return msgspec.to_builtins(snap)  # type: ignore[no-any-return]
