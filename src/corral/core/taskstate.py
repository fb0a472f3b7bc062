"""A task instance and its state machine: one enum, one transition table.

Everything that decides which status a task instance may take next lives here (h11's rule:
the state machine in one file). The scheduler calls :func:`move`; an illegal transition raises
:class:`~corral.errors.IllegalTransition` instead of silently corrupting the record.

The statuses and how an instance moves between them::

    QUEUED ──> ASSIGNED ──> RUNNING ──> COMPLETE | FAILED
      │  ^        │    │          │
      │  └────────┴────┼──────────┘ (lease lost: the node died; attempts counted, re-queued)
      │                │          │
      └──> CANCEL_REQUESTED <─────┘ ──> CANCELLED | COMPLETE | FAILED

``assigned`` is an instance given to a node (under a lease) that no worker has started yet:
it waits in a worker's pipe (prefetch). It becomes ``running``, and gets its ``started_at``,
when the node says a worker took it up.

Cancellation is a persisted state of its own, so a cancel survives restarts of the
controller and of the worker (Celery's in-memory revoke list does not).
"""

from __future__ import annotations

from typing import Any

import msgspec

from corral.errors import IllegalTransition
from corral.states import TaskStatus

__all__ = ["TERMINAL", "TRANSITIONS", "TaskInstance", "TaskStatus", "cut_log", "move"]


S = TaskStatus

#: Every legal (old, new) pair; anything else raises.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.QUEUED: frozenset({S.ASSIGNED, S.CANCEL_REQUESTED, S.FAILED}),
    S.ASSIGNED: frozenset({S.RUNNING, S.FAILED, S.QUEUED, S.CANCEL_REQUESTED}),
    S.RUNNING: frozenset({S.COMPLETE, S.FAILED, S.QUEUED, S.CANCEL_REQUESTED}),
    S.CANCEL_REQUESTED: frozenset({S.CANCELLED, S.COMPLETE, S.FAILED}),
    S.CANCELLED: frozenset(),
    S.COMPLETE: frozenset(),
    S.FAILED: frozenset(),
}

#: Statuses an instance never leaves.
TERMINAL = frozenset({S.CANCELLED, S.COMPLETE, S.FAILED})


class TaskInstance(msgspec.Struct, kw_only=True):
    """One queued call of a task, as the scheduler keeps it and the store persists it.

    Field names match the store's ``task_instances`` columns one to one.

    Attributes:
        id: Unique, increasing instance id.
        key: The task's key (``module.function`` unless the task names itself).
        args: The keyword arguments, msgpack-encoded.
        priority: Lower runs first (Pydra's default 5); FIFO within a priority.
        status: A :class:`TaskStatus` value.
        parent: The instance whose ``map`` created this one, if any.
        item: This subtask's position in its parent's ``map``.
        labels: Labels a node must carry to run it.
        node: The node holding (or that last held) the lease.
        worker: Worker slot on that node, ``-1`` until known.
        lease: The current lease; a result under another lease is stale and ignored.
        attempts: How many times it was given to a node.
        max_attempts: Give up (FAILED) after losing this many leases.
        queued_at: Epoch seconds it was queued.
        started_at: Epoch seconds a worker started the current (or last) attempt; None
            while it is ``assigned`` (waiting in a worker's pipe).
        finished_at: Epoch seconds it reached a terminal status.
        progress: Percent done, 0-100, from ``ctx.progress``.
        message: The last progress message.
        result: The return value, msgpack-encoded.
        error: Why it failed or was cancelled.
        traceback: The task's traceback when it raised.
        force: A cancel asked to kill the worker after the grace period.
        cancel_at: Epoch seconds the cancel was requested.
        history: One entry per attempt: node, worker, lease, assigned, started, ended,
            outcome, error.
        logs: The task's stdout, stderr and ``ctx.log`` lines, every attempt's, bounded
            (``task_log_limit``; the oldest text is cut, with a marker).
    """

    id: int
    key: str
    args: bytes = b"\x80"
    priority: int = 5
    status: str = TaskStatus.QUEUED.value
    parent: int | None = None
    item: int | None = None
    labels: list[str] = msgspec.field(default_factory=list)
    node: str = ""
    worker: int = -1
    lease: str = ""
    attempts: int = 0
    max_attempts: int = 3
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    progress: float = 0.0
    message: str = ""
    result: bytes | None = None
    error: str = ""
    traceback: str = ""
    force: bool = False
    cancel_at: float | None = None
    history: list[dict[str, Any]] = msgspec.field(default_factory=list)
    logs: str = ""

    def __repr__(self) -> str:
        where = f" on {self.node}/{self.worker}" if self.node else ""
        return (
            f"<TaskInstance {self.id} {self.key!r} {self.status}{where} "
            f"attempt {self.attempts}/{self.max_attempts} {self.progress:.0f}%>"
        )

    @property
    def terminal(self) -> bool:
        """True once the instance can never change again."""
        return self.status in TERMINAL


#: What replaces the oldest text of a log over its bound: ``[... N characters cut ...]``.
CUT_MARKER = "[... {} characters cut ...]\n"


def cut_log(text: str, limit: int, already_cut: int = 0) -> str:
    """Keep the newest ``limit`` characters of ``text``, after a marker saying how many went.

    Args:
        text: the log, perhaps starting with an earlier marker.
        limit: most characters to keep (besides the marker).
        already_cut: characters cut before ``text`` was put together.

    Returns:
        ``text`` unchanged if it fits, else the marker and the newest ``limit`` characters.
    """
    if limit <= 0 or len(text) <= limit and not already_cut:
        return text
    if text.startswith("[... ") and " characters cut ...]\n" in text[:60]:
        head, _, text = text.partition("\n")
        already_cut += int(head[5:].split(" ", 1)[0])
    cut = max(0, len(text) - limit)
    return CUT_MARKER.format(already_cut + cut) + text[cut:] if cut or already_cut else text


def move(instance: TaskInstance, new: TaskStatus) -> None:
    """Move ``instance`` to ``new`` if the transition table allows it.

    Args:
        instance: The instance (changed in place).
        new: The status to take.

    Raises:
        IllegalTransition: ``(instance.status, new)`` is not in :data:`TRANSITIONS`.
    """
    old = TaskStatus(instance.status)
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(
            f"task instance {instance.id} cannot go from {old} to {new}; "
            f"from {old} it may go to {sorted(TRANSITIONS[old]) or 'nothing (terminal)'}"
        )
    instance.status = new.value  # a plain str: drivers store enums by name
