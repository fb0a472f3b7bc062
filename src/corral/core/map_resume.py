"""Which stored subtasks a map asked again answers: maps across a controller restart or takeover.

A map lives in the leader's memory (:mod:`corral.controller.task_maps`); its children are on
disk (``parent``, ``item``). The parent's node asks for its map again until the answer comes,
naming it by the parent's lease and the map's number in that run (``seq``: 1, 2 ...). A
controller that does not have the map in memory finds its children here, from the parent's
stored children alone:

- one map's children are queued in one batch, so their ids are consecutive, items 0..n-1;
- the attempt under ``lease`` began when it was assigned (its history entry): the children
  its maps queued were queued at or after that (those of earlier attempts before it ended);
- the attempt's ``seq``-th batch (by id) is the map asked for. Fewer batches than ``seq``:
  that map was never queued (the controller failed before it was on disk), so it is queued now.

This assumes that the controllers' clocks agree better than the time between an attempt's
end and the next one's start (a lost node is DOWN only after ``down_after``).
"""

from __future__ import annotations

from collections.abc import Sequence

from corral.core.taskstate import TaskInstance
from corral.errors import Conflict, NotFound

__all__ = ["map_children"]


def map_children(
    parent: TaskInstance, lease: str, seq: int, count: int, children: Sequence[TaskInstance]
) -> list[TaskInstance] | None:
    """The children map ``seq`` of ``parent``'s attempt under ``lease`` queued, by item.

    Args:
        parent: The mapping instance (its history names the attempt's lease).
        lease: The attempt's lease.
        seq: The map's number in that attempt, from 1.
        count: How many items the map has.
        children: Every stored child of ``parent``, any order.

    Returns:
        The ``count`` children in item order, or ``None`` when that map was never queued.

    Raises:
        NotFound: no attempt of ``parent`` ran under ``lease``.
        Conflict: the stored children do not fit the map asked for (another item count).
    """
    attempt = next((h for h in reversed(parent.history) if h.get("lease") == lease), None)
    if attempt is None:
        raise NotFound(f"task {parent.id} never ran under lease {lease}")
    since = float(attempt.get("assigned", 0.0))
    ordered = sorted(children, key=lambda c: c.id)
    firsts = [c for c in ordered if c.item == 0 and c.queued_at >= since]
    if len(firsts) < seq:
        return None
    first = firsts[seq - 1].id
    by_id = {c.id: c for c in ordered}
    found = [by_id.get(first + n) for n in range(count)]
    after = by_id.get(first + count)  # the next map's first child, if any
    if any(c is None or c.item != n for n, c in enumerate(found)) or (
        after is not None and after.item != 0
    ):
        raise Conflict(
            f"map {seq} of task {parent.id} (lease {lease}) has other subtasks stored than "
            f"the {count} item(s) asked for, from task {first}: it cannot be resumed"
        )
    return [c for c in found if c is not None]
