"""A member's out-of-step call costs it that call only (issue #12, item 9): real processes
started by `corral launch`, a real nats-server and the controller as coordinator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import child_env, corral_argv, scaled
from corral.config import Config
from corral.controller import Controller

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from corral.errors import GroupRefused
    from corral.sync import Group

    go = sys.argv[1]
    g = Group.join(startup_timeout=30)
    if g.rank == 3:
        deadline = time.monotonic() + 60
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.02)  # the test creates it once the others wait at barrier #1
        try:
            g.collect("early", timeout=30)
        except GroupRefused as exc:
            print("refused", exc, flush=True)
    reached = g.barrier(timeout=30)
    print("reached", g.rank, list(reached), reached.left_out, flush=True)
    rows = g.collect(g.rank * 10, timeout=30)
    if g.rank == 0:
        print("collected", list(rows), rows.missing, flush=True)
    g.leave()
    """
)


async def test_an_out_of_step_member_calls_again_and_is_counted(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    script, go = tmp_path / "member.py", tmp_path / "go"
    script.write_text(SCRIPT)
    argv = corral_argv(config, "launch", "-n", "4", "--", sys.executable, str(script), str(go))
    run = asyncio.create_task(
        asyncio.to_thread(
            subprocess.run,
            argv,
            env=child_env(config),
            capture_output=True,
            text=True,
            timeout=scaled(90),
        )
    )
    assert controller.groups is not None
    async with asyncio.timeout(scaled(60)):  # ranks 0-2 wait at barrier #1
        while not any(
            g.round is not None and len(g.round.arrived) == 3
            for g in controller.groups.groups.values()
        ):
            await asyncio.sleep(0.02)
    go.touch()
    result = await run
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split("] ", 1)[1] for line in result.stdout.splitlines()]  # "[rank] ..."
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 1
    assert "called collect #1 while the group is at barrier #1" in refused[0]
    assert "call again at collective #1" in refused[0]
    # The refused member was counted at the barrier, by everyone, and stayed in step.
    assert sorted(line for line in lines if line.startswith("reached")) == [
        f"reached {rank} [0, 1, 2, 3] {{}}" for rank in range(4)
    ]
    assert "collected [0, 10, 20, 30] ()" in lines
