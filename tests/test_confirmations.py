"""Batched confirmations of final reports, without a bus."""

from __future__ import annotations

from corral.core.commands import CommandState, Outcome
from corral.core.confirmations import HOLD, Confirmations


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def done(node: str, state: CommandState = CommandState.DONE) -> Outcome:
    return Outcome(node, state)


def test_a_command_every_target_reported_is_settled_for_all_at_once() -> None:
    clock = Clock()
    c = Confirmations({7: 2, 8: 2}.get, clock=clock)
    c.durable([("a", 7)], [(7, done("a")), (8, done("a", CommandState.RUNNING))])
    assert c.settled() == () and c.due() == {}
    c.durable([("b", 7)], [(7, done("b", CommandState.FAILED))])
    assert c.settled() == (7,) and c.settled() == ()
    clock.now += HOLD
    assert c.due() == {}  # settled: nothing left to confirm node by node


def test_reports_of_a_command_that_does_not_settle_are_confirmed_per_node_together() -> None:
    clock = Clock()
    c = Confirmations({1: 3, 2: 3}.get, clock=clock)
    c.durable([("a", 1), ("a", 2), ("b", 1)], [(1, done("a")), (2, done("a")), (1, done("b"))])
    # An expired outcome is not a report: the command does not settle.
    c.durable([], [(1, done("c", CommandState.EXPIRED))])
    clock.now += HOLD / 2
    assert c.due() == {}  # it may still settle
    clock.now += HOLD
    assert c.due() == {"a": (1, 2), "b": (1,)}
    assert c.due() == {} and c.settled() == ()
