"""A node's command runner on a real bus: quick handlers run in the callback that received
their command, slow ones in a task; a burst's reports go in one message when the controller
takes batches (issue #14).

The runner publishes on its node's own connection to a real nats-server, and a controller
connection records what arrives. The live messages are handed to the runner's callback
directly (as nats-py hands them over), with a stand-in for the subscription's backlog: how
many messages wait behind one decides whether its report waits for the rest of a burst, and a
real backlog cannot be held at a chosen size."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from conftest import eventually, scaled
from corral import bus, subjects, wire
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.node.commands import CommandRunner
from corral.node.handlers import Handlers
from corral.security import Authority
from corral.states import CommandState

__all__: list[str] = []

_reports = msgspec.msgpack.Decoder(wire.CommandReport | wire.CommandReports)
_seen: contextvars.ContextVar[str] = contextvars.ContextVar("_seen", default="unset")


class Bus:
    """What arrives on the node's report subject, over a real connection."""

    def __init__(self, node: NATS, recorder: NATS) -> None:
        self.node = node
        self.recorder = recorder
        self.published: list[tuple[str, bytes]] = []

    async def start(self) -> None:
        async def record(msg: Any) -> None:
            self.published.append((msg.subject, msg.data))

        await self.recorder.subscribe(subjects.node_in("n1", ">"), cb=record)
        await self.recorder.flush()

    async def settle(self) -> Bus:
        """Return once what the runner published so far has arrived (a round trip on each
        connection: the server delivers in order)."""
        await self.node.flush()
        await self.recorder.flush()
        return self

    def messages(self) -> list[wire.CommandReport | wire.CommandReports]:
        """Every report message, decoded, in order."""
        return [_reports.decode(data) for subject, data in self.published]

    def reports(self) -> list[tuple[int, CommandState, Any]]:
        """Every report, batched or not, as (serial, state, result or error)."""
        out = []
        for msg in self.messages():
            for r in msg.reports if isinstance(msg, wire.CommandReports) else [msg]:
                out.append((r.serial, r.state, r.error or r.result))
        return out


@pytest.fixture
async def wire_bus(broker: EmbeddedBroker, config: Config) -> AsyncIterator[Bus]:
    """Node n1's connection (the runner publishes on it) and a controller's that records."""
    creds = config.data_path / "n1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("n1"))
    node = await bus.connect(
        config, "node-n1", creds=creds, inbox_prefix=subjects.inbox_prefix("n1")
    )
    recorder = await bus.connect(config, "controller")
    recording = Bus(node, recorder)
    try:
        await recording.start()
        yield recording
    finally:
        await node.close()
        await recorder.close()


@dataclass
class Msg:
    data: bytes
    subject: str = subjects.LIVE_COMMANDS
    headers: dict[str, str] | None = None
    reply: str = ""


@dataclass
class Sub:
    """Stands in for the live subscription: how many messages wait behind this one."""

    pending_msgs: int = 0


def live(serial: int, name: str, timeout: float = 60.0, **args: Any) -> Msg:
    """The live message of broadcast ``serial`` running COMMAND ``name``."""
    body = wire.NodeCommand(
        serial=serial,
        kind="command",
        name=name,
        args=args,
        timeout=timeout,
        created=time.time(),
        to_all=True,
    )
    return Msg(
        wire.encode(wire.LiveCommand(serial=serial, prev=serial - 1, body=wire.encode(body)))
    )


async def runner(
    wire_bus: Bus, tmp_path: Path, report_batch: int = wire.MAX_BATCHED_REPORTS
) -> CommandRunner:
    ran: list[str] = []

    async def quick(tag: str = "") -> str:
        ran.append(tag)
        _seen.set(tag)
        return tag

    async def slow(seconds: float, tag: str = "") -> str:
        _seen.set(tag)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            ran.append(f"cancelled {tag}")
            raise
        ran.append(tag)
        return _seen.get()  # set in the first step, read after the wait: one context

    async def cancels() -> None:
        raise asyncio.CancelledError

    def threaded() -> str:
        return "in a thread"

    handlers = Handlers(
        tmp_path,
        commands={"quick": quick, "slow": slow, "cancels": cancels, "threaded": threaded},
    )
    r = CommandRunner("n1", handlers, tmp_path / ".corral-applied")
    r.nc = wire_bus.node
    r.recorded = wire_bus  # type: ignore[attr-defined]
    r.ran = ran  # type: ignore[attr-defined]
    await r.join(report_batch=report_batch)
    return r


