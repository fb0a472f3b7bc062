"""A worker process: imports task modules, runs one task at a time, talks to its node on pipes.

Theory of operation: the node starts ``python -m corral.node.worker_main MODULE...``. Frames
(a 4-byte big-endian length, then a msgpack array) arrive on stdin and leave on the original
stdout; the task's own ``print`` goes to stderr, i.e. the node's log, so it cannot corrupt the
protocol. A reader thread takes frames off stdin: runs go to a queue that the main thread
works through in order; a stop sets the flag of the task it names (or marks a task still
waiting in the queue, which is then never started). Being a process of its own is what lets a
forced cancel kill a task that ignores its stop flag. While a task runs, what it prints (stdout
and stderr) and its ``ctx.log`` lines are also kept, the newest ``CORRAL_TASK_LOG_LIMIT``
characters of them, and sent with its result.

Frames in: ``["run", lease, id, key, args, attempt]``, ``["stop", lease]``,
``["mapped", lease, ok, results, error, seq]``.
Frames out: ``["ready", keys, pid, subtask keys, signatures]``,
``["progress", lease, percent, message]``, ``["map", lease, key, args, seq]`` (``seq``: the
map's number in its run, from 1),
``["done", lease, outcome, result, error, traceback, logs]``, ``["error", message]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import logging
import os
import queue
import struct
import sys
import threading
import time
import traceback
from typing import Any

import msgspec

from corral import loops
from corral.core.signatures import describe
from corral.core.taskstate import cut_log
from corral.errors import TaskFailed, TaskStopped
from corral.states import TaskOutcome
from corral.tasks import CONTEXT, REGISTRY, TaskContext, TaskDef

__all__ = ["main", "read_frame", "frame"]

_HEADER = struct.Struct(">I")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def frame(message: list[Any]) -> bytes:
    """Length-prefixed msgpack of ``message``."""
    body = _encode(message)
    return _HEADER.pack(len(body)) + body


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> list[Any] | None:
    """The next frame from ``fd``, or ``None`` at end of file."""
    header = _read_exactly(fd, 4)
    if header is None:
        return None
    body = _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if body is None else list(_decode(body))


class _Out:
    """Writes whole frames to the node, from any thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def __call__(self, message: list[Any]) -> None:
        data = memoryview(frame(message))
        with self.lock:
            while data:
                data = data[os.write(self.fd, data) :]


def _run(task: TaskDef, ctx: TaskContext, args: bytes, loop: asyncio.AbstractEventLoop) -> Any:
    kwargs = _decode(args)
    if not isinstance(kwargs, dict):
        raise TypeError(f"task arguments must be a mapping of names to values, got {kwargs!r}")
    if task.wants_ctx:
        kwargs["ctx"] = ctx
    token = CONTEXT.set(ctx)
    try:
        if task.is_async:
            return loop.run_until_complete(task.fn(**kwargs))
        return task.fn(**kwargs)
    finally:
        CONTEXT.reset(token)


def _execute(
    run: list[Any], send: _Out, loop: asyncio.AbstractEventLoop, ctx: TaskContext
) -> list[Any]:
    _, lease, _ident, key, args, _attempt = run
    task = REGISTRY.get(key)
    if task is None:
        error = f"this worker has no task {key!r} (it has: {', '.join(sorted(REGISTRY))})"
        return ["done", lease, TaskOutcome.FAILED, None, error, ""]
    try:
        value = _run(task, ctx, args, loop)
    except TaskStopped as exc:
        return ["done", lease, TaskOutcome.STOPPED, None, str(exc), ""]
    except Exception as exc:
        if ctx.stop_requested and isinstance(exc, KeyboardInterrupt | SystemExit):
            return ["done", lease, TaskOutcome.STOPPED, None, str(exc), ""]
        return [
            "done",
            lease,
            TaskOutcome.FAILED,
            None,
            f"{type(exc).__name__}: {exc}",
            traceback.format_exc(),
        ]
    try:
        result = _encode(value)
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        error = f"result of type {type(value).__name__} is not msgpack-able data: {exc}"
        return ["done", lease, TaskOutcome.FAILED, None, error, ""]
    return ["done", lease, TaskOutcome.COMPLETE, result, "", ""]


class _Capture(io.TextIOBase):
    """A task's stdout and stderr: written through to the node's log, the newest ``limit``
    characters kept for the instance."""

    def __init__(self, through: Any, limit: int) -> None:
        self.through = through
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.cut = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        """Write ``text`` to the node's log and keep it."""
        with contextlib.suppress(Exception):
            self.through.write(text)
        with self.lock:
            self.parts.append(text)
            self.size += len(text)
            if self.size > 2 * self.limit > 0:  # compact: keep the newest ``limit``
                whole = "".join(self.parts)
                self.cut += len(whole) - self.limit
                self.parts, self.size = [whole[-self.limit :]], self.limit
        return len(text)

    def flush(self) -> None:
        """Flush the node's log."""
        with contextlib.suppress(Exception):
            self.through.flush()

    def text(self) -> str:
        """What was kept, with a marker first if older text was cut."""
        with self.lock:
            return cut_log("".join(self.parts), self.limit, self.cut)


