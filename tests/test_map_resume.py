"""Which stored subtasks answer a map asked again (corral.core.map_resume, no I/O)."""

from __future__ import annotations

import pytest

from corral.core.map_resume import map_children
from corral.core.taskstate import TaskInstance
from corral.errors import Conflict, NotFound


def parent(*attempts: tuple[str, float]) -> TaskInstance:
    history = [
        {"attempt": n + 1, "lease": lease, "assigned": at} for n, (lease, at) in enumerate(attempts)
    ]
    return TaskInstance(id=1, key="p", history=history, lease=attempts[-1][0])


def batch(first: int, count: int, at: float) -> list[TaskInstance]:
    return [
        TaskInstance(id=first + n, key="c", parent=1, item=n, queued_at=at) for n in range(count)
    ]


def test_the_seq_th_map_of_the_attempt_is_found_in_item_order() -> None:
    p = parent(("L1", 10.0))
    stored = batch(5, 3, 11.0) + batch(20, 2, 12.0)
    found = map_children(p, "L1", 2, 2, list(reversed(stored)))
    assert found is not None and [c.id for c in found] == [20, 21]
    first = map_children(p, "L1", 1, 3, stored)
    assert first is not None and [c.item for c in first] == [0, 1, 2]


def test_a_map_never_queued_is_none() -> None:
    p = parent(("L1", 10.0))
    assert map_children(p, "L1", 1, 3, []) is None
    assert map_children(p, "L1", 2, 3, batch(5, 3, 11.0)) is None


def test_an_earlier_attempts_children_are_not_this_attempts() -> None:
    p = parent(("L1", 10.0), ("L2", 50.0))
    old = batch(5, 3, 11.0)  # the first attempt's map, queued before it was lost
    assert map_children(p, "L2", 1, 3, old) is None
    new = batch(40, 3, 51.0)
    found = map_children(p, "L2", 1, 3, old + new)
    assert found is not None and [c.id for c in found] == [40, 41, 42]
    again = map_children(p, "L1", 1, 3, old + new)  # (asked under the old lease)
    assert again is not None and [c.id for c in again] == [5, 6, 7]


def test_an_unknown_lease_or_another_item_count_is_refused_with_the_reason() -> None:
    p = parent(("L1", 10.0))
    with pytest.raises(NotFound, match="never ran under lease L9"):
        map_children(p, "L9", 1, 3, batch(5, 3, 11.0))
    with pytest.raises(Conflict, match="3 item"):
        map_children(p, "L1", 1, 3, batch(5, 2, 11.0))
    with pytest.raises(Conflict, match="2 item"):
        map_children(p, "L1", 1, 2, batch(5, 3, 11.0))