async def _true(value: bool) -> bool:
    return value


async def finals(r: CommandRunner) -> list[tuple[int, Any]]:
    """(serial, result or error) of every final report so far."""
    return [(s, what) for s, state, what in (await seen(r)).reports() if state.last_word]


async def seen(r: CommandRunner) -> Bus:
    """What the runner's reports have brought so far, once what it published has arrived."""
    recorded: Bus = r.recorded  # type: ignore[attr-defined]
    return await recorded.settle()


async def test_a_quick_coroutine_handler_runs_and_reports_within_the_callback(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    await r._on_live(live(1, "quick", tag="a"))
    # Done before the callback returned: no task, no queue, no loop iteration.
    assert (await seen(r)).reports() == [(1, CommandState.DONE, "a")]
    assert r._watchers == set() and r.core.last == 1
    assert _seen.get() == "unset"  # the handler ran in a context of its own, as in a task
    assert (tmp_path / ".corral-applied").read_text().strip().lstrip("0") == "1"


async def test_a_burst_received_together_is_reported_in_one_message_in_order(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    r._live_sub = sub = Sub()
    for serial in range(1, 6):
        sub.pending_msgs = 5 - serial  # the rest of the burst is already here
        await r._on_live(live(serial, "quick", tag=str(serial)))
        if serial < 5:
            assert (await seen(r)).published == []  # waits for the rest of the burst
    [message] = (await seen(r)).messages()
    assert isinstance(message, wire.CommandReports)
    assert [(x.serial, x.result) for x in message.reports] == [(s, str(s)) for s in range(1, 6)]
    assert {s for s, _ in (await seen(r)).published} == {subjects.node_in("n1", "out")}
    assert set(r.core.outbox) == {1, 2, 3, 4, 5}  # still re-sent until acknowledged
    # A re-send goes batched too, once due.
    r.core.clock = lambda: time.monotonic() + 3.0
    await r._perform(r.core.tick())
    assert (await seen(r)).reports()[5:] == (await seen(r)).reports()[:5]


async def test_batches_hold_at_most_what_the_controller_takes(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path, report_batch=2)
    r._live_sub = sub = Sub()
    for serial in range(1, 6):
        sub.pending_msgs = 5 - serial
        await r._on_live(live(serial, "quick", tag=str(serial)))
    sizes = [
        len(m.reports) if isinstance(m, wire.CommandReports) else 1
        for m in (await seen(r)).messages()
    ]
    assert sizes == [2, 2, 1]
    last = (await seen(r)).messages()[-1]
    assert isinstance(last, wire.CommandReport)  # one alone: the old form
    assert [s for s, _, _ in (await seen(r)).reports()] == [1, 2, 3, 4, 5]


async def test_a_controller_without_batches_gets_one_report_per_message(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path, report_batch=0)  # an older controller's join reply
    r._live_sub = sub = Sub()
    for serial in range(1, 4):
        sub.pending_msgs = 3 - serial
        await r._on_live(live(serial, "quick", tag=str(serial)))
    assert all(isinstance(m, wire.CommandReport) for m in (await seen(r)).messages())
    assert [s for s, _, _ in (await seen(r)).reports()] == [1, 2, 3]


async def test_a_report_does_not_wait_long_for_the_rest_of_a_burst(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    r._live_sub = Sub(pending_msgs=1_000)  # a backlog that does not end
    await r._on_live(live(1, "quick", tag="a"))
    assert (await seen(r)).published == []
    r._outbound_since -= 1.0  # it has waited a second
    await r._on_live(live(2, "quick", tag="b"))
    assert [s for s, _, _ in (await seen(r)).reports()] == [1, 2]


async def test_a_handler_that_waits_goes_on_in_a_task_and_those_behind_it_wait(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    await r._on_live(live(1, "slow", seconds=0.3, tag="s"))
    assert len(r._watchers) == 2 and (await seen(r)).reports() == []
    await r._on_live(live(2, "quick", tag="q"))
    await r._on_live(live(3, "threaded"))  # a plain function: in a worker thread
    assert r.ran == []  # type: ignore[attr-defined]

    async def three_final() -> bool:
        return len(await finals(r)) == 3

    await eventually(three_final, scaled(5))
    assert r.ran == ["s", "q"]  # type: ignore[attr-defined]
    # "s": the context of its first step, read after the wait
    assert await finals(r) == [(1, "s"), (2, "q"), (3, "in a thread")]
    await eventually(lambda: _true(not r._watchers), scaled(5))
    assert r.core.last == 3


async def test_a_handler_past_its_timeout_is_cancelled_and_the_next_runs(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    await r._on_live(live(1, "slow", timeout=0.3, seconds=30, tag="late"))
    await r._on_live(live(2, "quick", tag="next"))

    async def next_done() -> bool:
        return (2, CommandState.DONE, "next") in (await seen(r)).reports()

    await eventually(next_done, scaled(5))
    final = [x for x in (await seen(r)).reports() if x[0] == 1 and x[1] == CommandState.FAILED]
    assert final and "timed out after 0.3 s" in final[0][2]
    assert r.ran == ["cancelled late", "next"]  # type: ignore[attr-defined]


async def test_a_handler_raising_cancelled_fails_its_command_not_the_runner(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    await r._on_live(live(1, "cancels"))
    await r._on_live(live(2, "quick", tag="after"))
    assert (await seen(r)).reports() == [
        (1, CommandState.FAILED, "CancelledError: "),
        (2, CommandState.DONE, "after"),
    ]


async def test_stop_cancels_a_handler_still_running(wire_bus: Bus, tmp_path: Path) -> None:
    r = await runner(wire_bus, tmp_path)
    await r._on_live(live(1, "slow", seconds=30, tag="x"))
    [watcher] = [t for t in r._watchers if t.get_name() == "command"]
    assert len(r._watchers) == 2  # the handler and its watcher, neither started yet
    watcher.cancel()  # before either's first step: the handler still hears of it
    await r.stop()
    assert r.ran == ["cancelled x"]  # type: ignore[attr-defined]
    assert r.core.last == 0  # not applied: run again after the restart (journal, catch-up)


async def test_a_handler_cancelled_before_its_task_started_hears_of_it_and_fails(
    wire_bus: Bus, tmp_path: Path
) -> None:
    r = await runner(wire_bus, tmp_path)
    await r._on_live(live(1, "slow", seconds=30, tag="x"))
    [handler] = [t for t in r._watchers if t.get_name() != "command"]
    handler.cancel()  # its coroutine's first step ran in the callback, its task's not yet

    async def any_final() -> bool:
        return bool(await finals(r))

    await eventually(any_final, scaled(5))
    assert r.ran == ["cancelled x"]  # type: ignore[attr-defined]
    assert await finals(r) == [(1, "CancelledError: ")]
    await r._on_live(live(2, "quick", tag="next"))  # the runner goes on
    assert (await finals(r))[-1] == (2, "next")


@pytest.mark.parametrize("count", [1, 3])
def test_encoded_reports_embed_as_they_are(count: int) -> None:
    reports = [
        wire.CommandReport(serial=s, state=CommandState.DONE, result={"s": s}) for s in range(count)
    ]
    data = wire.encode_reports([wire.encode(x) for x in reports])
    assert wire.decode(data, wire.CommandReports) == wire.CommandReports(reports=reports)
