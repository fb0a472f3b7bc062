"""A node's command decisions (dedup, order, expiry, journal, re-sends), by plain calls: no bus."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import wire
from corral.core.node_commands import (
    RESEND_EVERY,
    RESEND_MAX,
    Ack,
    Action,
    Journal,
    NodeCommands,
    Run,
    Save,
    Send,
    Skip,
    Unjournal,
)
from corral.errors import UsageError
from corral.states import CommandState as S

NOW = 1_000_000.0


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cmd(serial: int, **fields: Any) -> wire.NodeCommand:
    fields.setdefault("created", NOW)
    return wire.NodeCommand(serial=serial, kind="command", name="x", **fields)


def core(last: int = 0, joined: bool = True, **kw: Any) -> NodeCommands:
    kw.setdefault("wall", Clock(NOW))
    kw.setdefault("clock", Clock())
    c = NodeCommands("n1", last, **kw)
    if joined:
        assert c.join() == []
    return c


def sent(actions: list[Action]) -> list[tuple[int, S]]:
    return [(a.serial, a.state) for a in actions if isinstance(a, Send)]


def report(action: Action) -> wire.CommandReport:
    assert isinstance(action, Send)
    return msgspec.msgpack.decode(action.data, type=wire.CommandReport)


def test_a_quick_command_runs_then_reports_saves_and_acks() -> None:
    c = core()
    assert c.received(cmd(1), "m1") == [Run(cmd(1))]
    out = c.finished(1, S.DONE, result=42)
    assert sent(out) == [(1, S.DONE)] and report(out[0]).result == 42
    assert out[1:] == [Save(1), Ack("m1")]
    assert c.last == 1 and 1 in c.outbox  # kept until the controller acknowledges it


def test_nothing_runs_before_the_first_join() -> None:
    c = core(joined=False)
    assert c.received(cmd(1), "m1") == []
    assert c.join() == [Run(cmd(1))]


def test_a_duplicate_is_acknowledged_and_skipped_whether_applied_or_queued() -> None:
    c = core(last=3)
    assert c.received(cmd(3), "old") == [Ack("old"), Skip(3, "duplicate")]
    assert c.received(cmd(4), "m4") == [Run(cmd(4))]
    assert c.received(cmd(4), "again") == [Ack("again"), Skip(4, "duplicate")]  # running


def test_one_behind_a_busy_runner_is_journaled_acked_and_reported_delivered() -> None:
    c = core()
    c.received(cmd(1), "m1")
    out = c.received(cmd(2), "m2")
    assert out[:2] == [Journal(cmd(2)), Ack("m2")] and sent(out) == [(2, S.DELIVERED)]
    out = c.finished(1, S.DONE)
    assert out[1:] == [Save(1), Ack("m1"), Run(cmd(2))]  # then the next, in order
    out = c.finished(2, S.FAILED, error="boom")
    assert sent(out) == [(2, S.FAILED)] and out[1:] == [Save(2), Unjournal(2)]


def test_a_slow_command_is_journaled_and_acked_once_then_reports_running() -> None:
    c = core()
    c.received(cmd(1), "m1")
    out = c.running(1, stdout="hello")
    assert out[:2] == [Journal(cmd(1)), Ack("m1")] and report(out[2]).stdout == "hello"
    assert sent(c.running(1)) == [(1, S.RUNNING)]  # no second journal nor ack
    assert c.finished(1, S.DONE)[1:] == [Save(1), Unjournal(1)]


def test_a_command_past_its_retire_window_is_reported_expired_not_run() -> None:
    c = core(wall=Clock(NOW + 300))
    out = c.received(cmd(1, retire_after=120), "m1")
    assert sent(out) == [(1, S.EXPIRED)] and "past its 120 s retire window" in report(out[0]).error
    assert out[1:] == [Save(1), Ack("m1")]
    assert not any(isinstance(a, Run) for a in out)


def test_broadcasts_not_for_this_node_are_skipped_in_order() -> None:
    c = core(joined=False)
    c.received(cmd(1, to_all=True, only=("other",)), "m1")
    # '*', resolved before this node joined (which it learns only then): journaled meanwhile
    assert Journal(cmd(2, to_all=True)) in c.received(cmd(2, to_all=True), "m2")
    c.received(cmd(3, to_all=True, only=("n1",)), "m3")
    out = c.join(first_serial=3)
    assert out == [
        Skip(1, "not for this node"),
        Save(1),
        Ack("m1"),
        Skip(2, "not for this node"),
        Save(2),
        Unjournal(2),
        Run(cmd(3, to_all=True, only=("n1",))),
    ]


def test_a_report_over_the_limit_becomes_a_failed_one_that_says_why() -> None:
    c = core(max_report_bytes=200)
    c.received(cmd(1), "m1")
    out = c.finished(1, S.DONE, result="x" * 500)
    got = report(out[0])
    assert got.state is S.FAILED and "over the 200-byte limit (max_command_bytes)" in got.error


def test_final_reports_are_resent_with_backoff_until_acknowledged() -> None:
    clock = Clock()
    c = core(clock=clock)
    c.received(cmd(1), "m1")
    first = c.finished(1, S.DONE)[0]
    assert c.tick() == []  # just sent: the controller is probably writing it
    clock.now += RESEND_EVERY
    assert c.tick() == [first]
    clock.now += RESEND_EVERY
    assert c.tick() == []  # the wait doubled
    waits = []
    for _ in range(6):
        due = clock.now
        while not c.tick():
            clock.now += 0.25
        waits.append(clock.now - due)
    assert max(waits) <= RESEND_MAX
    c.acked(1)
    clock.now += 10 * RESEND_MAX
    assert c.tick() == [] and c.outbox == {}


def test_replay_drops_what_was_applied_and_runs_the_rest_first_in_order() -> None:
    c = core(last=5, joined=False)
    assert c.replay([cmd(7), cmd(5), cmd(6)]) == [Unjournal(5)]
    assert c.received(cmd(6), "again") == [Ack("again"), Skip(6, "duplicate")]
    assert c.join() == [Run(cmd(6))]
    assert c.finished(6, S.DONE)[1:] == [Save(6), Unjournal(6), Run(cmd(7))]


def test_events_about_a_command_that_is_not_running_are_refused() -> None:
    c = core()
    c.received(cmd(1), "m1")
    with pytest.raises(UsageError, match="#2 is not running"):
        c.finished(2, S.DONE)
    with pytest.raises(UsageError, match="ends done or failed"):
        c.finished(1, S.RUNNING)
    with pytest.raises(UsageError, match="max_report_bytes"):
        NodeCommands("n1", max_report_bytes=0)


# One step of a run: deliver the next serial, redeliver an older one, or a handler event.
steps = st.lists(
    st.one_of(
        st.just(("deliver", 0)),
        st.tuples(st.just("redeliver"), st.integers(0, 50)),
        st.sampled_from([("slow", 0), ("finish", 0), ("tick", 0)]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps, st.integers(0, 3))
def test_every_serial_runs_once_in_order_and_every_delivery_is_acked_once(
    plan: list[tuple[str, int]], last: int
) -> None:
    clock = Clock()
    c = core(last=last, clock=clock)
    delivered: list[int] = []
    tokens = 0
    acks: list[str] = []
    runs: list[int] = []
    finals: list[int] = []
    saved: list[int] = []

    def perform(actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Ack):
                acks.append(a.token)
            elif isinstance(a, Run):
                runs.append(a.command.serial)
            elif isinstance(a, Save):
                saved.append(a.serial)
            elif isinstance(a, Send) and a.final and a.serial not in finals:
                finals.append(a.serial)

    for op, arg in [*plan, *[("finish", 0)] * 80]:
        if op == "deliver":
            serial = last + len(delivered) + 1
            delivered.append(serial)
            tokens += 1
            perform(c.received(cmd(serial), f"t{tokens}"))
        elif op == "redeliver" and delivered:
            tokens += 1
            perform(c.received(cmd(delivered[arg % len(delivered)]), f"t{tokens}"))
        elif op == "slow" and c.current is not None:
            perform(c.running(c.current.command.serial))
        elif op == "finish" and c.current is not None:
            perform(c.finished(c.current.command.serial, S.DONE))
        elif op == "tick":
            clock.now += RESEND_EVERY
            perform(c.tick())
    assert runs == delivered  # each once, in serial order
    assert finals == delivered  # each has its outcome
    assert sorted(acks) == sorted(f"t{i}" for i in range(1, tokens + 1))  # each exactly once
    assert saved == delivered and c.last == (delivered[-1] if delivered else last)
