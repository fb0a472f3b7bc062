"""Tasks for the tests: no-op, echo, slow with progress, raising, stubborn, map."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from corral.tasks import TaskContext, task


@task(key="noop")
def noop() -> None:
    """Do nothing (the benchmark's task)."""


@task(key="echo")
def echo(value: object = None, ctx: TaskContext | None = None) -> dict[str, object]:
    """Return the value, the worker's pid and which attempt this is."""
    assert ctx is not None
    return {"value": value, "pid": os.getpid(), "attempt": ctx.attempt}


@task(key="add")
async def add(a: int, b: int) -> int:
    """An async task."""
    return a + b


@task(key="boom")
def boom(message: str = "kaboom") -> None:
    """Raise."""
    raise ValueError(message)


@task(key="wait_for_file")
def wait_for_file(path: str, ctx: TaskContext, started: str = "") -> str:
    """Say it started (touch ``started``), then poll for ``path``, honouring the stop flag."""
    if started:
        Path(started).write_text(str(os.getpid()))
    while not Path(path).exists():
        ctx.check_stop()
        ctx.progress(50, None, "waiting")
        time.sleep(0.01)
    return Path(path).read_text()


@task(key="stubborn")
def stubborn(started: str) -> None:
    """Ignore the stop flag forever (only a forced cancel ends it)."""
    Path(started).write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


@task(key="square", toplevel=False)
def square(x: int) -> int:
    """A subtask: x squared; 13 is unlucky."""
    if x == 13:
        raise ValueError("13 is unlucky")
    return x * x


@task(key="squares")
def squares(n: int, ctx: TaskContext) -> list[int]:
    """Map the subtask ``square`` over 0..n-1."""
    return ctx.map(square, [{"x": x} for x in range(n)])


@task(key="squares_or_none")
def squares_or_none(n: int, ctx: TaskContext) -> object:
    """Map, and survive a failed item by catching the error."""
    from corral.tasks import TaskFailed

    try:
        return ctx.map("square", [{"x": x} for x in range(n)])
    except TaskFailed as exc:
        return f"caught: {exc}"


@task(key="slow_square", toplevel=False)
def slow_square(x: int, gate: str) -> int:
    """A subtask that waits for a file."""
    while not Path(gate).exists():
        time.sleep(0.01)
    return x * x


@task(key="slow_squares")
def slow_squares(n: int, gate: str, ctx: TaskContext) -> list[int]:
    """Map ``slow_square``: cancel me while I wait."""
    return ctx.map("slow_square", [{"x": x, "gate": gate} for x in range(n)])


@task(key="gated_square", toplevel=False)
def gated_square(x: int, gates: str) -> int:
    """A subtask that leaves a mark of each run (``ran-<x>-<pid>``), then waits for the
    file ``<gates>/<x>``."""
    folder = Path(gates)
    (folder / f"ran-{x}-{os.getpid()}-{time.monotonic_ns()}").touch()
    while not (folder / str(x)).exists():
        time.sleep(0.01)
    return x * x


@task(key="gated_squares")
def gated_squares(n: int, gates: str, ctx: TaskContext) -> list[int]:
    """Map ``gated_square`` over 0..n-1 (each item released by its own file)."""
    return ctx.map("gated_square", [{"x": x, "gates": gates} for x in range(n)])


@task(key="chatty")
def chatty(lines: int, ctx: TaskContext, width: int = 10) -> int:
    """Print ``lines`` lines to stdout, one to stderr, and log each step (issue #17: logs)."""
    for i in range(lines):
        print(f"out {i} " + "x" * width)
        ctx.log("step %d of %d", i, lines)
    print("to stderr", file=sys.stderr)
    return lines
