"""Finished task instances on their way to disk, and who waits for them (no I/O).

Theory of operation: a result a node reports may be answered before the commit that stores
it, once the store has the lease it ran under. The run's first commit carries the lease (a
queue call makes that commit at once, while the run travels), and the node keeps its result
until the commit that stores it is acknowledged, re-sending it to a restarted controller,
which then knows the lease. So an answered result is lost only if the controller and that
node both die within the commit. :class:`Results` keeps the facts that decide it:

- the lease of each unfinished instance as the store has it (loaded at start, then from each
  commit's rows);
- the lease of each result reported, until its final state is on disk;
- the leases the commit under way writes (a result that came under one of them is answered
  when that commit ends);
- the finished instances not on disk yet (:attr:`Results.settling`), and the waiters.

Every other end (a cancel, a failure the controller decides) is answered after its commit:
it exists nowhere else. :class:`~corral.controller.tasks.TaskService` calls in what happens
(:meth:`~Results.loaded`, :meth:`~Results.reported`, :meth:`~Results.finished`,
:meth:`~Results.writing`, :meth:`~Results.stored`) and asks :meth:`~Results.wait_for`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from corral.core.taskstate import TaskInstance

__all__ = ["Results"]


class Results:
    """The finished instances not on disk yet, what may be answered before their commit,
    and who waits."""

    def __init__(self) -> None:
        #: finished instances whose final state is not on disk yet
        self.settling: dict[int, TaskInstance] = {}
        #: each unfinished instance's lease as the store has it
        self._stored_lease: dict[int, str] = {}
        #: of ``settling``, the instances a node's result ended, with that result's lease
        self._reported: dict[int, str] = {}
        #: the leases the commit under way writes, by instance id
        self._writing: dict[int, str] = {}
        #: of ``settling``, the ones answered before their commit (their lease is stored)
        self._held: set[int] = set()
        self._waiters: dict[int, list[asyncio.Future[TaskInstance]]] = {}

    def __repr__(self) -> str:
        return f"<Results settling={len(self.settling)} held={len(self._held)}>"

    def loaded(self, active: Iterable[TaskInstance]) -> None:
        """The unfinished instances read from the store at start (their leases are on disk)."""
        self._stored_lease = {i.id: i.lease for i in active if i.lease}

    def reported(self, ident: int, lease: str) -> None:
        """A node's result under ``lease`` ended instance ``ident`` (it is finishing now)."""
        self._reported[ident] = lease
        if self._stored_lease.get(ident) == lease:
            self._held.add(ident)

    def finished(self, insts: Iterable[TaskInstance]) -> bool:
        """Instances ended (their final states go in a coming commit): answer who waits on
        a held result. Returns whether one of them must be committed at once (someone waits
        on it, or may: every end but a result answered before its commit)."""
        urgent = False
        for inst in insts:
            self.settling[inst.id] = inst
            if inst.id in self._held:
                self._answer(inst)
            elif self._reported.get(inst.id, "") != self._writing.get(inst.id):
                urgent = True  # not answered when the commit under way ends either
        return urgent

    def writing(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """A commit of ``rows`` begins (:meth:`written` when it ended, however)."""
        self._writing = {r["id"]: r["lease"] for r in rows if r["lease"]}

    def written(self) -> None:
        """The commit under way ended (committed or not)."""
        self._writing = {}

    def stored(
        self,
        rows: Iterable[Mapping[str, Any]],
        finished: Iterable[TaskInstance],
        refused: Mapping[int, BaseException],
    ) -> None:
        """A commit put ``rows`` on disk (but those ``refused``), ``finished``'s final states
        among them: a result that came under a lease just stored is answered, and so is who
        still waits on a final state now on disk (with the refusal, if refused)."""
        for row in rows:
            ident, lease = row["id"], row["lease"]
            if lease and ident not in refused:
                self._stored_lease[ident] = lease
                if self._reported.get(ident) == lease and ident not in self._held:
                    self._held.add(ident)
                    self._answer(self.settling[ident])
        for inst in finished:
            self.settling.pop(inst.id, None)
            self._stored_lease.pop(inst.id, None)
            self._reported.pop(inst.id, None)
            self._held.discard(inst.id)
            self._answer(inst, refused.get(inst.id))

    def answered(self, ident: int) -> TaskInstance | None:
        """Instance ``ident`` if it finished and may be answered now (before its commit)."""
        return self.settling[ident] if ident in self._held else None

    def wait_for(self, ident: int) -> asyncio.Future[TaskInstance]:
        """A future of instance ``ident`` once it may be answered (unfinished, or finished
        and not answerable before its commit); :meth:`forget` it when giving up."""
        fut: asyncio.Future[TaskInstance] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(ident, []).append(fut)
        return fut

    def forget(self, futures: Mapping[int, asyncio.Future[TaskInstance]]) -> None:
        """Withdraw (and cancel) futures of :meth:`wait_for`."""
        for ident, fut in futures.items():
            waiters = self._waiters.get(ident, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(ident, None)
            fut.cancel()

    def _answer(self, inst: TaskInstance, refused: BaseException | None = None) -> None:
        for waiter in self._waiters.pop(inst.id, ()):
            if waiter.done():
                continue
            if refused is None:
                waiter.set_result(inst)
            else:
                waiter.set_exception(refused)
