"""``corral launch -n N -- COMMAND``: start N local members of a process group (like mpirun)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from typing import Annotated

import typer

from corral import subjects
from corral.cli.common import at_least, configure, err, run

__all__ = ["PYTHONS", "program", "register"]


async def _pump(stream: asyncio.StreamReader, rank: int, out: int) -> None:
    """Copy ``stream`` to our stdout (1) or stderr (2), each line prefixed with the rank."""
    target = sys.stdout.buffer if out == 1 else sys.stderr.buffer
    prefix = f"[{rank}] ".encode()
    while line := await stream.readline():
        target.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        target.flush()


async def _launch(count: int, command: list[str], env: dict[str, str]) -> int:
    procs = []
    pumps = []
    for rank in range(count):
        proc = await asyncio.create_subprocess_exec(
            *command,
            env={**env, "CORRAL_GROUP_RANK": str(rank)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None and proc.stderr is not None
        pumps += [_pump(proc.stdout, rank, 1), _pump(proc.stderr, rank, 2)]
        procs.append(proc)
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward, sig)
    await asyncio.gather(*pumps)  # until every member closed its output
    codes = [await p.wait() for p in procs]
    failed = [(rank, code) for rank, code in enumerate(codes) if code != 0]
    for rank, code in failed:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        err.print(f"[red]rank {rank} failed ({how})[/]")
    return 1 if failed else 0


#: Program names that mean "the Python corral runs on" (its virtual environment included).
PYTHONS = ("python", "python3")


def program(command: list[str]) -> list[str]:
    """``command`` with a bare ``python``/``python3`` replaced by ``sys.executable``, so the
    members run on corral's own Python (and venv) whether or not that venv is active."""
    if command and command[0] in PYTHONS:
        return [sys.executable, *command[1:]]
    return command


def launch(
    command: Annotated[list[str], typer.Argument(help="The program and its arguments.")],
    count: Annotated[
        int,
        typer.Option(
            "-n",
            "--count",
            help="Members to start (1 or more).",
            callback=at_least(1, "a group needs at least one member: give -n 1 or more"),
        ),
    ] = 2,
    name: Annotated[str | None, typer.Option(help="Group name (default: launch-<random>).")] = None,
) -> None:
    """Start N members of a process group on this machine, like mpirun.

    Each member gets CORRAL_GROUP, CORRAL_GROUP_SIZE, CORRAL_GROUP_RANK and CORRAL_GROUP_RUN in
    its environment, so `await Group.join()` needs no arguments. Output lines are prefixed with
    the rank; the exit status is non-zero if any member failed. A bare `python` or `python3`
    runs the Python corral runs on (its virtual environment, active or not).

    Example: `corral launch -n 8 -- python sweep.py`
    """
    config, _ = configure(daemon=True)
    group = subjects.check_name(name or f"launch-{uuid.uuid4().hex[:8]}", "group")
    env = {
        **os.environ,
        "CORRAL_DATA_DIR": str(config.data_path),
        "CORRAL_GROUP": group,
        "CORRAL_GROUP_SIZE": str(count),
        "CORRAL_GROUP_RUN": uuid.uuid4().hex[:12],
    }
    raise typer.Exit(run(_launch(count, program(command), env)))


def register(app: typer.Typer) -> None:
    """Add this command to ``app``."""
    app.command(context_settings={"allow_interspersed_args": False})(launch)
