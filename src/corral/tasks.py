"""Tasks: plain Python functions that node workers run (Pydra's tasks).

Mark a function with :func:`task` in a module, and start nodes that load it::

    # mytasks.py
    from corral.tasks import task, TaskContext

    @task
    def resize(path: str, width: int = 640) -> str:
        ...

    @task(key="Crunch")
    async def crunch(ctx: TaskContext, n: int) -> int:
        total = 0
        for i in range(n):
            ctx.check_stop()                 # raises TaskStopped once a cancel asks
            ctx.progress(i + 1, n, "crunching")
            total += i
        return total

    $ corral node --name n1 --tasks mytasks

A task takes keyword arguments and returns a value, both msgpack-able data (dicts, lists,
strings, numbers, bytes, None). A parameter named ``ctx`` receives the :class:`TaskContext`;
:func:`current` returns it from anywhere in the task's call stack.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import msgspec

from corral.errors import NotSerializable, TaskFailed, TaskStopped, UsageError

__all__ = [
    "REGISTRY",
    "TaskContext",
    "TaskDef",
    "TaskFailed",
    "TaskStopped",
    "current",
    "task",
]

log = logging.getLogger("corral.task")
_encode = msgspec.msgpack.Encoder().encode

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskDef:
    """A registered task: its key and function, and how to call it."""

    key: str
    fn: Callable[..., Any]
    is_async: bool
    wants_ctx: bool
    toplevel: bool = True


#: Every task defined in this process, by key.
REGISTRY: dict[str, TaskDef] = {}


@overload
def task(fn: F, /) -> F: ...
@overload
def task(*, key: str | None = None, toplevel: bool = True) -> Callable[[F], F]: ...
def task(
    fn: F | None = None, /, *, key: str | None = None, toplevel: bool = True
) -> F | Callable[[F], F]:
    """Register a function (sync or async) as a task; it stays callable as before.

    Args:
        fn: The function (when used as ``@task`` without arguments).
        key: The task's key; defaults to ``module.function``.
        toplevel: False for a subtask (run through another task's ``map``), which
            ``list_tasks(toplevel=True)`` leaves out.

    Returns:
        The function itself, or a decorator when called with ``key``.

    Raises:
        UsageError: another function already holds that key in this process.
    """

    def register(f: F) -> F:
        name = key or f"{f.__module__}.{f.__qualname__}"
        existing = REGISTRY.get(name)
        if existing is not None and existing.fn.__qualname__ != f.__qualname__:
            raise UsageError(
                f"task key {name!r} is already taken by {existing.fn.__module__}."
                f"{existing.fn.__qualname__}; give one of them another key=..."
            )
        params = inspect.signature(f).parameters
        REGISTRY[name] = TaskDef(
            key=name,
            fn=f,
            is_async=inspect.iscoroutinefunction(f),
            wants_ctx="ctx" in params,
            toplevel=toplevel,
        )
        f.__corral_task__ = name  # type: ignore[attr-defined]
        return f

    if fn is not None:
        return register(fn)
    return register


#: the context of the task running in this worker (set by the worker around each run)
CONTEXT: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("corral_task")


def current() -> TaskContext:
    """The context of the task running in this worker.

    Raises:
        UsageError: called outside a task.
    """
    try:
        return CONTEXT.get()
    except LookupError:
        raise UsageError("corral.tasks.current() called outside a running task") from None


class TaskContext:
    """What a running task can see and say: progress, the stop flag, a log.

    Args:
        id: The task instance id.
        key: The task key.
        attempt: Which attempt this is (2 after a lost worker).
        emit: Sends a frame to the node (set by the worker process).
        lease: The lease this run holds.
        mapper: Runs a map through the node and the controller (set by the worker process).
    """

    def __init__(
        self,
        id: int,
        key: str,
        attempt: int = 1,
        emit: Callable[[list[Any]], None] | None = None,
        lease: str = "",
        mapper: Callable[[TaskContext, str, list[bytes]], list[Any]] | None = None,
    ) -> None:
        self.id = id
        self.key = key
        self.attempt = attempt
        self.lease = lease
        #: where ``log`` lines go besides the node's log: the instance's kept logs (set by
        #: the worker process)
        self.sink: Callable[[str], object] | None = None
        self._emit = emit or (lambda frame: None)
        self._mapper = mapper
        self._stop = threading.Event()

    def __repr__(self) -> str:
        flag = " stop-requested" if self.stop_requested else ""
        return f"<TaskContext {self.id} {self.key!r} attempt={self.attempt}{flag}>"

    def progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress: ``done`` of ``total``, or ``done`` percent when no total.

        Args:
            done: Work done so far.
            total: The whole of the work; ``None`` means ``done`` is a percentage.
            message: What the task is doing now (shown by ``corral running``).
        """
        percent = done * 100.0 / total if total else float(done)
        self._emit(["progress", self.lease, max(0.0, min(100.0, percent)), str(message)])

    @property
    def stop_requested(self) -> bool:
        """True once a cancel asked this task to stop (Pydra's STOP_FLAG)."""
        return self._stop.is_set()

    def check_stop(self) -> None:
        """Return at once, or raise :class:`TaskStopped` if a stop was requested.

        Raises:
            TaskStopped: a cancel asked this task to stop; let it propagate.
        """
        if self._stop.is_set():
            raise TaskStopped(f"task {self.id} ({self.key}) was asked to stop")

    def request_stop(self) -> None:
        """Set the stop flag (the worker does this when a cancel arrives)."""
        self._stop.set()

    def log(self, message: str, *args: object, level: int = logging.INFO) -> None:
        """Log a line with the task's id and key, into the node's log.

        Args:
            message: A %-format string.
            args: Its arguments.
            level: A ``logging`` level.
        """
        log.log(level, message, *args, extra={"task": self.key, "instance": self.id})
        if self.sink is not None:
            self.sink((message % args if args else str(message)) + "\n")

    def map(self, subtask: str | Callable[..., Any], items: Iterable[dict[str, Any]]) -> list[Any]:
        """Run ``subtask`` once per item (its keyword arguments) on free workers of any node.

        Blocks until every item has finished; the worker slot of this task is lent to the
        subtasks meanwhile, so a map never waits for its own slot. Results come back in item
        order. The first failed item fails the map (the others are cancelled); catch
        :class:`TaskFailed` to carry on without it.

        Args:
            subtask: A task key, or a function decorated with :func:`task`.
            items: One mapping of keyword arguments per item.

        Returns:
            The subtasks' results, in the order of ``items``.

        Raises:
            NotSerializable: an item is not msgpack-able data (nothing is queued).
            TaskFailed: an item failed; the message names it and its error.
            TaskStopped: this task was asked to stop while waiting.
            UsageError: called outside a worker process.
        """
        key = subtask if isinstance(subtask, str) else getattr(subtask, "__corral_task__", "")
        if not key:
            raise UsageError(f"{subtask!r} is not a task: decorate it with @task")
        encoded = []
        for n, item in enumerate(items):
            try:
                encoded.append(_encode(dict(item)))
            except (TypeError, ValueError, OverflowError) as exc:
                raise NotSerializable(f"map item {n} is not msgpack-able data: {exc}") from None
        if not encoded:
            return []
        if self._mapper is None:
            raise UsageError("ctx.map() works only inside a task run by a node worker")
        return self._mapper(self, key, encoded)
