"""The registry's group commit: node records, transitions, audit entries and commands, in one
unit of the store's writer per turn, and the replies that waited for them.

Theory of operation: the controller's handlers never wait for the disk (nats-py runs one
subscription's handler one message at a time, so waiting would serialise joins into a commit
each). They change the registry in memory, :meth:`RegistryCommits.record` its transitions,
queue their reply with :meth:`~RegistryCommits.after_commit`, and :meth:`~RegistryCommits.wake`
the loop. :meth:`~RegistryCommits.run` then takes everything changed since the last turn (dirty
node records, transitions, audit entries, the command service's batch), hands it to the store's
one writer as one unit, and only after that commit sends the replies and the node events. A
record the store refuses for its data is isolated, and its caller answered with the reason
while the rest commits; a transient failure keeps everything for the next turn, retried with
:attr:`~RegistryCommits.backoff`, and once that is past its bound, every caller still waiting
is answered with the error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from corral import bus, subjects, wire
from corral.controller.commands import Batch, CommandService
from corral.core.registry import Registry
from corral.errors import CorralError, RecordRefused, StoreError
from corral.records import AuditEntry, Transition
from corral.states import NodeStatus
from corral.store import Store
from corral.store.writer import CommittedThenCancelled
from corral.store.writes import Backoff, Written, log_written

__all__ = ["RegistryCommits"]

log = logging.getLogger("corral.controller")


def _refusals(written: Written, kind: str) -> list[tuple[Any, str]]:
    return [(r.record, r.reason) for r in written.refused if r.kind == kind]


def _refusal(what: str, which: str, why: str) -> str:
    return (
        f"the store refused the {what} {which}: {why}. Nothing else was lost; check the "
        "text you sent for NUL or other control characters and values out of range"
    )


def _describe(**counts: int) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "nothing"


class RegistryCommits:
    """What the registry and the command service changed, written in group commits.

    Args:
        registry: The node registry (its dirty records are written each turn).
        commands: The command service (its batch of commands, outcomes and keys is written
            in the same transaction, and told when it is on disk or refused).
    """

    def __init__(self, registry: Registry, commands: CommandService) -> None:
        self.registry = registry
        self.commands = commands
        #: the store and the bus, once the controller has opened them
        self.store: Store | None = None
        self.nc: bus.NATS | None = None
        #: retries of transient store failures (docs/operations.md, "Poison-proof writes")
        self.backoff = Backoff()
        #: write every live node's record at the next turn (their last-seen times)
        self.persist_all = False
        self._pending: list[Transition] = []
        self._audit: list[AuditEntry] = []
        #: (reply subject, payload, node whose record it waits for, or "")
        self._replies: list[tuple[str, bytes, str]] = []
        #: what the last failed flush held, for the log line that says what waits
        self._waiting = ""
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<RegistryCommits transitions={len(self._pending)} audit={len(self._audit)} "
            f"replies={len(self._replies)}>"
        )

    def wake(self) -> None:
        """Start a turn soon (a record was changed in place, say)."""
        self._wake.set()

    def audit(self, entry: AuditEntry) -> None:
        """Queue ``entry`` for the audit log: it is written with the next group commit."""
        self._audit.append(entry)
        self._wake.set()

    def record(self, changes: list[Transition]) -> None:
        """Log these status transitions and queue them for the next commit."""
        for change in changes:
            log.info(
                f"node {change.new.lower()}",
                extra={"node": change.node, "was": change.old or "-", "reason": change.reason},
            )
        self._pending.extend(changes)

    def after_commit(self, reply: str, payload: msgspec.Struct, node: str = "") -> None:
        """Send ``payload`` to ``reply`` once the current state is on disk (group commit).

        If ``node``'s record is refused by the store, an error is sent instead.
        """
        self._replies.append((reply, wire.encode(payload), node))
        self._wake.set()

    async def run(self) -> None:
        """Commit whatever changed, turn after turn, then send what waited on each commit
        (see the module's documentation). Runs until cancelled."""
        assert self.nc is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            replies, self._replies = self._replies, []
            changes = self._pending[:]
            batch = self.commands.take_batch()
            try:
                written = await self.flush(all_live=self.persist_all, batch=batch)
                self.persist_all = False
            except CorralError as exc:
                self._replies[:0] = replies
                await self._write_failed(exc)
                self._wake.set()
                continue
            self.backoff.succeeded()
            await self._answer(written, batch, replies, changes)

    async def _answer(
        self,
        written: Written,
        batch: Batch,
        replies: list[tuple[str, bytes, str]],
        changes: list[Transition],
    ) -> None:
        """A turn committed: refuse what the store refused, send the replies and the node
        events, and tell the command service its batch is on disk."""
        assert self.nc is not None
        refused_nodes = {r.name: why for r, why in _refusals(written, "nodes")}
        await self.commands.refuse(
            batch,
            {
                row.serial: RecordRefused(_refusal("command", f"#{row.serial}", why))
                for row, why in _refusals(written, "commands")
            },
        )
        for subject, data, node in replies:
            if node in refused_nodes:
                why = _refusal("node record", repr(node), refused_nodes[node])
                data = wire.encode(wire.ErrorReply(code="refused", error=why))
            await self.nc.publish(subject, data, headers=wire.HEADERS)
        for c in changes:
            event = wire.NodeEvent(
                node=c.node, old=c.old, new=NodeStatus(c.new), at=c.at, reason=c.reason
            )
            await self.nc.publish(
                subjects.node_events(c.node), wire.encode(event), headers=wire.HEADERS
            )
        await self.commands.committed(batch)

    async def _write_failed(self, exc: CorralError) -> None:
        """A flush failed whole (a transient failure): log what waits, back off, and once
        :attr:`backoff` is past its bound, answer who waits with the error."""
        now = time.monotonic()
        delay = self.backoff.failed(now)
        log.error(
            "store write failed (%s); waiting: %s; retry %d in %.2fs",
            exc,
            self._waiting or "nothing",
            self.backoff.failures,
            delay,
        )
        if self.backoff.expired(now):
            await self._give_up(exc)
        await asyncio.sleep(delay)

    async def _give_up(self, exc: CorralError) -> None:
        """Answer every caller still waiting on the store: joins and leaves are told to retry,
        commands not stored are dropped (never sent) and their senders told why."""
        assert self.nc is not None
        waited = self.backoff.bound
        message = (
            f"the controller could not write to its store for {waited:.0f}s ({exc}); "
            "nothing was done: retry once the store is back"
        )
        replies, self._replies = self._replies, []
        for subject, _, _ in replies:
            error = wire.ErrorReply(code="retry", error=message, retry_after=5.0)
            await self.nc.publish(subject, wire.encode(error), headers=wire.HEADERS)
        pending = self.commands.take_batch()
        await self.commands.refuse(
            pending, {row.serial: StoreError(message) for row in pending.commands}
        )
        self.commands.restore(pending)

    async def flush(self, *, all_live: bool = False, batch: Batch | None = None) -> Written:
        """Persist changed records, transitions and commands in one transaction.

        Args:
            all_live: Write every node's record, not only those changed.
            batch: The command service's batch to write with them.

        Returns:
            The records the store refused or stored repaired (each logged here).

        Raises:
            StoreError: The transaction failed whole; everything is kept for the next try.
        """
        if self.store is None:
            return Written()
        batch = batch or Batch()
        records = self.registry.all() if all_live else self.registry.take_dirty()
        if not (records or self._pending or self._audit or batch.commands or batch.outcomes):
            if batch.prune_keys_before is None:
                return Written()
        changes, self._pending = self._pending, []
        audit, self._audit = self._audit, []
        try:
            written = await self.store.commit(
                nodes=records,
                transitions=changes,
                audit=audit + batch.audit,
                commands=batch.commands,
                outcomes=batch.outcome_rows,
                idempotency=batch.keys,
                prune_keys_before=batch.prune_keys_before,
            )
        except CommittedThenCancelled:
            raise  # on disk: nothing to keep for a retry
        except BaseException:
            # Failed or cancelled mid-transaction: keep everything for the next attempt.
            self._waiting = _describe(
                nodes=len(records),
                transitions=len(changes),
                audit=len(audit) + len(batch.audit),
                commands=len(batch.commands),
                outcomes=len(batch.outcomes),
                replies=len(self._replies) + len(batch.replies) + len(batch.waiters),
            )
            self._pending[:0] = changes
            self._audit[:0] = audit
            self.registry.mark_dirty(r.name for r in records)
            self.commands.restore(batch)
            raise
        log_written(log, written)
        return written
