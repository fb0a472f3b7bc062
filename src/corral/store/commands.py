"""The store's side of commands: their rows, per-node outcomes, history queries.

A mixin of :class:`~corral.store.SqlStore`, kept apart so the store module stays about nodes.
Commands and outcomes are written by :meth:`Store.commit` in the controller's flush, through
the store's one writer.
A command's row lists the nodes it resolved to; a node has an outcome row once it answered
(or was expired). A target without a row is ``pending``: the readers below fill those in, so
sending to 1,000 nodes writes one row, not 1,001.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import Connection, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from corral.records import CommandRow, OutcomeRow

from ._errors import translate
from .schema import command_outcomes, commands
from .writes import upsert

__all__ = ["CommandQueries", "write_commands"]

_LIST_COLUMNS = [commands.c[n] for n in CommandRow.__struct_fields__ if n != "body"]
_OUTCOME_COLUMNS = [command_outcomes.c[n] for n in OutcomeRow.__struct_fields__]
_FINAL = ("done", "failed", "expired")


def write_commands(
    conn: Connection,
    rows: Sequence[CommandRow],
    outcomes: Sequence[OutcomeRow],
) -> None:
    """Insert new commands (their targets are ``pending`` until they have an outcome row),
    then upsert changed outcomes (in the store's writer thread)."""
    asdict = msgspec.structs.asdict
    if rows:
        conn.execute(commands.insert(), [asdict(r) for r in rows])
    if outcomes:
        stmt = upsert(conn.dialect.name, command_outcomes, "serial", "node")
        params = [asdict(o) for o in outcomes]
        for start in range(0, len(params), 1000):
            conn.execute(stmt, params[start : start + 1000])


def _row(row: Any, body: bytes = b"") -> CommandRow:
    values = dict(row)
    values.setdefault("body", body)
    return CommandRow(**values)


def _with_pending(row: CommandRow, stored: list[OutcomeRow]) -> list[OutcomeRow]:
    """``stored`` plus a ``pending`` outcome for every target without a row, by node."""
    have = {o.node for o in stored}
    pending = [
        OutcomeRow(
            serial=row.serial,
            node=n,
            state="pending",
            at=row.created,
            result=None,
            error="",
            exit_code=None,
            stdout="",
            stderr="",
        )
        for n in row.nodes
        if n not in have
    ]
    return sorted(stored + pending, key=lambda o: o.node) if pending else stored


class CommandQueries:
    """Read commands back: history pages, one command in detail, the ones still open."""

    _engine: AsyncEngine
    _masked: str

    def _usable(self, action: str) -> None:  # pragma: no cover - provided by Store
        raise NotImplementedError

    async def last_command_serial(self) -> int:
        """The highest serial ever issued (0 if none), so serials continue after a restart.

        Raises:
            StoreError: The query failed.
        """
        self._usable("read the last serial")
        with translate("read the last command serial", self._masked):
            async with self._engine.connect() as conn:
                value = (await conn.execute(select(func.max(commands.c.serial)))).scalar()
        return int(value or 0)

    async def recent_commands(
        self, limit: int = 50, before: int | None = None
    ) -> list[tuple[CommandRow, dict[str, int]]]:
        """Commands newest first, each with how many of its nodes are in each state.

        Args:
            limit: At most this many.
            before: Only serials below this one (the next page).

        Raises:
            StoreError: The query failed.
        """
        self._usable("list commands")
        query = select(*_LIST_COLUMNS).order_by(commands.c.serial.desc()).limit(max(limit, 0))
        if before is not None:
            query = query.where(commands.c.serial < before)
        o = command_outcomes
        with translate("list commands", self._masked):
            async with self._engine.connect() as conn:
                rows = [_row(r) for r in (await conn.execute(query)).mappings()]
                counts: dict[int, dict[str, int]] = {r.serial: {} for r in rows}
                if rows:
                    tally = (
                        select(o.c.serial, o.c.state, func.count())
                        .where(o.c.serial.in_(list(counts)))
                        .group_by(o.c.serial, o.c.state)
                    )
                    for serial, state, n in await conn.execute(tally):
                        counts[serial][state] = n
        for r in rows:
            missing = len(set(r.nodes)) - sum(counts[r.serial].values())
            if missing > 0:
                counts[r.serial]["pending"] = counts[r.serial].get("pending", 0) + missing
        return [(r, counts[r.serial]) for r in rows]

    async def get_command(self, serial: int) -> tuple[CommandRow, list[OutcomeRow]] | None:
        """One command and every node's outcome, or ``None`` if no command has that serial.

        Raises:
            StoreError: The query failed.
        """
        self._usable("read a command")
        with translate(f"read command #{serial}", self._masked):
            async with self._engine.connect() as conn:
                query = select(*_LIST_COLUMNS).where(commands.c.serial == serial)
                row = (await conn.execute(query)).mappings().first()
                if row is None:
                    return None
                o = command_outcomes
                found = await conn.execute(
                    select(*_OUTCOME_COLUMNS).where(o.c.serial == serial).order_by(o.c.node)
                )
                outcomes = [OutcomeRow(**r) for r in found.mappings()]
        command = _row(row)
        return command, _with_pending(command, outcomes)

    async def commands_between(self, after: int, upto: int, limit: int) -> list[CommandRow]:
        """Commands with serials in ``(after, upto]``, with their bodies, oldest first, at
        most ``limit`` (a node's catch-up reads them).

        Raises:
            StoreError: The query failed.
        """
        self._usable("read commands")
        c = commands.c
        query = (
            select(commands)
            .where(c.serial > after, c.serial <= upto)
            .order_by(c.serial)
            .limit(max(limit, 0))
        )
        with translate(f"read commands {after + 1}-{upto}", self._masked):
            async with self._engine.connect() as conn:
                return [_row(r) for r in (await conn.execute(query)).mappings()]

    async def open_commands(self, since: float) -> list[tuple[CommandRow, list[OutcomeRow]]]:
        """Commands created after ``since`` with a node that has not finished, oldest first.

        The controller follows these again after a restart and re-publishes their bodies
        (the stream drops a duplicate by its message id).

        Raises:
            StoreError: The query failed.
        """
        self._usable("read open commands")
        o = command_outcomes
        with translate("read open commands", self._masked):
            async with self._engine.connect() as conn:
                # Open: fewer final outcome rows than targets (a target without a row is
                # pending). SQLite and PostgreSQL both have json_array_length.
                finished = (
                    select(func.count())
                    .where(o.c.serial == commands.c.serial, o.c.state.in_(_FINAL))
                    .scalar_subquery()
                )
                query = (
                    select(commands)
                    .where(commands.c.created > since)
                    .where(func.json_array_length(commands.c.nodes) > finished)
                    .order_by(commands.c.serial)
                )
                out = []
                for found_row in (await conn.execute(query)).mappings():
                    row = _row(found_row)
                    found = await conn.execute(
                        select(*_OUTCOME_COLUMNS).where(o.c.serial == row.serial)
                    )
                    stored = [OutcomeRow(**r) for r in found.mappings()]
                    out.append((row, _with_pending(row, stored)))
        return out
