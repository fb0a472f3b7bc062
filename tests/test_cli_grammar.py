"""One CLI grammar (issue #16): options after the command, --json on every listing, --wait
SECONDS, names never cut, counts validated with the fix, launch on corral's Python, one
startup message and live lines from a non-TTY `corral up`. Real `corral` processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

from conftest import child_env, free_port, scaled
from corral.cli.common import (
    GLOBALS,
    AsJson,
    CorralGroup,
    DataDir,
    configure,
    connects,
    print_table,
)
from corral.config import Config
from corral.controller import Controller
from corral.guardian import Guardian
from corral.node import Node
from corral.security import Authority
from corral.tokens import Role
from tasks_fixtures import node as task_node  # noqa: F401 - fixture
from tasks_fixtures import token_for
from test_guardian import start, system

LONG_NAME = "rack42-gpu-worker-named-longer-than-an-80-column-table-allows-01"


def bare(*args: str) -> list[str]:
    """``python -m corral ARGS``: no global option before the command."""
    return [sys.executable, "-m", "corral", *args]


async def corral(
    config: Config, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``corral ARGS`` (global options, if any, after the command) in a thread."""
    return await asyncio.to_thread(
        subprocess.run,
        bare(*args),
        env={**child_env(config), "COLUMNS": "80", **(env or {})},
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


async def joined(config: Config, name: str) -> Node:
    """An in-process node ``name``, joined."""
    path = config.data_path / "grammar.creds"
    path.write_text(Authority.load(config.data_path).enroll(name))
    node = Node(config, name, creds=path)
    await node.start()
    await node.wait_joined()
    return node


async def test_options_after_the_command_and_a_name_never_cut_in_a_pipe(
    controller: Controller, config: Config
) -> None:
    node = await joined(config, LONG_NAME)
    try:
        data = ("--data-dir", str(config.data_path))
        # Global options after the command (they were refused: "No such option").
        listed = await corral(config, "nodes", "--json", *data)
        assert listed.returncode == 0, listed.stderr
        assert [n["name"] for n in json.loads(listed.stdout)] == [LONG_NAME]
        # A pipe 80 columns wide: the table is as wide as it needs, the name whole.
        table = await corral(config, "nodes", *data)
        assert table.returncode == 0, table.stderr
        assert LONG_NAME in table.stdout and "…" not in table.stdout
        # After the command wins over before it; both are accepted.
        shown = await corral(
            config, "--data-dir", "/nonexistent", "config", "show", "--json", *data
        )
        assert json.loads(shown.stdout)["data_dir"] == str(config.data_path)
        # The connection options are on every command that talks to the controller.
        elsewhere = await corral(config, "nodes", *data, "--nats", "nats://127.0.0.1:1")
        assert elsewhere.returncode == 1 and "nats://127.0.0.1:1" in elsewhere.stderr
    finally:
        await node.stop()


async def test_every_listing_takes_json(
    controller: Controller,
    config: Config,
    task_node: Node,  # noqa: F811
) -> None:
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    data = ("--data-dir", str(config.data_path))
    api = ("--api", controller.api.url, "--token", token)
    listings: list[tuple[str, ...]] = [
        ("version",),
        ("nodes",),
        ("agents", "--wait", "0.2"),
        ("commands",),
        ("config", "show"),
        ("token", "list"),
        ("user", "list"),
        ("tasks", *api),
        ("queue-list", *api),
        ("running", *api),
        ("history", "echo", *api),
    ]
    for args in listings:
        done = await corral(config, *args, "--json", *data)
        assert done.returncode == 0, (args, done.stderr)
        json.loads(done.stdout)  # the whole output is one JSON document


async def test_guardian_list_takes_json(
    hosted: list[Guardian], config: Config, tmp_path: Path
) -> None:
    await start(hosted, config, system(tmp_path), "sus")
    done = await corral(config, "guardian", "list", "--json", "--data-dir", str(config.data_path))
    assert done.returncode == 0, done.stderr
    (view,) = json.loads(done.stdout)
    assert view["name"] == "sus" and view["seen_status"] in ("OK", "NOTIFICATION")
    for args in (("show", "sus"), ("top",)):
        shown = await corral(
            config, "guardian", *args, "--json", "--data-dir", str(config.data_path)
        )
        assert shown.returncode == 0, shown.stderr
        document = json.loads(shown.stdout)
        assert "sus" in json.dumps(document), document


async def test_queue_wait_takes_seconds_and_prints_the_result(
    controller: Controller,
    config: Config,
    task_node: Node,  # noqa: F811
) -> None:
    assert controller.api is not None
    token = await token_for(controller, Role.OPERATE)
    args = ("--data-dir", str(config.data_path), "--api", controller.api.url, "--token", token)
    waited = await corral(config, "queue", "echo", "value=7", "--wait", "30", *args)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["value"] == 7
    # Not silent: a pipe gets one plain line saying what it waits for.
    assert "waiting up to 30 s" in waited.stderr
    # `--wait` alone, as before, still waits (up to an hour).
    alone = await corral(config, "queue", "--wait", "echo", "value=8", *args)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(alone.stdout)["value"] == 8
    bad = await corral(config, "queue", "echo", "--wait", "-1", *args)
    assert bad.returncode == 2 and "--wait" in bad.stderr


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (("up", "--nodes", "-1"), "--nodes 0"),
        (("launch", "-n", "0", "--", "true"), "-n 1"),
        (("node", "--name", "x", "--slots", "-2"), "--slots 0"),
        (("commands", "--limit", "0"), "--limit"),
    ],
)
async def test_counts_are_validated_with_the_fix(
    config: Config, args: tuple[str, ...], fix: str
) -> None:
    done = await corral(config, *args, "--data-dir", str(config.data_path))
    assert done.returncode == 2
    flat = " ".join(done.stderr.replace("│", " ").split())  # Rich boxes and wraps it
    assert fix in flat, done.stderr


