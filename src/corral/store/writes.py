"""Poison-proof writes: isolate the records the database refuses, retry only what may pass.

Theory of operation: a writer first commits its batch as one transaction (the fast path). If
that fails because of the data (see :func:`~corral.store._errors.is_transient`), the batch is
written again in a new transaction, in savepoints: a group that fails is rolled back to its
savepoint and split in halves, until each failing record stands alone. A lone failing record
is given its kind's *repairs* in turn (text escaped, then a smaller version of the record);
the first version the database takes is written, and a record none of whose versions pass is
*refused*. Everything else commits at once, in that one transaction: either the good records
and the repaired ones are all on disk, or (a transient failure meanwhile) nothing is and the
whole batch is retried. :class:`Isolation` holds these decisions, without I/O;
:func:`isolate` drives it on the connection of the store's one writer (:mod:`corral.store.writer`),
inside the savepoint that writer gives each unit of its group commit.

Transient failures are retried by the callers' loops with :class:`Backoff`: growing delays,
and after ``bound`` seconds the callers still waiting are answered with an error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.dml import Insert

from ._errors import WRITE_FAILURES, is_transient, reason

__all__ = ["Backoff", "Isolation", "Refusal", "Written", "isolate", "log_written", "upsert"]

U = TypeVar("U")


@functools.cache
def upsert(dialect: str, table: Table, *keys: str) -> Insert:
    """``INSERT … ON CONFLICT (keys) DO UPDATE`` setting every other column, built once per
    dialect and table (it is on the path of every flush and keyed submission).

    Args:
        dialect: ``"sqlite"`` or ``"postgresql"``.
        table: The table.
        keys: Its primary key columns.
    """
    stmt = sqlite_insert(table) if dialect == "sqlite" else pg_insert(table)
    changes = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=changes)


@dataclass(frozen=True)
class Refusal:
    """A record the store refused, or stored only once repaired.

    Attributes:
        kind: The kind of record (``"nodes"``, ``"commands"``, ``"task_instances"``...).
        record: The record as the writer was given it.
        reason: What the database said about it.
        stored: The version that was written instead (``None``: nothing was written).
    """

    kind: str
    record: Any
    reason: str
    stored: Any = None


@dataclass
class Written:
    """What a poison-proof commit did besides writing the batch as given.

    Attributes:
        refused: Records not written at all.
        repaired: Records written in a repaired version (their NUL escaped...).
    """

    refused: list[Refusal] = field(default_factory=list)
    repaired: list[Refusal] = field(default_factory=list)

    def refused_of(self, kind: str) -> list[Any]:
        """The refused records of one kind.

        Args:
            kind: The kind, as given to :class:`Isolation`.

        Returns:
            Those records, as the writer was given them.
        """
        return [r.record for r in self.refused if r.kind == kind]


@dataclass
class _Item(Generic[U]):
    index: int
    unit: U
    level: int = 0
    first: str = ""


class Isolation(Generic[U]):
    """Which group of units to try next, and what became of each (no I/O).

    Call :meth:`next` for a group, write it in a savepoint, and report :meth:`ok` or
    :meth:`failed`; repeat until :meth:`next` returns ``None``.

    Args:
        units: What to write, in order.
        repair: ``repair(unit, level, reason)``: the version of a lone failing unit to try
            after ``level`` repairs (from 0), or ``None`` to refuse it.
    """

    def __init__(self, units: Sequence[U], repair: Callable[[U, int, str], U | None]) -> None:
        self.units = list(units)
        self._repair = repair
        self._stack: list[list[_Item[U]]] = []
        if units:
            self._stack.append([_Item(i, u) for i, u in enumerate(units)])
        self._current: list[_Item[U]] = []
        #: index of the original unit -> the version written, for repaired units
        self.repaired: dict[int, tuple[U, str]] = {}
        #: index of the original unit -> why it was refused
        self.refused: dict[int, str] = {}
        self.attempts = 0

    def next(self) -> list[U] | None:
        """The next group to write, or ``None`` once every unit is written or refused."""
        if not self._stack:
            return None
        self._current = self._stack.pop()
        self.attempts += 1
        return [item.unit for item in self._current]

    def ok(self) -> None:
        """The last group was written."""
        for item in self._current:
            if item.level:
                self.repaired[item.index] = (item.unit, item.first)
        self._current = []

    def failed(self, why: str) -> None:
        """The last group failed because of its data: split it, or repair or refuse a lone unit.

        Args:
            why: The database's words.
        """
        group, self._current = self._current, []
        if len(group) > 1:
            half = len(group) // 2
            self._stack.append(group[half:])
            self._stack.append(group[:half])
            return
        (item,) = group
        first = item.first or why
        fixed = self._repair(self.units[item.index], item.level, first)
        if fixed is None:
            self.refused[item.index] = first
        else:
            self._stack.append([_Item(item.index, fixed, item.level + 1, first)])

    def result(
        self, kind_of: Callable[[U], str], record_of: Callable[[U], Any] = lambda u: u
    ) -> Written:
        """What was repaired and refused, as :class:`Refusal` records.

        Args:
            kind_of: The kind of a unit.
            record_of: The record a unit stands for (the unit itself by default).

        Returns:
            The refusals and repairs, in the order of the units.
        """
        out = Written()
        for index, why in sorted(self.refused.items()):
            unit = self.units[index]
            out.refused.append(Refusal(kind_of(unit), record_of(unit), why))
        for index, (stored, why) in sorted(self.repaired.items(), key=lambda kv: kv[0]):
            unit = self.units[index]
            out.repaired.append(Refusal(kind_of(unit), record_of(unit), why, record_of(stored)))
        return out


def isolate(
    conn: Connection,
    plan: Isolation[U],
    write: Callable[[Connection, list[U]], None],
) -> None:
    """Drive ``plan`` on ``conn`` (in a transaction), each group in a savepoint.

    Runs in the store's writer thread (:mod:`corral.store.writer`), on its connection.

    Args:
        conn: A connection inside a transaction.
        plan: The isolation to carry out.
        write: Writes a group of units on the connection.

    Raises:
        Exception: A transient failure (the caller's transaction is then rolled back).
    """
    while (group := plan.next()) is not None:
        try:
            with conn.begin_nested():
                write(conn, group)
        except WRITE_FAILURES as exc:
            if is_transient(exc):
                raise
            plan.failed(reason(exc))
        else:
            plan.ok()


@dataclass
class Backoff:
    """Delays between retries of a transient failure, and when waiting callers give up.

    Args:
        first: The first delay, in seconds.
        cap: The longest delay.
        bound: Seconds of failing after which callers still waiting are answered with an
            error (the records themselves are kept and retried).
    """

    first: float = 0.05
    cap: float = 5.0
    bound: float = 30.0
    failures: int = 0
    since: float | None = None

    def failed(self, now: float) -> float:
        """Count a failure at ``now``.

        Args:
            now: The current time.

        Returns:
            The seconds to wait before the next attempt.
        """
        if self.since is None:
            self.since = now
        delay = min(self.cap, self.first * 2.0**self.failures)
        self.failures += 1
        return delay

    def expired(self, now: float) -> bool:
        """Whether writes have failed for ``bound`` seconds or more.

        Args:
            now: The current time.
        """
        return self.since is not None and now - self.since >= self.bound

    def succeeded(self) -> None:
        """A write went through: start over."""
        self.failures = 0
        self.since = None


def log_written(logger: logging.Logger, written: Written) -> None:
    """Log each record a commit refused (error) or stored repaired (warning).

    Args:
        logger: Where to log.
        written: What the commit returned.
    """
    for r in written.repaired:
        logger.warning(
            "%s record stored repaired (text escaped or dropped): %s",
            r.kind,
            r.reason,
            extra={"record": repr(r.record)[:300]},
        )
    for r in written.refused:
        logger.error(
            "%s record refused by the store: %s",
            r.kind,
            r.reason,
            extra={"record": repr(r.record)[:300]},
        )
