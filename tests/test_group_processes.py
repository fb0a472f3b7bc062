"""Process groups with real processes started by `corral launch`, including a kill -9."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import child_env, corral_argv, scaled
from corral.config import Config
from corral.controller import Controller

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from corral.sync import Group

    g = Group.join(startup_timeout=30)
    print("joined", g.rank, g.size, flush=True)
    print("first", g.barrier(timeout=30), flush=True)
    if g.rank == 3:
        os.kill(os.getpid(), signal.SIGKILL)   # a crash: no goodbye
    start = time.monotonic()
    reached = g.barrier(timeout=30)
    print("second", reached, round(time.monotonic() - start, 1), flush=True)
    rows = g.collect({"rank": g.rank})
    if g.rank == 0:
        print("collected", [r and r["rank"] for r in rows], rows.missing, flush=True)
    print("params", g.distribute({"lr": 0.1} if g.rank == 0 else None)["lr"], flush=True)
    g.leave()
    """
)


def launch(config: Config, tmp: Path, n: int, script: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "member.py"
    path.write_text(script)
    return subprocess.run(
        corral_argv(config, "launch", "-n", str(n), "--", sys.executable, str(path)),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(90),
    )


async def test_kill_9_of_one_of_8_members(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    started = time.monotonic()
    # In a thread: the coordinator runs in this test's event loop and must keep serving.
    result = await asyncio.to_thread(launch, config, tmp_path, 8, SCRIPT)
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stderr  # rank 3 was killed
    assert "rank 0 failed" not in result.stderr, result.stderr
    assert "rank 3 failed (killed by SIGKILL)" in result.stderr.replace("\n", " ")
    survivors = [0, 1, 2, 4, 5, 6, 7]
    for rank in survivors:
        assert f"[{rank}] first [0, 1, 2, 3, 4, 5, 6, 7]" in lines
        (second,) = [line for line in lines if line.startswith(f"[{rank}] second")]
        assert second.startswith(f"[{rank}] second {survivors}")
        # Detected within the silence (down_after) plus a heartbeat, not TCP's minutes.
        assert float(second.split()[-1]) <= scaled(config.down_after + 1.5)
        assert f"[{rank}] params 0.1" in lines
    assert "[0] collected [0, 1, 2, None, 4, 5, 6, 7] (3,)" in lines
    assert time.monotonic() - started < scaled(60)


async def test_launch_without_a_controller_fails_clearly(
    broker: object, config: Config, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(
        launch, config, tmp_path, 2, "from corral.sync import Group\nGroup.join()\n"
    )
    assert result.returncode == 1
    assert "no group coordinator answers" in result.stdout + result.stderr


async def test_socketcomm_compat(controller: Controller, config: Config, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os
        from corral.compat.socketcomm import Comm
        comm = Comm(3, int(os.environ["CORRAL_GROUP_RANK"]), "host", 9021, timeout=30)
        print("barrier", comm.barrier(), flush=True)
        print("collect", comm.collect(comm.procNum * 10), flush=True)
        print("distribute", comm.distribute("go" if comm.procNum == 0 else None), flush=True)
        comm.close()
        """
    )
    result = await asyncio.to_thread(launch, config, tmp_path, 3, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[0] collect [0, 10, 20]" in lines and "[1] collect None" in lines
    assert all(f"[{r}] distribute go" in lines for r in range(3))
    assert all(f"[{r}] barrier [0, 1, 2]" in lines for r in range(3))


async def test_two_of_eight_never_start_and_the_six_are_renumbered(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    # Six Python processes start on two cores: give the last one time to import and join.
    script = textwrap.dedent(
        f"""
        import os, sys
        from corral.sync import Group
        if int(os.environ["CORRAL_GROUP_RANK"]) in (2, 5):
            sys.exit(0)                      # these two never start
        g = Group.join(startup_timeout={scaled(6)}, allow_startup_failures=True)
        print("member", g.rank, g.size, flush=True)
        print("barrier", g.barrier(timeout=30), flush=True)
        g.leave()
        """
    )
    result = await asyncio.to_thread(launch, config, tmp_path, 8, script)
    assert result.returncode == 0, result.stderr
    members = sorted(
        line.split("] ", 1)[1] for line in result.stdout.splitlines() if "] member" in line
    )
    assert members == [f"member {r} 6" for r in range(6)]
    assert result.stdout.count("barrier [0, 1, 2, 3, 4, 5]") == 6
