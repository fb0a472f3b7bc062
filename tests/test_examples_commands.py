"""The runnable example of docs/commands.md, run as a user runs it: examples/commands/demo.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import scaled

DEMO = Path(__file__).resolve().parent.parent / "examples" / "commands" / "demo.py"


def test_the_commands_demo_runs_and_every_outcome_is_as_documented() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "#1 measure on 'spec*': {'done': 2}" in lines
    assert "  spec9  unknown  no such node" in lines
    assert lines[-1] == "as expected"
