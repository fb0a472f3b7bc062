"""The live command chain without a bus: gaps by serial, fetched, filled in order, once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral import wire
from corral.core.command_chain import BODY_WAIT, TIP_WAIT, Chain, Fetch
from corral.core.node_commands import Journal, NodeCommands, Run, Send
from corral.states import CommandState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def body(serial: int, **kw: object) -> bytes:
    return wire.encode(wire.NodeCommand(serial=serial, kind="command", name="x", **kw))  # type: ignore[arg-type]


def live(serial: int, prev: int, nodes: tuple[str, ...] = ()) -> wire.LiveCommand:
    if nodes:
        return wire.LiveCommand(serial=serial, prev=prev, nodes=nodes)
    return wire.LiveCommand(serial=serial, prev=prev, body=body(serial, to_all=True))


def serials(taken: tuple[list[wire.NodeCommand], list[Fetch]]) -> list[int]:
    return [c.serial for c in taken[0]]


def joined(heard: int = 0, clock: Clock | None = None) -> Chain:
    chain = Chain("me", heard, clock=clock or Clock())
    chain.join(0, heard)
    return chain


def test_in_order_messages_are_handed_on_and_repeats_dropped() -> None:
    chain = joined()
    assert serials(chain.live(live(1, 0))) == [1]
    assert serials(chain.live(live(2, 1))) == [2]
    assert chain.live(live(2, 1)) == ([], [])  # a re-publication
    assert chain.heard == 2


def test_a_gap_is_fetched_and_the_held_ones_follow_it() -> None:
    chain = joined(3)
    commands, fetch = chain.live(live(7, 6))
    assert commands == [] and fetch == [Fetch(3, 6)]
    assert chain.live(live(8, 7)) == ([], [])  # held too; one fetch in flight
    # The controller's answer: this node's commands of the gap (5 was another node's).
    got = chain.fetched(Fetch(3, 6), 6, [body(4), body(6)])
    assert serials(got) == [4, 6, 7, 8] and got[1] == []
    assert chain.heard == 8 and not chain.held


def test_a_paged_answer_is_asked_again_from_where_it_stopped() -> None:
    chain = joined(0)
    _, fetch = chain.live(live(10, 9))
    assert fetch == [Fetch(0, 9)]
    commands, again = chain.fetched(Fetch(0, 9), 4, [body(2), body(4)])
    assert [c.serial for c in commands] == [2, 4] and again == [Fetch(4, 9)]
    commands, again = chain.fetched(Fetch(4, 9), 9, [body(9)])
    assert [c.serial for c in commands] == [9, 10] and again == []


def test_a_mark_waits_for_its_body_whichever_comes_first() -> None:
    clock = Clock()
    chain = joined(0, clock)
    direct = wire.NodeCommand(serial=2, kind="command", name="x")
    assert serials(chain.live(live(1, 0))) == [1]
    assert chain.live(live(2, 1, nodes=("me", "you"))) == ([], [])  # waits for the body
    assert chain.live(live(3, 2)) == ([], [])  # behind it
    assert serials(chain.direct(direct)) == [2, 3]
    # A body before its mark; a mark for others is passed over.
    assert chain.direct(wire.NodeCommand(serial=5, kind="command")) == ([], [])
    assert chain.live(live(4, 3, nodes=("you",))) == ([], [])
    assert serials(chain.live(live(5, 4, nodes=("me",)))) == [5]
    # A body that does not come is fetched.
    assert chain.live(live(6, 5, nodes=("me",))) == ([], [])
    clock.now += BODY_WAIT
    assert chain.tick() == [Fetch(5, 6)]
    assert serials(chain.fetched(Fetch(5, 6), 6, [body(6)])) == [6]


def test_an_announced_serial_not_heard_is_fetched_after_a_moment() -> None:
    clock = Clock()
    chain = joined(2, clock)
    assert chain.tip(5) == ([], [])  # may still be on its way
    assert serials(chain.live(live(3, 2))) == [3]
    clock.now += TIP_WAIT
    assert chain.tick() == [Fetch(3, 5)]


def test_nothing_is_handed_on_or_fetched_before_the_first_join() -> None:
    chain = Chain("me", 0, clock=Clock())
    assert chain.live(live(8, 7)) == ([], [])
    assert chain.live(live(9, 8)) == ([], [])
    # First join: broadcasts from serial 8 on were resolved knowing this node.
    assert serials(chain.join(8, 9)) == [8, 9]
    # A node that returns (known, first_serial 0) fetches what it missed at once.
    back = Chain("me", 3, clock=Clock())
    assert back.join(0, 9) == ([], [Fetch(3, 9)])


def test_the_core_runs_a_gap_in_order_before_what_followed_it() -> None:
    core = NodeCommands("me", 0, wall=lambda: 0.0, clock=Clock())
    core.join(0, 0)
    assert [a for a in core.live(live(1, 0)) if isinstance(a, Run)]
    out = core.live(live(3, 2))
    assert Fetch(1, 2) in out and not [a for a in out if isinstance(a, Run)]
    out = core.fetched(Fetch(1, 2), 2, [body(2, to_all=True)])
    # 1 still runs: 2 and 3 wait behind it, in order, not journaled while 1 is quick.
    assert core.queued == 2 and not [a for a in out if isinstance(a, Journal)]
    out = core.running(1)  # 1 is slow: what waits behind it goes to the journal
    assert [a.command.serial for a in out if isinstance(a, Journal)] == [1, 2, 3]
    assert [a.serial for a in out if isinstance(a, Send)] == [2, 3, 1]  # delivered, running
    runs = [a for a in core.finished(1, CommandState.DONE) if isinstance(a, Run)]
    assert [r.command.serial for r in runs] == [2]
    runs = [a for a in core.finished(2, CommandState.DONE) if isinstance(a, Run)]
    assert [r.command.serial for r in runs] == [3]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["all", "me", "you", "lost", "late"])),
        min_size=1,
        max_size=30,
    ),
    st.randoms(use_true_random=False),
)
def test_whatever_is_lost_or_late_each_command_is_handed_on_once_in_order(
    plan: list[tuple[bool, str]], rnd: object
) -> None:
    """A model controller publishes a chain; messages are lost, bodies come late or never;
    the node ends with exactly its own commands, in serial order."""
    clock = Clock()
    chain = joined(0, clock)
    mine: list[int] = []
    got: list[int] = []
    bodies: dict[int, bytes] = {}
    late: list[wire.NodeCommand] = []

    def perform(taken: tuple[list[wire.NodeCommand], list[Fetch]]) -> None:
        commands, fetches = taken
        got.extend(c.serial for c in commands)
        for ask in fetches:
            page = [bodies[s] for s in sorted(bodies) if ask.after < s <= ask.upto][:2]
            covered = ask.upto
            if len(page) == 2:
                covered = msgspec_serial(page[-1])
            perform(chain.fetched(ask, covered, page))

    for serial, (lose, kind) in enumerate(plan, start=1):
        if kind in ("all", "me", "lost", "late"):
            mine.append(serial)
            bodies[serial] = body(serial)
        msg = (
            live(serial, serial - 1)
            if kind == "all"
            else live(serial, serial - 1, nodes=("you",) if kind == "you" else ("me",))
        )
        if kind in ("me", "lost") and not lose:
            perform(chain.direct(wire.NodeCommand(serial=serial, kind="command")))
        if kind == "late":
            late.append(wire.NodeCommand(serial=serial, kind="command"))
        if not lose:
            perform(chain.live(msg))
        if late and serial % 3 == 0:
            perform(chain.direct(late.pop(0)))
    for command in late:
        perform(chain.direct(command))
    perform(chain.tip(len(plan)))
    for _ in range(5):
        clock.now += max(BODY_WAIT, TIP_WAIT)
        for ask in chain.tick():
            perform(
                chain.fetched(
                    ask, ask.upto, [bodies[s] for s in sorted(bodies) if ask.after < s <= ask.upto]
                )
            )
    assert got == mine


def msgspec_serial(data: bytes) -> int:
    return wire.decode(data, wire.NodeCommand, check_headers=False).serial
