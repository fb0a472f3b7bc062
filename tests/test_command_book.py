"""The command book's tally: settled and waiting without walking every outcome (no I/O)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from corral.core.commands import (
    TRANSITIONS,
    CommandBook,
    CommandState,
    IllegalOutcome,
    Outcome,
    TrackedCommand,
)

S = CommandState
NODES = ["a", "b", "c"]


def counted(command: TrackedCommand) -> dict[CommandState, int]:
    """The tally the slow way, from the outcomes themselves."""
    out = dict.fromkeys(CommandState, 0)
    for o in command.outcomes.values():
        out[o.state] += 1
    return out


def test_a_command_is_settled_once_every_node_is_final_or_expired() -> None:
    book = CommandBook()
    command = book.issue(NODES, now=0.0, retire_after=10.0)
    assert command.waiting == 3 and not command.settled
    book.report(1, "a", S.DONE, 1.0)
    book.report(1, "b", S.RUNNING, 1.0)
    assert command.waiting == 1 and not command.settled
    book.report(1, "b", S.FAILED, 2.0, error="boom")
    assert book.expire(now=20.0) == [(1, command.outcomes["c"])]
    assert command.waiting == 0 and command.settled
    assert book.behind() == {}
    assert book.forget(now=20.0, keep=5.0) == [1]


def test_expire_skips_commands_nobody_waits_for_and_behind_counts_the_rest() -> None:
    book = CommandBook()
    book.issue(["a"], now=0.0, retire_after=1.0)
    book.issue(["a", "b"], now=0.0, retire_after=100.0)
    book.report(1, "a", S.DONE, 0.5)
    assert book.expire(now=5.0) == []  # #1 is answered, #2 is within its window
    assert book.behind() == {"a": 1, "b": 1}


def test_a_command_filled_from_the_store_is_counted_when_tracked() -> None:
    command = TrackedCommand(7, created=0.0, retire_after=10.0)
    command.outcomes["a"] = Outcome("a", S.DONE)
    command.tally()  # counted before the next outcome was added from outside
    command.outcomes["b"] = Outcome("b", S.PENDING)
    book = CommandBook()
    book.track(command)
    assert command.waiting == 1 and not command.settled
    assert book.last_serial == 7


@given(
    st.lists(
        st.tuples(st.sampled_from(NODES), st.sampled_from(list(CommandState)), st.booleans()),
        max_size=40,
    )
)
def test_the_tally_always_matches_the_outcomes(moves: list[tuple[str, S, bool]]) -> None:
    book = CommandBook()
    command = book.issue(NODES, now=0.0, retire_after=5.0)
    for node, state, expire in moves:
        if expire:
            book.expire(now=10.0)
        try:
            book.report(1, node, state, 1.0)
        except IllegalOutcome:
            assert state not in TRANSITIONS[command.outcomes[node].state]
        assert command.tally() == counted(command)
        assert command.settled == all(
            o.state in (S.DONE, S.FAILED, S.EXPIRED) for o in command.outcomes.values()
        )


def test_only_a_target_may_report_and_a_stranger_is_told_apart_from_a_forgotten_command() -> None:
    book = CommandBook()
    command = book.issue(["a", "b"], 0.0, 60.0)
    assert not book.stranger(command.serial, "a") and book.stranger(command.serial, "c")
    assert not book.stranger(command.serial + 1, "c")  # not followed: nothing to protect
    assert book.report(command.serial, "c", S.DONE, 1.0, result="forged") is None
    assert set(command.outcomes) == {"a", "b"} and book.take_changes() == []


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 500)), max_size=30))
def test_serials_never_go_back_whatever_the_nodes_say(events: list[tuple[bool, int]]) -> None:
    """Issued serials strictly increase and stay above every serial a node said it applied."""
    book = CommandBook(last_serial=7)
    issued: list[int] = []
    highest_claim = 7
    for issue, claim in events:
        if issue:
            serial = book.issue(["a"], 0.0, 60.0).serial
            assert serial > highest_claim and all(serial > s for s in issued)
            issued.append(serial)
        else:
            raised = book.continue_above(claim)
            assert raised == (claim > max([highest_claim, *issued]))
            highest_claim = max(highest_claim, claim)