def _log_limit() -> int:
    try:
        return int(os.environ.get("CORRAL_TASK_LOG_LIMIT", "65536"))
    except ValueError:
        return 65536


class _Serve:
    """The worker's state: the run queue, the stop marks, the task running now."""

    def __init__(self, send: _Out) -> None:
        self.send = send
        self.runs: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self.mapped: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        self.stopped: set[str] = set()
        self.current: TaskContext | None = None
        #: maps the current run has made
        self.maps = 0

    def reader(self) -> None:
        """Take frames off stdin (a thread of its own, so stops arrive while a task runs)."""
        while (message := read_frame(0)) is not None:
            kind = message[0]
            if kind == "run":
                self.runs.put(message)
            elif kind == "mapped":
                self.mapped.put(message)
            elif kind == "stop":
                self.stopped.add(message[1])
                ctx = self.current
                if ctx is not None and ctx.lease == message[1]:
                    ctx.request_stop()
        self.runs.put(None)

    def mapper(self, ctx: TaskContext, key: str, args: list[bytes]) -> list[Any]:
        """Ask the node to run a map, and wait for its results (or a stop)."""
        self.maps += 1
        seq = self.maps
        self.send(["map", ctx.lease, key, args, seq])
        while True:
            try:
                reply = self.mapped.get(timeout=0.05)
            except queue.Empty:
                ctx.check_stop()  # a cancel of the parent also cancels its subtasks
                continue
            if reply[1] != ctx.lease or reply[5] != seq:
                continue  # a late reply for an earlier run or map (or one sent twice)
            _, _, ok, results, error, _ = reply
            if not ok:
                ctx.check_stop()  # the parent was cancelled: stop, not fail
                raise TaskFailed(error)
            return [None if r is None else _decode(r) for r in results]

    def serve(self) -> None:
        """Run the queued runs one at a time until the node closes the pipe."""
        loop = loops.new_event_loop()  # for async tasks; uvloop where it is installed
        while (run := self.runs.get()) is not None:
            lease = run[1]
            if lease in self.stopped:
                self.send(
                    ["done", lease, TaskOutcome.STOPPED, None, "cancelled before it started", ""]
                )
                continue
            ctx = TaskContext(run[2], run[3], run[5], self.send, lease, self.mapper)
            self.current = ctx
            self.maps = 0
            if lease in self.stopped:  # the stop arrived between the check above and now
                ctx.request_stop()
            out, err = sys.stdout, sys.stderr
            capture = _Capture(err, _log_limit())
            ctx.sink = capture.write
            sys.stdout = sys.stderr = capture
            began = time.perf_counter()
            try:
                reply = _execute(run, self.send, loop, ctx)
            finally:
                sys.stdout, sys.stderr = out, err
            # logs, then the run's seconds (the controller's adaptive prefetch reads them)
            reply += [capture.text(), time.perf_counter() - began]
            self.current = None
            self.stopped.discard(lease)
            self.send(reply)
        loop.close()


def _signatures() -> dict[str, Any]:
    """Each task's parameters, for the controller to check arguments against when queued."""
    out: dict[str, Any] = {}
    for key, task in REGISTRY.items():
        try:
            out[key] = msgspec.to_builtins(describe(task.fn))
        except Exception:  # no signature to read (a C function...): the key is not checked
            continue
    return out


def main(modules: list[str]) -> int:
    """Serve task runs on the pipes until stdin closes.

    Args:
        modules: The task modules to import.

    Returns:
        The exit status: 0 when the node closed the pipe, 3 when a module failed to import.
    """
    out_fd = os.dup(1)
    os.dup2(2, 1)  # the task's print() goes to the node's log, not into the protocol
    # ctx.log lines go to the node's log here, and to the instance's logs through ctx.sink.
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("corral.task").addHandler(handler)
    logging.getLogger("corral.task").setLevel(logging.INFO)
    logging.getLogger("corral.task").propagate = False
    send = _Out(out_fd)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            send(["error", f"cannot import task module {name!r}: {type(exc).__name__}: {exc}"])
            return 3
    subtasks = sorted(k for k, t in REGISTRY.items() if not t.toplevel)
    send(["ready", sorted(REGISTRY), os.getpid(), subtasks, _signatures()])
    worker = _Serve(send)
    threading.Thread(target=worker.reader, name="corral-worker-reader", daemon=True).start()
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
