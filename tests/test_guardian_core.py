"""The guardian automaton and graph without a network: paths, jumps, modes, errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import GuardianRefused, UsageError
from corral.guardian.core import (
    TRANSITIONS,
    Automaton,
    Event,
    IllegalTransition,
    Mode,
    Phase,
    Requester,
    Status,
)
from corral.guardian.graph import Graph, StateInfo

PERSON = Requester("alice")
BOSS = Requester("BOSS", manager=True)
OTHER = Requester("OTHER_BOSS", manager=True)


def suspension() -> Graph:
    return Graph.build(
        [
            StateInfo("DOWN", goto=True),
            StateInfo("SAFE"),
            StateInfo("DAMPED"),
            StateInfo("ALIGNED"),
            StateInfo("TRIPPED", request=False),
            StateInfo("MISALIGNED"),
        ],
        [
            ("DOWN", "SAFE"),
            ("SAFE", "DAMPED"),
            ("DAMPED", "ALIGNED"),
            ("SAFE", "MISALIGNED"),
            ("MISALIGNED", "ALIGNED"),
            ("TRIPPED", "DOWN"),
        ],
    )


def drive(a: Automaton, results: dict[tuple[str, str], object] | None = None, limit: int = 50):
    """Run steps (user code replaced by a table of results; default main None, run True)
    until the automaton holds; return the states entered in order."""
    results = results or {}
    seen = [a.state]
    for _ in range(limit):
        step = a.next_step()
        if step is None or (a.phase is Phase.DONE):
            break
        default = None if step.method == "main" else True
        a.step_done(step, results.get((step.state, step.method), default))
        if a.state != seen[-1]:
            seen.append(a.state)
    return seen


def test_shortest_path_prefers_fewest_edges_then_declaration_order() -> None:
    g = suspension()
    assert g.path("DOWN", "ALIGNED") == ["DOWN", "SAFE", "DAMPED", "ALIGNED"]
    assert g.path("ALIGNED", "DOWN") == ["ALIGNED", "DOWN"]  # implicit goto edge
    assert g.path("ALIGNED", "SAFE") == ["ALIGNED", "DOWN", "SAFE"]
    assert g.path("DOWN", "DOWN") == ["DOWN"]
    assert Graph.build([StateInfo("A"), StateInfo("B")], []).path("A", "B") is None


def test_graph_refuses_unknown_edge_ends_and_empty_systems() -> None:
    with pytest.raises(UsageError, match="unknown state 'NOPE'"):
        Graph.build([StateInfo("A")], [("A", "NOPE")])
    with pytest.raises(UsageError, match="at least one GuardState"):
        Graph.build([], [])


def test_walks_the_shortest_path_running_main_then_run() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    assert drive(a) == ["DOWN"] and a.arrived
    a.set_request("ALIGNED", PERSON)  # DOWN is done: the first edge is followed at once
    assert (a.state, a.phase, a.path) == ("SAFE", Phase.ENTER, ["DAMPED", "ALIGNED"])
    assert drive(a) == ["SAFE", "DAMPED", "ALIGNED"]
    assert a.arrived and a.status is Status.OK and a.path == []


def test_run_repeats_until_true_and_holding_runs_again_one_cycle_later() -> None:
    a = Automaton("SUS", suspension(), "DOWN", request="SAFE")
    step = a.next_step()
    assert step is not None and step.method == "main" and not step.wait
    a.step_done(step, None)
    step = a.next_step()
    assert step is not None and (step.state, step.method, step.wait) == ("DOWN", "run", False)
    a.step_done(step, True)  # DOWN done: follow the edge to SAFE
    assert (a.state, a.phase) == ("SAFE", Phase.ENTER)
    a.step_done(a.next_step(), None)  # type: ignore[arg-type]
    a.step_done(a.next_step(), False)  # type: ignore[arg-type]
    step = a.next_step()
    assert step is not None and step.wait and a.phase is Phase.RUN and not a.arrived
    a.step_done(step, True)
    assert a.arrived
    step = a.next_step()
    assert step is not None and step.method == "run" and step.wait  # held: keep checking


def test_jump_in_auto_recovers_to_the_request() -> None:
    a = Automaton("SUS", suspension(), "DOWN", request="ALIGNED")
    drive(a)
    assert a.arrived
    step = a.next_step()
    assert step is not None
    a.step_done(step, "TRIPPED")  # a fault: jump
    assert a.state == "TRIPPED" and not a.stalled and a.status is Status.OK
    assert drive(a) == ["TRIPPED", "DOWN", "SAFE", "DAMPED", "ALIGNED"]
    assert a.arrived


def test_jump_in_managed_stalls_until_revived_or_re_requested() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    a.set_mode(Mode.MANAGED, BOSS)
    a.set_request("ALIGNED", BOSS)
    drive(a)
    a.step_done(a.next_step(), "TRIPPED")  # type: ignore[arg-type]
    assert a.stalled and a.status is Status.STALLED
    assert drive(a) == ["TRIPPED"]  # holds where it jumped
    assert a.state == "TRIPPED" and a.path == []
    a.revive(BOSS)
    assert not a.stalled and drive(a)[-1] == "ALIGNED" and a.arrived
    a.step_done(a.next_step(), "TRIPPED")  # type: ignore[arg-type]
    assert a.stalled
    a.set_request("DAMPED", BOSS)  # a new request also revives
    assert drive(a)[-1] == "DAMPED" and a.arrived


def test_goto_request_goes_at_once_and_discards_the_running_step() -> None:
    a = Automaton("SUS", suspension(), "DOWN", request="ALIGNED")
    drive(a)
    running = a.next_step()  # ALIGNED.run() is running on the worker...
    a.set_request("DOWN", PERSON)  # ...when a person asks for DOWN
    assert (a.state, a.phase) == ("DOWN", Phase.ENTER)
    assert running is not None and not a.step_done(running, "TRIPPED")  # stale: ignored
    assert a.state == "DOWN"


def test_user_code_raising_is_error_until_a_request_clears_it() -> None:
    a = Automaton("SUS", suspension(), "DOWN", request="SAFE")
    a.step_done(a.next_step(), None)  # type: ignore[arg-type]
    a.step_failed(a.next_step(), "Traceback...\nValueError: boom")  # type: ignore[arg-type]
    assert a.status is Status.ERROR and "boom" in a.error and a.next_step() is None
    a.set_request("SAFE", PERSON)
    assert a.status is Status.OK and a.error == "" and a.phase is Phase.ENTER
    assert drive(a)[-1] == "SAFE"


def test_bad_return_values_and_unknown_jumps_are_errors() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    a.step_done(a.next_step(), 42)  # type: ignore[arg-type]
    assert a.status is Status.ERROR and "returned 42" in a.error
    a.revive(PERSON)
    a.step_done(a.next_step(), "NOWHERE")  # type: ignore[arg-type]
    assert a.status is Status.ERROR and "'NOWHERE', which is not a state" in a.error


def test_requests_refused_clearly() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    with pytest.raises(GuardianRefused, match="no state 'UP'.*states: DOWN, SAFE"):
        a.set_request("UP", PERSON)
    with pytest.raises(GuardianRefused, match="'TRIPPED'.*cannot be requested"):
        a.set_request("TRIPPED", PERSON)
    a.set_mode(Mode.MANUAL, PERSON)
    with pytest.raises(GuardianRefused, match="MANUAL mode"):
        a.set_request("SAFE", BOSS)
    a.set_request("SAFE", PERSON)
    assert a.request == "SAFE"


def test_managed_ownership_is_recorded_and_defended() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    a.set_mode(Mode.MANAGED, BOSS)
    assert a.manager == "BOSS"
    with pytest.raises(GuardianRefused, match="managed by BOSS; OTHER_BOSS cannot take it"):
        a.set_mode(Mode.MANAGED, OTHER)
    with pytest.raises(GuardianRefused, match="MANAGED by BOSS.*alice"):
        a.set_request("SAFE", PERSON)
    with pytest.raises(GuardianRefused, match="MANAGED by BOSS"):
        a.set_request("SAFE", OTHER)
    a.set_mode(Mode.MANAGED, PERSON)  # a person may hold it too, and request as its holder
    with pytest.raises(GuardianRefused, match="MANAGED by alice.*manager BOSS"):
        a.set_request("SAFE", BOSS)
    a.set_request("SAFE", PERSON)
    a.set_mode(Mode.AUTO, PERSON)  # a person takes it back
    assert a.manager == "" and a.mode is Mode.AUTO
    a.set_mode(Mode.MANUAL, PERSON)
    with pytest.raises(GuardianRefused, match="a person must change it back"):
        a.set_mode(Mode.MANAGED, BOSS)


def test_pause_runs_nothing_but_takes_requests() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    a.set_paused(True)
    assert a.next_step() is None
    a.set_request("ALIGNED", PERSON)
    assert a.next_step() is None and a.request == "ALIGNED"
    a.set_paused(False)
    assert drive(a)[-1] == "ALIGNED"


def test_reload_keeps_state_and_refuses_a_system_without_it() -> None:
    a = Automaton("SUS", suspension(), "DOWN", request="DAMPED")
    drive(a)
    with pytest.raises(GuardianRefused, match="no state 'DAMPED'"):
        a.reloaded(Graph.build([StateInfo("DOWN", goto=True)], []))
    assert a.graph.names[0] == "DOWN" and "DAMPED" in a.graph
    a.reloaded(suspension())
    assert (a.state, a.phase, a.request) == ("DAMPED", Phase.ENTER, "DAMPED")


def test_notifications_show_until_a_run_stops_raising_them() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    a.step_done(a.next_step(), None, ("check the coils",))  # type: ignore[arg-type]
    assert a.status is Status.NOTIFICATION
    a.step_done(a.next_step(), True, ("check the coils",))  # type: ignore[arg-type]
    assert a.notifications == ("check the coils",)
    a.step_done(a.next_step(), True)  # type: ignore[arg-type]
    assert a.notifications == () and a.status is Status.OK


def test_illegal_transition_raises() -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    with pytest.raises(IllegalTransition):
        a._apply(Event.EDGE)  # ENTER + EDGE is not in the table
    assert all(isinstance(p, Phase) for p in TRANSITIONS.values())


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["request", "jump", "raise", "step", "mode", "pause"]),
            st.sampled_from(["DOWN", "SAFE", "DAMPED", "ALIGNED", "TRIPPED", "MISALIGNED"]),
            st.booleans(),
        ),
        max_size=40,
    )
)
def test_any_sequence_keeps_the_automaton_consistent(ops: list[tuple[str, str, bool]]) -> None:
    a = Automaton("SUS", suspension(), "DOWN")
    for op, state, flag in ops:
        who = BOSS if flag else PERSON
        try:
            if op == "request":
                a.set_request(state, who)
            elif op == "mode":
                a.set_mode(Mode.MANAGED if flag else Mode.AUTO, who)
            elif op == "pause":
                a.set_paused(flag)
            elif (step := a.next_step()) is not None:
                if op == "jump":
                    a.step_done(step, state)
                elif op == "raise":
                    a.step_failed(step, "boom")
                else:
                    a.step_done(step, flag or None)
        except GuardianRefused:
            pass
        assert a.state in a.graph and a.request in a.graph
        assert (a.status is Status.ERROR) == (a.phase is Phase.ERROR)
        assert not (a.manager and a.mode is not Mode.MANAGED)
        assert a.path == [] or a.path[-1] == a.request
