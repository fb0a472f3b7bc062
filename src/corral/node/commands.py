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
``done`` with the result or ``failed`` with the error. Reports of commands that arrived
together (a burst: several live messages read at once) go in one message
(:class:`~corral.wire.CommandReports`) when the controller's join reply says it takes them;
a report waits for that only while more live messages are already here, received and not yet
handled. A final report is kept in an outbox and
sent again (after two seconds, the wait doubling up to eight) until the controller says it has it
on disk (one message on ``corral.node.<name>.acks`` for every report it wrote in a short
interval), so an outcome is not lost when the controller restarts (or is killed) in between.
Nothing a handler does can stop the runner: errors, timeouts and unencodable results all become
a ``failed`` report.

A handler's first step runs at once, in the callback that received its command: a quick
coroutine (one that finishes without waiting on anything, as GET, SET and most SEER handlers
do) is done there, with no task and no queue, and the next command in order follows. One that
waits (on I/O, a timer, a worker thread for a plain function) goes on in a task, watched for
its timeout and reported ``running``; the commands behind it wait in the core's queue.

Every one of those decisions (order, gaps, dedup, expiry, journal, re-sends) is made by
:class:`corral.core.node_commands.NodeCommands`, without I/O; this module reads the bus, the
journal and the handlers, and performs the actions the core returns.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Callable, Coroutine, Generator
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
#: The most bytes of reports put in one message (a larger report goes alone).
_BATCH_BYTES = 64 * 1024
#: Seconds a report may wait for the rest of a burst's before it is sent anyway.
_BATCH_WAIT = 0.05


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
        self._state_fd = -1
        #: a handler that did not end in its first step, and its watcher (one at a time)
        self._watchers: set[asyncio.Task[Any]] = set()
        self._resender: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        #: the subscription to the shared live subject (its backlog delays a flush)
        self._live_sub: Any = None
        #: the most reports the controller takes in one message (its join reply; 0: one)
        self.report_batch = 0
        self._batch_bytes = max(1, min(_BATCH_BYTES, max_report_bytes) - 64)
        #: encoded reports to publish, in order, and since when the first waits
        self._outbound: list[bytes] = []
        self._outbound_since = 0.0
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

    async def _perform(self, actions: list[Action], flush: bool = True) -> None:
        """Perform the core's actions in order; a command to run starts after the others.

        A handler that ends in its first step ends here, and the actions after it (its
        report, the next command) are performed in this same call, in a loop: a backlog of
        quick commands needs neither a task nor a queue hop per command.

        Args:
            actions: what the core decided.
            flush: publish the reports now (else they wait for the next flush: more of a
                burst's commands are already here).
        """
        while actions:
            run: wire.NodeCommand | None = None
            for action in actions:
                if isinstance(action, Send):
                    if not self._outbound:
                        self._outbound_since = time.monotonic()
                    self._outbound.append(action.data)
                elif isinstance(action, Fetch):
                    task = asyncio.create_task(self._fetch(action), name="catch-up")
                    self._fetches.add(task)
                    task.add_done_callback(self._fetches.discard)
                elif isinstance(action, Ack):
                    await _ack(action.token)
                elif isinstance(action, Run):
                    run = action.command  # the core runs one at a time: one per list
                elif isinstance(action, Journal):
                    self._journal(action.command)
                elif isinstance(action, Unjournal):
                    self._journal_path(action.serial).unlink(missing_ok=True)
                elif isinstance(action, Save):
                    self._save(action.serial)
                    self.on_applied(action.serial)
                elif isinstance(action, Skip):
                    log.debug("command #%d skipped: %s", action.serial, action.reason)
            actions = [] if run is None else self._start(run)
        if self._outbound and (
            flush
            or len(self._outbound) >= max(1, self.report_batch)
            or time.monotonic() - self._outbound_since >= _BATCH_WAIT
        ):
            await self._flush()

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
            if cb == self._on_live:
                self._live_sub = sub

    async def stop(self) -> None:
        """Stop receiving; a command being applied is cancelled (and run again at the next
        start, from the journal or the catch-up)."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in (*self._watchers, self._resender, *self._fetches):
            if task is not None:
                task.cancel()
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await task
        if self._state_fd >= 0:
            os.close(self._state_fd)
            self._state_fd = -1

    async def join(
        self, first_serial: int = 0, last_serial: int = 0, report_batch: int = 0
    ) -> None:
        """The node joined (again): apply commands from now on, fetch what was missed.

        Args:
            first_serial: a first join reply's bound for broadcasts (0: none).
            last_serial: the last serial the controller published live.
            report_batch: the most reports the controller takes in one message (0: it
                takes one report per message only).
        """
        self.report_batch = max(0, report_batch)
        self.joined.set()
        await self._perform(self.core.join(first_serial, last_serial))

    async def announced(self, last_serial: int) -> None:
        """The controller announced the last serial it published live."""
        if self.joined.is_set():
            await self._perform(self.core.tip(last_serial))

    # --- events -------------------------------------------------------------------------

    async def _on_live(self, msg: Any) -> None:
        actions: list[Action] = []
        try:
            live: wire.LiveCommand | wire.ReportAck = wire.decode(
                msg.data,
                _LIVE,  # type: ignore[arg-type]
                msg.headers,
            )
            if not self._current(max(live.epoch, wire.epoch_of(msg.headers))):
                pass
            elif isinstance(live, wire.ReportAck):  # settled commands, no command to ride
                self.core.acked(*live.serials)
            else:
                if live.settled:
                    self.core.acked(*live.settled)
                actions = self.core.live(live)
        except (CorralError, msgspec.DecodeError) as exc:
            log.warning("bad live command ignored: %s", exc, extra={"node": self.name})
        # More live messages already received: their reports go with these, in one message.
        sub = self._live_sub
        await self._perform(actions, flush=sub is None or sub.pending_msgs == 0)

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

    def _start(self, command: wire.NodeCommand) -> list[Action]:
        """Start ``command``'s handler: its first step runs now.

        Returns:
            The core's actions if it ended in that step (its final report first); else
            nothing: it goes on in a task (:meth:`_watch`), which performs them when it ends.
        """
        output = _Output(self.handlers.output_limit)
        started = time.monotonic()
        coro = self.handlers.run(
            command.kind, command.name, dict(command.args), command.data, output.add
        )
        # As a task would: in a copy of the context, which its later steps share.
        context = contextvars.copy_context()
        try:
            waiting = context.run(coro.send, None)
        except StopIteration as stop:
            state, fields = _outcome(stop.value)
        except (Exception, asyncio.CancelledError) as exc:
            state, fields = _failure(exc)
        else:
            handler = asyncio.get_running_loop().create_task(_Rest(coro, waiting), context=context)
            watcher = asyncio.create_task(
                self._watch(command, handler, output, started), name="command"
            )
            for task in (handler, watcher):
                self._watchers.add(task)
                task.add_done_callback(self._watchers.discard)
            # A watcher cancelled before its first step takes the handler along.
            watcher.add_done_callback(lambda _: handler.cancel())
            return []
        return self.core.finished(command.serial, state, **fields, **output.take())

    async def _watch(
        self,
        command: wire.NodeCommand,
        task: asyncio.Task[tuple[Any, int | None]],
        output: _Output,
        started: float,
    ) -> None:
        """Wait for a handler that did not end in its first step, reporting ``running``
        while it takes a while, and cancelling it at its timeout; then perform the core's
        actions (its final report first)."""
        await self._perform(await self._wait(command, task, output, started))

    async def _wait(
        self,
        command: wire.NodeCommand,
        task: asyncio.Task[tuple[Any, int | None]],
        output: _Output,
        started: float,
    ) -> list[Action]:
        reported_running = False
        try:
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
        try:
            state, fields = _outcome(task.result())
        except (Exception, asyncio.CancelledError) as exc:
            state, fields = _failure(exc)
        return self.core.finished(command.serial, state, **fields, **output.take())

    async def _flush(self) -> None:
        """Publish the reports waiting, in order: several per message (at most
        :attr:`report_batch`, and :data:`_BATCH_BYTES`) when the controller takes that."""
        out, self._outbound = self._outbound, []
        if self.report_batch < 2 or len(out) == 1:
            for data in out:
                await self._send(data)
            return
        batch: list[bytes] = []
        size = 0
        for data in out:
            if batch and (len(batch) >= self.report_batch or size + len(data) > self._batch_bytes):
                await self._send(batch[0] if len(batch) == 1 else wire.encode_reports(batch))
                batch, size = [], 0
            batch.append(data)
            size += len(data)
        await self._send(batch[0] if len(batch) == 1 else wire.encode_reports(batch))

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


class _Rest(collections.abc.Coroutine[Any, Any, Any]):
    """The rest of a coroutine whose first step ran already (it yielded ``waiting``), as a
    task's coroutine: the task's first step gets ``waiting``, as if it had run that step
    itself; what it sends or throws in later (a result, a cancellation) goes on to the
    coroutine, a cancellation before the task's first step included."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting: Any) -> None:
        self._coro = coro
        self._waiting: Any = waiting
        self._started = False

    def send(self, value: Any) -> Any:
        """The task's next step (the first hands over what the coroutine yielded)."""
        if not self._started:
            self._started = True
            return self._waiting
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Throw into the coroutine (a cancellation), even before the task's first step."""
        self._started = True
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - asyncio throws one value

    def close(self) -> None:
        """Close the coroutine."""
        self._coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("_Rest is a task's coroutine, not to be awaited")  # pragma: no cover


def _failure(exc: BaseException) -> tuple[CommandState, dict[str, Any]]:
    """The final state and report fields of a handler that raised ``exc``."""
    error = str(exc) if isinstance(exc, CorralError) else f"{type(exc).__name__}: {exc}"
    return CommandState.FAILED, {"error": error}


def _outcome(returned: tuple[Any, int | None]) -> tuple[CommandState, dict[str, Any]]:
    """The final state and report fields of a handler that returned ``(result, code)``."""
    result, code = returned
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
