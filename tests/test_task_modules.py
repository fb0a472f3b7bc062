"""Which task modules a node's workers load: --tasks, then the corral.tasks entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.node.workers import task_modules
from corral.tasks import REGISTRY, TaskContext, current, task


def test_entry_points_of_installed_packages_are_loaded_after_the_explicit_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "imaging-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: imaging\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[corral.tasks]\nimaging = imaging_tasks\nagain = taskmods.basic\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert task_modules(("taskmods.basic",)) == ("taskmods.basic", "imaging_tasks")


def test_task_registers_under_its_key_and_refuses_a_taken_one() -> None:
    @task(key="test-only-key")
    def first() -> int:
        return 1

    assert REGISTRY["test-only-key"].fn is first and first() == 1
    assert not REGISTRY["test-only-key"].wants_ctx

    def other() -> None:
        pass

    with pytest.raises(UsageError, match="already taken"):
        task(key="test-only-key")(other)
    del REGISTRY["test-only-key"]


def test_context_outside_a_worker() -> None:
    with pytest.raises(UsageError, match="outside a running task"):
        current()
    ctx = TaskContext(1, "k")
    ctx.progress(5, 10, "half")  # no node to tell: harmless
    assert not ctx.stop_requested
    ctx.request_stop()
    with pytest.raises(Exception, match="asked to stop"):
        ctx.check_stop()
    with pytest.raises(UsageError, match="inside a task run by a node worker"):
        ctx.map("square", [{"x": 1}])
    assert ctx.map("square", []) == []
