"""When a finished task instance may be answered: before its final commit only for a node's
result under a lease the store has (corral.controller.results, no bus, no store)."""

from __future__ import annotations

from corral.controller.results import Results
from corral.core.taskstate import TaskInstance
from corral.errors import RecordRefused


def inst(ident: int, lease: str, status: str = "complete") -> TaskInstance:
    return TaskInstance(id=ident, key="k", lease=lease, status=status)


def row(ident: int, lease: str, status: str = "assigned") -> dict[str, object]:
    return {"id": ident, "lease": lease, "status": status}


async def test_a_result_under_a_stored_lease_is_answered_before_its_commit() -> None:
    r = Results()
    r.loaded([inst(1, "L1", "running")])
    waiting = r.wait_for(1)
    r.reported(1, "L1")
    assert r.finished([inst(1, "L1")]) is False  # no commit of its own needed
    assert waiting.done() and waiting.result().id == 1
    assert r.answered(1) is not None  # a later wait is answered at once too
    r.stored([row(1, "L1", "complete")], [inst(1, "L1")], {})
    assert r.answered(1) is None and not r.settling


async def test_a_result_during_the_commit_of_its_lease_is_answered_when_that_commit_ends() -> None:
    r = Results()
    waiting = r.wait_for(2)
    r.writing([row(2, "L2")])  # the run's first commit, under way
    r.reported(2, "L2")
    assert r.finished([inst(2, "L2")]) is False  # its answer comes with that commit
    assert not waiting.done()
    r.written()
    r.stored([row(2, "L2")], [], {})
    assert waiting.done() and waiting.result().id == 2


async def test_a_result_under_a_lease_not_stored_waits_for_its_final_commit() -> None:
    r = Results()
    waiting = r.wait_for(3)
    r.reported(3, "L3")
    assert r.finished([inst(3, "L3")]) is True  # someone waits on this commit
    assert not waiting.done()
    r.stored([row(3, "L3", "complete")], [inst(3, "L3")], {})
    assert waiting.done() and waiting.result().id == 3


async def test_other_ends_are_answered_after_their_commit_and_refusals_are_told() -> None:
    r = Results()
    r.loaded([inst(4, "L4", "running"), inst(5, "L5", "running")])
    cancelled, refused = r.wait_for(4), r.wait_for(5)
    # a cancel decided here (no node's result): the store is the only other copy
    assert r.finished([inst(4, "L4", "cancelled")]) is True and not cancelled.done()
    r.stored([row(4, "L4", "cancelled")], [inst(4, "L4", "cancelled")], {})
    assert cancelled.result().status == "cancelled"
    r.reported(5, "L5-old")  # a result under another (stale) lease is not held
    assert r.finished([inst(5, "L5")]) is True
    why = RecordRefused("refused: a NUL")
    r.stored([row(5, "L5", "complete")], [inst(5, "L5")], {5: why})
    assert refused.exception() is why


async def test_forgotten_waiters_are_cancelled_and_dropped() -> None:
    r = Results()
    fut = r.wait_for(6)
    r.forget({6: fut})
    assert fut.cancelled()
    r.stored([], [inst(6, "L6")], {})  # nothing left to answer: no error
