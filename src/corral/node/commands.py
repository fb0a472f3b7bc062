"""A node's command runner: receive commands in serial order, apply each once, report back.

Theory of operation: the controller made this node a durable JetStream consumer that pushes
to ``corral.node.<name>.cmd`` one message at a time (``max_ack_pending=1``), so commands
arrive in serial order — live ones, and after an absence every one missed — even when a
delivery is lost in a network cut (the server redelivers it before anything later). One
worker applies them in that order, one at a time, so a SET followed by a GET reads what was
set. A quick command is acknowledged once applied. One still running after a moment is first
written to a journal in the work directory and acknowledged, so the next can arrive (and be
reported *delivered*, waiting behind it); a node killed then resumes from its journal. The
last applied serial is kept beside the journal: a command that arrives again (redelivered,
or re-published by a restarted controller) is skipped. Exactly once from this node's point of
view, in order. A command older than its retire window (judged by the controller's clock,
from the offset seen at join) is not run: it is reported *expired*.

Each command's progress goes to ``corral.in.<name>.out``: ``delivered`` when it waits behind
another, ``running`` (with output as it comes, for processes) when it takes a while, then
``done`` with the result or ``failed`` with the error. A final report is kept in an outbox and
sent again every second until the controller says it has it on disk, so an outcome is not
lost when the controller restarts (or is killed) in between. Nothing a
handler does can stop the runner: errors, timeouts and unencodable results all become a
``failed`` report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from corral import bus, subjects, wire
from corral.core.serials import Applied
from corral.errors import CorralError
from corral.node.handlers import Handlers

__all__ = ["CommandRunner"]

log = logging.getLogger("corral.node.commands")

#: A command still running after this long is reported ``running``.
_RUNNING_AFTER = 0.2
#: Seconds between output flushes of a running process.
_FLUSH_EVERY = 0.25
#: Seconds before a final report the controller has not acknowledged is sent again; the wait
#: doubles after each re-send up to _RESEND_MAX, so an overloaded controller is not flooded.
_RESEND_EVERY = 1.0
_RESEND_MAX = 4.0
_FINAL = frozenset({"done", "failed", "expired"})


class CommandRunner:
    """Applies the commands addressed to one node.

    Args:
        name: the node's name.
        handlers: what it can do.
        state_file: where the last applied serial is kept between runs.
        clock_offset: returns the controller's clock minus ours (seconds).
        on_applied: called with each newly applied serial (for heartbeats).
        max_report_bytes: the largest report sent; a larger result is replaced by an error.
    """

    def __init__(
        self,
        name: str,
        handlers: Handlers,
        state_file: Path,
        clock_offset: Callable[[], float] = lambda: 0.0,
        on_applied: Callable[[int], None] = lambda serial: None,
        max_report_bytes: int = 1024 * 1024,
    ) -> None:
        self.name = name
        self.handlers = handlers
        self.state_file = state_file
        self.clock_offset = clock_offset
        self.on_applied = on_applied
        self.max_report_bytes = max_report_bytes
        #: broadcasts to every node below this serial were resolved before this node first
        #: joined (the controller says so in its first join reply)
        self.first_serial = 0
        #: set at this process's first join: until then it cannot tell which broadcasts
        #: were resolved before it existed, so it applies nothing
        self.joined = asyncio.Event()
        self.applied = Applied(self._load())
        self.nc: bus.NATS | None = None
        self.journal = state_file.parent / ".corral-journal"
        self._queue: asyncio.Queue[tuple[wire.NodeCommand, Any]] = asyncio.Queue()
        self._state_fd = -1
        self._inflight: set[int] = set()
        self._busy = False
        self._worker: asyncio.Task[None] | None = None
        self._resender: asyncio.Task[None] | None = None
        self._sub: Any = None
        self._ack_sub: Any = None
        #: final reports not yet acknowledged: serial -> encoded report
        self.outbox: dict[int, bytes] = {}
        #: when each report in the outbox is due again (monotonic seconds), and the wait after
        self._due: dict[int, tuple[float, float]] = {}

    def __repr__(self) -> str:
        queued = self._queue.qsize()
        return f"<CommandRunner {self.name!r} applied={self.applied.last} queued={queued}>"

    def _load(self) -> int:
        try:
            return int(self.state_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _save(self) -> None:
        # One fixed-width write at offset 0: never truncated, never half old and half new.
        if self._state_fd < 0:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self._state_fd = os.open(self.state_file, os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(self._state_fd, b"%020d" % self.applied.last, 0)

    def _journal_path(self, serial: int) -> Path:
        return self.journal / f"{serial:020d}.cmd"

    def _journal(self, command: wire.NodeCommand) -> None:
        self.journal.mkdir(parents=True, exist_ok=True)
        path = self._journal_path(command.serial)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(wire.encode(command))
        os.replace(tmp, path)

    def _replay_journal(self) -> None:
        """Queue what was received but not applied before this process started."""
        self.journal.mkdir(parents=True, exist_ok=True)
        found = []
        for path in self.journal.glob("*.cmd"):
            try:
                command = msgspec.msgpack.decode(path.read_bytes(), type=wire.NodeCommand)
            except (OSError, msgspec.DecodeError):
                path.unlink(missing_ok=True)  # torn by a crash mid-write: redelivered anyway
                continue
            if command.serial <= self.applied.last:
                path.unlink(missing_ok=True)
            else:
                found.append(command)
        for command in sorted(found, key=lambda c: c.serial):
            self._inflight.add(command.serial)
            self._queue.put_nowait((command, None))

    async def start(self, nc: bus.NATS) -> None:
        """Resume the journal, then start receiving commands on the node's own subject."""
        self.nc = nc
        self.on_applied(self.applied.last)
        self._replay_journal()
        self._ack_sub = await nc.subscribe(self._ack_subject, cb=self._on_ack)
        self._worker = asyncio.create_task(self._work(), name="commands")
        self._resender = asyncio.create_task(self._resend_loop(), name="report-resend")
        self._sub = await nc.subscribe(
            subjects.node_out(self.name, "cmd"),
            cb=self._on_message,
            pending_msgs_limit=100_000,
            pending_bytes_limit=256 * 1024 * 1024,
        )

    async def stop(self) -> None:
        """Stop receiving; a command being applied is cancelled (and redelivered later)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        for task in (self._worker, self._resender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._state_fd >= 0:
            os.close(self._state_fd)
            self._state_fd = -1

    async def _on_message(self, msg: Any) -> None:
        try:
            command = wire.decode(msg.data, wire.NodeCommand, msg.headers)
        except CorralError as exc:
            log.warning("bad command ignored: %s", exc, extra={"node": self.name})
            await _ack(msg)
            return
        if command.serial <= self.applied.last or command.serial in self._inflight:
            await _ack(msg)  # applied or queued already: a redelivery or a re-publish
            return
        self._inflight.add(command.serial)
        if (self._busy or not self._queue.empty()) and self._meant_for_me(command):
            # Behind a slow one: journal it, so the next can come, and say it waits.
            self._journal(command)
            await _ack(msg)
            await self._report(command.serial, "delivered")
            msg = None
        self._queue.put_nowait((command, msg))

    def _meant_for_me(self, command: wire.NodeCommand) -> bool:
        if not command.to_all:
            return True
        if self.name in command.skip:  # '*' sent while this node had left
            return False
        if command.only:
            return self.name in command.only
        return command.serial >= self.first_serial  # '*': unless resolved before we joined

    async def _work(self) -> None:
        await self.joined.wait()
        while True:
            command, msg = await self._queue.get()
            self._busy = True
            try:
                await self._apply(command, msg)
            finally:
                self._busy = False
                self._inflight.discard(command.serial)

    async def _apply(self, command: wire.NodeCommand, msg: Any) -> None:
        if command.serial <= self.applied.last:
            await _ack(msg)
            return
        if self._meant_for_me(command):
            age = time.time() + self.clock_offset() - command.created
            if age > command.retire_after:
                await self._report(
                    command.serial,
                    "expired",
                    error=f"arrived {age:.0f} s after it was sent, past its "
                    f"{command.retire_after:g} s retire window: not run",
                )
            else:
                msg = await self._run(command, msg)
        self.applied.skip(command.serial)
        self._save()
        if msg is None:  # it was journaled
            self._journal_path(command.serial).unlink(missing_ok=True)
        else:
            await _ack(msg)
        self.on_applied(command.serial)

    async def _run(self, command: wire.NodeCommand, msg: Any) -> Any:
        """Run ``command`` and report its outcome.

        Returns:
            ``msg`` if it is still to be acknowledged, ``None`` if the command was journaled.
        """
        output = _Output(self.handlers.output_limit)
        task = asyncio.create_task(
            self.handlers.run(
                command.kind, command.name, dict(command.args), command.data, output.add
            )
        )
        started = time.monotonic()
        reported_running = False
        try:
            # A quick coroutine handler is done after its first step, which runs before this
            # task resumes: then no timer and no wait() are needed.
            await asyncio.sleep(0)
            while not task.done():
                await asyncio.wait({task}, timeout=_FLUSH_EVERY)
                now = time.monotonic()
                if task.done():
                    break
                if now - started > command.timeout:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    error = (
                        f"timed out after {command.timeout:g} s (raise the command's timeout "
                        "if it needs longer)"
                    )
                    await self._report(command.serial, "failed", error=error, **output.take())
                    return msg
                if now - started >= _RUNNING_AFTER and (not reported_running or output.ready):
                    if msg is not None:
                        # Slow: journal it and let the next command come (it waits behind).
                        self._journal(command)
                        await _ack(msg)
                        msg = None
                    await self._report(command.serial, "running", **output.take())
                    reported_running = True
        except asyncio.CancelledError:
            task.cancel()
            raise
        state, fields = _outcome(task)
        await self._report(command.serial, state, **fields, **output.take())
        return msg

    @property
    def _ack_subject(self) -> str:
        return f"{subjects.inbox_prefix(self.name)}.report-acks"

    async def _report(self, serial: int, state: str, **fields: Any) -> None:
        data = wire.encode(wire.CommandReport(serial=serial, state=state, **fields))
        if len(data) > self.max_report_bytes:
            error = (
                f"the {state} report is {len(data)} bytes, over the {self.max_report_bytes}-byte "
                "limit (max_command_bytes): return less, or write it to a file and return its "
                "path"
            )
            state = "failed" if state in _FINAL else state
            data = wire.encode(wire.CommandReport(serial=serial, state=state, error=error))
        reply = ""
        if state in _FINAL:
            self.outbox[serial] = data  # re-sent until the controller has it (see _on_ack)
            self._due[serial] = (time.monotonic() + _RESEND_EVERY, _RESEND_EVERY)
            reply = self._ack_subject
        await self._send(data, reply)

    async def _send(self, data: bytes, reply: str) -> None:
        assert self.nc is not None
        try:
            # While reconnecting, nats-py buffers this and sends it once back.
            await self.nc.publish(
                subjects.node_in(self.name, "out"), data, reply=reply, headers=wire.HEADERS
            )
        except Exception as exc:  # the connection closed for good: the node is stopping
            log.warning("command report not sent: %s", exc, extra={"node": self.name})

    async def _on_ack(self, msg: Any) -> None:
        try:
            ack = wire.decode(msg.data, wire.ReportAck, msg.headers)
        except CorralError:
            return
        self.outbox.pop(ack.serial, None)
        self._due.pop(ack.serial, None)

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(_RESEND_EVERY / 2)
            # Only what has waited its whole period: a report sent a moment ago is most likely
            # being written to disk by the controller right now.
            now = time.monotonic()
            for serial, data in list(self.outbox.items()):
                due, wait = self._due.get(serial, (0.0, _RESEND_EVERY))
                if due <= now:
                    wait = min(2 * wait, _RESEND_MAX)
                    self._due[serial] = (now + wait, wait)
                    await self._send(data, self._ack_subject)


def _outcome(task: asyncio.Task[tuple[Any, int | None]]) -> tuple[str, dict[str, Any]]:
    """The final state and report fields of a finished handler task."""
    try:
        result, code = task.result()
    except Exception as exc:
        error = str(exc) if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}"
        return "failed", {"error": error}
    try:
        msgspec.msgpack.encode(result)
    except (TypeError, msgspec.EncodeError) as exc:
        return "failed", {
            "error": f"the handler's result is not msgpack-able data ({exc}): return dicts, "
            "lists, strings, numbers, bytes"
        }
    if code in (None, 0):
        return "done", {"result": result, "exit_code": code}
    return "failed", {"result": result, "exit_code": code, "error": f"exited with status {code}"}


class _Output:
    """Output of a running process, bounded, handed out in chunks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = {"stdout": 0, "stderr": 0}
        self.pending = {"stdout": "", "stderr": ""}

    @property
    def ready(self) -> bool:
        return any(self.pending.values())

    async def add(self, stdout: str, stderr: str) -> None:
        for key, text in (("stdout", stdout), ("stderr", stderr)):
            room = self.limit - self.sent[key] - len(self.pending[key])
            if text and room > 0:
                self.pending[key] += text[:room]

    def take(self) -> dict[str, str]:
        out = self.pending
        self.pending = {"stdout": "", "stderr": ""}
        for key, text in out.items():
            self.sent[key] += len(text)
        return out


async def _ack(msg: Any) -> None:
    if msg.reply:
        with contextlib.suppress(Exception):
            await msg.ack()
