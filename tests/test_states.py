"""The states on the wire: one StrEnum per machine, one table each, one IllegalTransition."""

from __future__ import annotations

import pytest

from corral import errors, states
from corral.core import commands, registry, taskstate
from corral.core.taskstate import TaskInstance, move
from corral.guardian import core as guardian_core
from corral.guardian import machine


def test_the_values_are_the_strings_the_wire_always_carried() -> None:
    assert list(states.NodeStatus) == ["UP", "DOWN", "LEFT", "REVOKED"]
    assert list(states.CommandState) == [
        "pending",
        "delivered",
        "running",
        "done",
        "failed",
        "expired",
    ]
    assert list(states.TaskStatus) == [
        "queued",
        "assigned",
        "running",
        "cancel-requested",
        "cancelled",
        "complete",
        "failed",
    ]
    assert list(states.TaskOutcome) == ["complete", "failed", "stopped"]
    assert list(states.GuardianMode) == ["AUTO", "MANAGED", "MANUAL"]
    assert "CONNECTION_ERROR" in list(states.GuardianStatus)


def test_the_old_names_are_the_same_objects() -> None:
    assert registry.NodeStatus is states.NodeStatus
    assert commands.CommandState is states.CommandState
    assert taskstate.TaskStatus is states.TaskStatus
    assert machine.Mode is states.GuardianMode and machine.Status is states.GuardianStatus
    for module in (registry, machine, guardian_core):
        assert module.IllegalTransition is errors.IllegalTransition
    assert commands.IllegalOutcome is errors.IllegalTransition
    assert issubclass(errors.IllegalTransition, errors.CorralError)


def test_every_table_is_made_of_its_own_enum() -> None:
    for old, new in registry.TRANSITIONS:
        assert old is None or isinstance(old, states.NodeStatus)
        assert isinstance(new, states.NodeStatus)
    for table, enum in (
        (commands.TRANSITIONS, states.CommandState),
        (taskstate.TRANSITIONS, states.TaskStatus),
    ):
        assert set(table) == set(enum)  # every state has its row, final ones an empty one
        assert all(isinstance(s, enum) for moves in table.values() for s in moves)


def test_the_task_and_command_machines_raise_the_one_illegal_transition() -> None:
    # (the registry's: tests/test_registry.py; the guardian's: tests/test_guardian_core.py)
    inst = TaskInstance(id=1, key="k", status=states.TaskStatus.COMPLETE)
    with pytest.raises(errors.IllegalTransition, match="cannot go from complete to running"):
        move(inst, states.TaskStatus.RUNNING)
    book = commands.CommandBook()
    book.issue(["n1"], 0.0, 10.0)
    book.report(1, "n1", states.CommandState.DONE, 1.0)
    with pytest.raises(errors.IllegalTransition, match="already reported done"):
        book.report(1, "n1", states.CommandState.RUNNING, 2.0)