async def test_launch_runs_a_bare_python_on_corrals_python(config: Config) -> None:
    # PATH without this virtual environment: a system `python` would be found (or none).
    path = os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir())
    code = "import sys, corral; print(sys.executable)"
    done = await corral(
        config,
        "launch",
        "-n",
        "2",
        "--data-dir",
        str(config.data_path),
        "--",
        "python",
        "-c",
        code,
        env={"PATH": path},
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [f"[0] {sys.executable}", f"[1] {sys.executable}"]


async def test_friendly_error_without_a_log_line_before_it(config: Config) -> None:
    # No bus at all: the error says so, with no log line (JSON or text) before it.
    done = await corral(config, "nodes", "--data-dir", str(config.data_path))
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach the bus"), done.stderr


async def test_up_without_a_terminal_prints_live_lines_and_one_startup_message(
    config: Config,
) -> None:
    env = {**child_env(config), "CORRAL_API_PORT": str(free_port())}
    up = await asyncio.create_subprocess_exec(
        *bare("up", "--nodes", "2", "--data-dir", str(config.data_path)),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert up.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(scaled(30)):  # lines arrive while it runs, not at exit
            while not {"node-1 UP", "node-2 UP"} <= {line[9:] for line in lines}:
                line = (await up.stderr.readline()).decode()
                assert line, "".join(lines)
                lines.append(line.rstrip("\n"))
        up.send_signal(signal.SIGTERM)
        rest = (await up.stderr.read()).decode()
        assert await up.wait() == 0
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
    text = "\n".join(lines) + rest
    assert text.count("starting the controller") == 1, text
    assert "no controller answers" not in text, text
    assert "every child process has exited" in rest
    assert (config.data_path / "logs" / "controller.log").stat().st_size > 0


def test_a_terminal_table_wraps_a_long_name_instead_of_cutting_it() -> None:
    screen = Console(file=io.StringIO(), force_terminal=True, width=60, color_system=None)
    table = Table("name", "status", "host")
    table.add_row(LONG_NAME, "UP", "a-host-with-a-long-name.example.org")
    print_table(screen, table)
    text = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 60
    pieces = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    assert "".join(pieces).startswith(LONG_NAME)


def test_a_new_command_module_gets_the_shared_options() -> None:
    """What `corral status` (or any new module) does: register a command marked with
    `connects`; the global and connection options come with it, before or after it."""
    seen: dict[str, object] = {}
    app = typer.Typer(cls=CorralGroup)

    @app.callback()
    def root(data_dir: DataDir = None) -> None:
        GLOBALS.reset()
        GLOBALS.merge({"data_dir": data_dir})

    def status(as_json: AsJson = False) -> None:
        config, _ = configure()
        seen.update(data=str(config.data_path), nats=config.nats_url, api=GLOBALS.api)

    app.command()(connects(status))
    result = CliRunner().invoke(
        app,
        ["--data-dir", "/before", "status", "--data-dir", "/after", "--nats", "nats://x:1"]
        + ["--api", "http://ctl:4334"],
    )
    assert result.exit_code == 0, result.output
    assert seen == {"data": "/after", "nats": "nats://x:1", "api": "http://ctl:4334"}


async def test_up_says_once_when_the_controller_dies_while_starting(config: Config) -> None:
    done = await corral(
        config,
        "up",
        "--nodes",
        "1",
        "--aggregators",
        "no_such_module_anywhere",
        "--data-dir",
        str(config.data_path),
        env={"CORRAL_API_PORT": str(free_port())},
    )
    assert done.returncode == 1
    log = config.data_path / "logs" / "controller.log"
    assert f"the controller exited (status 2) while starting: see {log}" in done.stderr
    assert "no controller answers" not in done.stderr
    assert "no_such_module_anywhere" in log.read_text()  # the log says why
