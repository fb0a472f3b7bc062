"""The command book's expiry rules, by plain calls with a fake clock."""

from __future__ import annotations

import pytest

from corral.core.commands import CommandBook, CommandState, IllegalOutcome

S = CommandState


def test_pending_expires_after_the_retire_window_and_a_late_truth_replaces_it() -> None:
    book = CommandBook()
    command = book.issue(["a", "b"], now=0.0, retire_after=10.0)
    book.report(command.serial, "a", S.DONE, now=1.0, result=1)
    assert book.expire(now=10.0) == []  # not past the window yet
    expired = book.expire(now=10.5)
    assert [(s, o.node, o.state) for s, o in expired] == [(1, "b", S.EXPIRED)]
    assert "retire window" in command.outcomes["b"].error
    late = book.report(command.serial, "b", S.DONE, now=11.0, result=2)  # it ran after all
    assert late is not None and late.state is S.DONE and late.result == 2


def test_running_at_a_node_that_went_away_expires_and_a_live_one_does_not() -> None:
    book = CommandBook()
    command = book.issue(["up", "gone"], now=0.0, retire_after=5.0)
    book.report(command.serial, "up", S.RUNNING, now=1.0)
    book.report(command.serial, "gone", S.RUNNING, now=1.0)
    live = {"up": True, "gone": False}
    assert book.expire(now=5.5, live=live.__getitem__) == []  # heard of 4.5 s ago
    expired = book.expire(now=7.0, live=live.__getitem__)
    assert [(o.node, o.state) for _, o in expired] == [("gone", S.EXPIRED)]
    assert "went away while running it" in command.outcomes["gone"].error
    assert command.outcomes["up"].state is S.RUNNING  # still running where it is alive
    assert book.behind() == {}


def test_final_states_do_not_move_and_changes_are_snapshots() -> None:
    book = CommandBook()
    command = book.issue(["a"], now=0.0, retire_after=10.0)
    book.report(command.serial, "a", S.RUNNING, now=0.1, stdout="x")
    (change,) = book.take_changes()
    book.report(command.serial, "a", S.DONE, now=0.2, stdout="y", result="ok")
    assert change[1].state is S.RUNNING and change[1].stdout == "x"  # a copy, unmoved
    assert command.outcomes["a"].stdout == "xy"  # output accumulates
    with pytest.raises(IllegalOutcome, match="already reported done"):
        book.report(command.serial, "a", S.RUNNING, now=0.3)
    assert book.report(99, "a", S.DONE, now=0.4) is None  # a command the book forgot
