"""socketComm (seed 001): point-to-point ``writeDataTo`` / ``readDataFrom`` and ``info``,
written as socketComm's users wrote them, in real processes started by ``corral launch``."""

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


def launch(config: Config, tmp: Path, n: int, script: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "member.py"
    path.write_text(textwrap.dedent(script))
    return subprocess.run(
        corral_argv(config, "launch", "-n", str(n), "--", sys.executable, str(path)),
        env=child_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(90),
    )


async def test_write_data_to_and_read_data_from_between_two_ranks(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    script = """
        import os
        from corral.compat.socketcomm import Comm
        s = Comm(2, int(os.environ["CORRAL_GROUP_RANK"]), "localhost", 9021, timeout=30)
        big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
        if s.procNum == 0:
            for i in range(5):
                s.writeDataTo(1, {"job": i})          # positional, as socketComm's callers
            s.writeDataTo(procNum=1, msg=big)         # keyword: socketComm's own names
            print("answer", s.readDataFrom(1), flush=True)
        else:
            print("jobs", [s.readDataFrom(0)["job"] for _ in range(5)], flush=True)
            print("big", s.readDataFrom(procNum=0) == big, flush=True)
            s.writeDataTo(0, "done")
        me = s.info(s.procNum)
        print("info", me["rank"], me["size"], me["state"], me["pid"] == os.getpid(), flush=True)
        s.barrier()
        s.close()
    """
    result = await asyncio.to_thread(launch, config, tmp_path, 2, script)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "[1] jobs [0, 1, 2, 3, 4]" in lines
    assert "[1] big True" in lines and "[0] answer done" in lines
    assert "[0] info 0 2 alive True" in lines and "[1] info 1 2 alive True" in lines


async def test_read_data_from_a_killed_rank_errors_clearly(
    controller: Controller, config: Config, tmp_path: Path
) -> None:
    script = """
        import os, signal
        from corral.compat.socketcomm import Comm
        from corral.errors import GroupRefused
        s = Comm(2, int(os.environ["CORRAL_GROUP_RANK"]), "localhost", 9021, timeout=60)
        s.barrier()
        if s.procNum == 1:
            s.writeDataTo(0, "before the crash")
            os.kill(os.getpid(), signal.SIGKILL)
        print("got", s.readDataFrom(1), flush=True)
        try:
            s.readDataFrom(1)
        except GroupRefused as exc:
            print("refused", exc, flush=True)
        print("state", s.info(1)["state"], flush=True)
        s.close()
    """
    result = await asyncio.to_thread(launch, config, tmp_path, 2, script)
    lines = result.stdout.splitlines()
    assert "[0] got before the crash" in lines, result.stdout + result.stderr
    assert any(
        line.startswith("[0] refused rank 1 of group") and "died" in line for line in lines
    ), result.stdout
    assert "[0] state dead" in lines
