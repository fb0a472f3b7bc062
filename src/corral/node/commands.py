"""A node's command runner: receive commands in serial order, apply each once, report back.

Theory of operation: the controller publishes every command live, by core NATS: once on
``corral.live.cmd``, which every node subscribes to and the server fans out, each message
naming the serial published before it. A command to a few nodes goes there as a mark naming
them, its body to each one's ``corral.node.<name>.cmd``. A node that finds a gap in the serials
(a message lost in a network cut, a node that was stopped or away) asks the controller for
its commands in the gap on ``corral.in.<name>.catchup`` (paged) and applies them in order
before the ones held behind the gap; the controller's announcements and join replies name the
last serial published, so a lost last message or a whole absence is caught up too (SEER's
``checkSerial``). One worker applies commands in serial order, one at a time, so a SET
followed by a GET reads what was set. A command still running after a moment, or one waiting
behind it, is written to a journal in the work directory: a node killed then resumes from its
journal. The last applied serial is kept beside the journal: a command that arrives again is
skipped. Exactly once from this node's point of view, in order. A command older than its
retire window (judged by the controller's clock, from the offset seen at join) is not run: it
is reported *expired*.

Each command's progress goes to ``corral.in.<name>.out``: ``delivered`` when it waits behind
another, ``running`` (with output as it comes, for processes) when it takes a while, then
``done`` with the result or ``failed`` with the error. A final report is kept in an outbox and
sent again (after two seconds, the wait doubling up to eight) until the controller says it has it
on disk (one message on ``corral.node.<name>.acks`` for every report it wrote in a short
interval), so an outcome is not lost when the controller restarts (or is killed) in between.
Nothing a handler does can stop the runner: errors, timeouts and unencodable results all become
a ``failed`` report.

Every one of those decisions (order, gaps, dedup, expiry, journal, re-sends) is made by
:class:`corral.core.node_commands.NodeCommands`, without I/O; this module reads the bus, the
journal and the handlers, and performs the actions the core returns.
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
from corral.core.node_commands import (
    Ack,
    Action,
    Fetch,
    Journal,
    NodeCommands,
    Run,
    Save,
    Send,
    Skip,
    Unjournal,
)
from corral.errors import CorralError
from corral.node.epochs import EpochFilter
from corral.node.handlers import Handlers
from corral.states import CommandState

__all__ = ["CommandRunner"]

log = logging.getLogger("corral.node.commands")

#: A command still running after this long is reported ``running``.
_RUNNING_AFTER = 0.2
#: Seconds between checks for reports to re-send and fetches overdue.
_TICK = 0.5
#: Seconds between output flushes of a running process.
_FLUSH_EVERY = 0.25
#: What the shared live subject carries.
_LIVE = wire.LiveCommand | wire.ReportAck


class CommandRunner:
    """Applies the commands addressed to one node: the I/O shell of
    :class:`~corral.core.node_commands.NodeCommands`, which decides.

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
        self.on_applied = on_applied
        self.core = NodeCommands(
            name,
            self._load(),
            wall=lambda: time.time() + clock_offset(),
            max_report_bytes=max_report_bytes,
        )
        #: set at this process's first join: until then it cannot tell which broadcasts
        #: were resolved before it existed, so it applies nothing
        self.joined = asyncio.Event()
        self.nc: bus.NATS | None = None
        self.journal = state_file.parent / ".corral-journal"
        #: commands the core said to run, taken one at a time by the worker
        self._runs: asyncio.Queue[wire.NodeCommand] = asyncio.Queue()
        self._state_fd = -1
        self._worker: asyncio.Task[None] | None = None
        self._resender: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        #: the node's filter of leader epochs (set by the node): a deposed controller's
        #: commands and confirmations are ignored (issue #13)
        self.epochs: EpochFilter | None = None
        #: catch-up requests in flight
        self._fetches: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<CommandRunner {self.core!r}>"

    @property
    def first_serial(self) -> int:
        """Broadcasts to every node below this serial were resolved before this node first
        joined (the controller says so in its first join reply): they are not for it."""
        return self.core.first_serial

    @first_serial.setter
    def first_serial(self, serial: int) -> None:
        self.core.first_serial = serial

    def _load(self) -> int:
        try:
            return int(self.state_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    # --- performing the core's actions --------------------------------------------------

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self._send(action.data)
            elif isinstance(action, Fetch):
                task = asyncio.create_task(self._fetch(action), name="catch-up")
                self._fetches.add(task)
                task.add_done_callback(self._fetches.discard)
            elif isinstance(action, Ack):
                await _ack(action.token)
            elif isinstance(action, Run):
                self._runs.put_nowait(action.command)
            elif isinstance(action, Journal):
                self._journal(action.command)
            elif isinstance(action, Unjournal):
                self._journal_path(action.serial).unlink(missing_ok=True)
            elif isinstance(action, Save):
                self._save(action.serial)
                self.on_applied(action.serial)
            elif isinstance(action, Skip):
                log.debug("command #%d skipped: %s", action.serial, action.reason)

    def _save(self, serial: int) -> None:
        # One fixed-width write at offset 0: never truncated, never half old and half new.
        if self._state_fd < 0:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self._state_fd = os.open(self.state_file, os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(self._state_fd, b"%020d" % serial, 0)

    def _journal_path(self, serial: int) -> Path:
        return self.journal / f"{serial:020d}.cmd"

    def _journal(self, command: wire.NodeCommand) -> None:
        self.journal.mkdir(parents=True, exist_ok=True)
        path = self._journal_path(command.serial)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(wire.encode(command))
        os.replace(tmp, path)

    def _read_journal(self) -> list[wire.NodeCommand]:
        """What was received but perhaps not applied before this process started."""
        found: list[wire.NodeCommand] = []
        if not self.journal.is_dir():  # made by the first journaled command, not at start
            return found
        for path in self.journal.glob("*.cmd"):
            try:
                found.append(msgspec.msgpack.decode(path.read_bytes(), type=wire.NodeCommand))
            except (OSError, msgspec.DecodeError):
                path.unlink(missing_ok=True)  # torn by a crash mid-write: redelivered anyway
        return found

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, nc: bus.NATS) -> None:
        """Resume the journal, then start receiving commands (live, and this node's own)."""
        self.nc = nc
        self.on_applied(self.core.last)
        await self._perform(self.core.replay(self._read_journal()))
        self._worker = asyncio.create_task(self._work(), name="commands")
        self._resender = asyncio.create_task(self._resend_loop(), name="report-resend")
        self._subs = [await nc.subscribe(subjects.report_acks(self.name), cb=self._on_ack)]
        for subject, cb in (
            (subjects.LIVE_COMMANDS, self._on_live),
            (subjects.live_commands_for(self.name), self._on_direct),
        ):
            sub = await nc.subscribe(
                subject,
                cb=cb,
                pending_msgs_limit=100_000,
                pending_bytes_limit=256 * 1024 * 1024,
            )
            self._subs.append(sub)

    async def stop(self) -> None:
        """Stop receiving; a command being applied is cancelled (and run again at the next
        start, from the journal or the catch-up)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in (self._worker, self._resender, *self._fetches):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._state_fd >= 0:
            os.close(self._state_fd)
            self._state_fd = -1

    async def join(self, first_serial: int = 0, last_serial: int = 0) -> None:
        """The node joined (again): apply commands from now on, fetch what was missed.

        Args:
            first_serial: a first join reply's bound for broadcasts (0: none).
            last_serial: the last serial the controller published live.
        """
        self.joined.set()
        await self._perform(self.core.join(first_serial, last_serial))

    async def announced(self, last_serial: int) -> None:
        """The controller announced the last serial it published live."""
        if self.joined.is_set():
            await self._perform(self.core.tip(last_serial))

    # --- events -------------------------------------------------------------------------

    async def _on_live(self, msg: Any) -> None:
        try:
            live: wire.LiveCommand | wire.ReportAck = wire.decode(
                msg.data,
                _LIVE,  # type: ignore[arg-type]
                msg.headers,
            )
            if not self._current(max(live.epoch, wire.epoch_of(msg.headers))):
                return
            if isinstance(live, wire.ReportAck):  # settled commands, with no command to ride
                self.core.acked(*live.serials)
                return
            self.core.acked(*live.settled)
            actions = self.core.live(live)
        except (CorralError, msgspec.DecodeError) as exc:
            log.warning("bad live command ignored: %s", exc, extra={"node": self.name})
            return
        await self._perform(actions)

    async def _on_direct(self, msg: Any) -> None:
        try:
            live = wire.decode(msg.data, wire.LiveCommand, msg.headers)
            command = msgspec.msgpack.decode(live.body, type=wire.NodeCommand)
        except (CorralError, msgspec.DecodeError) as exc:
            log.warning("bad command ignored: %s", exc, extra={"node": self.name})
            return
        if self._current(max(live.epoch, wire.epoch_of(msg.headers))):
            await self._perform(self.core.direct(command))

    def _current(self, epoch: int) -> bool:
        """Whether a controller's message of ``epoch`` comes from the leader (not a deposed
        one that has not noticed yet)."""
        return self.epochs is None or self.epochs.accept(epoch, "command")

    async def _fetch(self, ask: Fetch) -> None:
        """Ask the controller for this node's commands in the gap, and take them in order."""
        assert self.nc is not None
        try:
            reply: wire.CatchUpReply = await bus.request(
                self.nc,
                subjects.node_in(self.name, subjects.CATCHUP_VERB),
                wire.CatchUp(after=ask.after, upto=ask.upto),
                wire.CatchUpReply,
                timeout=10.0,
            )
            actions = self.core.fetched(ask, reply.covered, reply.commands)
        except (CorralError, msgspec.DecodeError) as exc:
            log.warning(
                "catching up on commands %d-%d failed: %s",
                ask.after + 1,
                ask.upto,
                exc,
                extra={"node": self.name},
            )
            self.core.fetch_failed(ask)
            return
        await self._perform(actions)

    async def _work(self) -> None:
        while True:
            command = await self._runs.get()
            await self._perform(await self._run(command))

    async def _run(self, command: wire.NodeCommand) -> list[Action]:
        """Run ``command``'s handler, reporting ``running`` while it takes a while.

        Returns:
            The core's actions once it ended (its final report first).
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
                    return self.core.finished(
                        command.serial, CommandState.FAILED, error=error, **output.take()
                    )
                if now - started >= _RUNNING_AFTER and (not reported_running or output.ready):
                    # Slow: the core journals it and lets the next command come.
                    await self._perform(self.core.running(command.serial, **output.take()))
                    reported_running = True
        except asyncio.CancelledError:
            task.cancel()
            raise
        state, fields = _outcome(task)
        return self.core.finished(command.serial, state, **fields, **output.take())

    async def _send(self, data: bytes) -> None:
        assert self.nc is not None
        try:
            # While reconnecting, nats-py buffers this and sends it once back. No headers:
            # the report carries its protocol version (issue #14: a header block per report
            # was a measurable part of the controller's and the node's CPU).
            await self.nc.publish(subjects.node_in(self.name, "out"), data)
        except Exception as exc:  # the connection closed for good: the node is stopping
            log.warning("command report not sent: %s", exc, extra={"node": self.name})

    async def _on_ack(self, msg: Any) -> None:
        try:
            ack = wire.decode(msg.data, wire.ReportAck, msg.headers)
        except CorralError:
            return
        if self._current(max(ack.epoch, wire.epoch_of(msg.headers))):
            self.core.acked(*(ack.serials or (ack.serial,)))

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            await self._perform(self.core.tick())


def _outcome(
    task: asyncio.Task[tuple[Any, int | None]],
) -> tuple[CommandState, dict[str, Any]]:
    """The final state and report fields of a finished handler task."""
    try:
        result, code = task.result()
    except Exception as exc:
        error = str(exc) if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}"
        return CommandState.FAILED, {"error": error}
    try:
        msgspec.msgpack.encode(result)
    except (TypeError, msgspec.EncodeError) as exc:
        return CommandState.FAILED, {
            "error": f"the handler's result is not msgpack-able data ({exc}): return dicts, "
            "lists, strings, numbers, bytes"
        }
    if code in (None, 0):
        return CommandState.DONE, {"result": result, "exit_code": code}
    error = f"exited with status {code}"
    return CommandState.FAILED, {"result": result, "exit_code": code, "error": error}


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
