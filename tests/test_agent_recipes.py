"""The agent recipes in docs/agents.md, run as users run them: examples/agents/ on a real bus."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from conftest import child_env, scaled
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.errors import NoSuchAgent
from corral.sender import Sender

with warnings.catch_warnings():
    # Starlette 1 wants httpx2 for its TestClient and warns when it finds httpx instead.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "agents"
DJANGO_APP = EXAMPLES / "django_app"


def example_env(config: Config) -> dict[str, str]:
    """What a user's shell would hold: the test's bus and data directory."""
    return {
        **child_env(config),
        "CORRAL_DATA_DIR": str(config.data_path),
        "PYTHONUNBUFFERED": "1",  # so the test reads each line as it is printed
    }


# --- two agents talking -----------------------------------------------------------------


def test_two_agents_talk_by_name_and_the_script_exits(
    broker: EmbeddedBroker, config: Config
) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "two_agents.py")],
        env=example_env(config),
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "telescope: observing M31 for scheduler",
        "telescope: observing M42 for scheduler",
        "telescope: observing NGC 7000 for scheduler",
        "telescope: parked, as scheduler asked",
        "main: the night produced ['M31.fits', 'M42.fits', 'NGC 7000.fits']",
    ]
    assert "Traceback" not in result.stderr


# --- Django: AppConfig.ready() starts the agent -------------------------------------------


class Site:
    """``manage.py runserver`` of the example site, read line by line without blocking."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.printed: list[str] = []

    async def wait_serving(self) -> int:
        """Wait for runserver's banner (printed once it listens); return its port."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(scaled(30)):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"runserver exited: {''.join(self.printed)}")
                self.printed.append(line)
                if found := re.search(r"development server at http://127\.0\.0\.1:(\d+)/", line):
                    return int(found[1])

    async def finish(self, sig: int) -> tuple[int, str]:
        """Send ``sig`` to the whole process group (as Ctrl-C does); its exit code, stderr."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.killpg(self.proc.pid, sig)
        _, err = await asyncio.wait_for(self.proc.communicate(), scaled(20))
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


@pytest.fixture
async def runserver(
    broker: EmbeddedBroker, config: Config
) -> AsyncIterator[Callable[..., Awaitable[Site]]]:
    started: list[Site] = []

    async def start(*args: str) -> Site:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "manage.py",
            "runserver",
            *args,
            "127.0.0.1:0",  # any free port; the banner names it
            cwd=DJANGO_APP,
            env=example_env(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # a process group: signals reach the reloader's child too
        )
        started.append(Site(proc))
        return started[-1]

    try:
        yield start
    finally:
        for site in started:
            if site.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(site.proc.pid, signal.SIGKILL)
            await site.proc.communicate()


async def test_django_starts_the_agent_in_ready_and_stops_it_at_exit(
    runserver: Callable[..., Awaitable[Site]], tx: Sender
) -> None:
    site = await runserver("--noreload")
    port = await site.wait_serving()
    # The agent started in AlertManagerConfig.ready(): the test reaches it by name ...
    assert await tx.ask("alert_manager", "alert", "dome humidity 91%") == 1
    # ... and so does the view, through corral.ask.
    async with httpx.AsyncClient() as http:
        page = await http.get(f"http://127.0.0.1:{port}/status/", timeout=scaled(10))
    assert page.status_code == 200
    assert page.json() == {"alerts": 1, "last": "dome humidity 91%"}
    code, err = await site.finish(signal.SIGINT)
    assert code == 0, err
    assert "alert manager: shutdown after 1 alert(s)" in err  # shutdown() ran at exit
    assert "agent stopped" in err and "Traceback" not in err


async def test_django_runserver_starts_the_agent_in_the_serving_process_only(
    runserver: Callable[..., Awaitable[Site]], config: Config
) -> None:
    site = await runserver()  # with the autoreloader: a watcher process and a serving child
    await site.wait_serving()
    async with await Client.connect(config) as client:
        (info,) = await client.agents()
    assert info.name == "alert_manager"
    assert info.pid != site.proc.pid  # not the watcher, which never reloads the code
    code, err = await site.finish(signal.SIGTERM)
    assert code == 0 and "DuplicateName" not in err and "not started here" not in err, err


# --- FastAPI: the lifespan starts and stops the agent -------------------------------------


@pytest.fixture
def fastapi_app(
    broker: EmbeddedBroker, config: Config, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """examples/agents/fastapi_app.py, configured from the environment like a user's app."""
    for key, value in example_env(config).items():
        if key.startswith("CORRAL_"):
            monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


async def test_fastapi_lifespan_runs_the_agent_and_endpoints_ask_it(
    fastapi_app: ModuleType, tx: Sender
) -> None:
    def serve() -> tuple[list[httpx.Response], Any]:
        with TestClient(fastapi_app.app) as http:  # runs the lifespan on its own loop
            pages = [http.get("/observe/M31"), http.get("/observe/M42")]
            return pages, fastapi_app.app.state.telescope

    pages, telescope = await asyncio.to_thread(serve)
    assert [p.json() for p in pages] == [
        {"image": "M31.fits", "observed": 1},
        {"image": "M42.fits", "observed": 2},
    ]
    assert telescope.parked  # shutdown() ran when the app stopped
    with pytest.raises(NoSuchAgent, match="no agent named 'telescope'"):
        await tx.ask("telescope", "observe", "M51")  # and the name is free again


async def test_fastapi_answers_503_when_the_agent_fails(fastapi_app: ModuleType) -> None:
    def serve() -> httpx.Response:
        with TestClient(fastapi_app.app) as http:
            fastapi_app.app.state.telescope.stop()
            return http.get("/observe/M31")

    page = await asyncio.to_thread(serve)
    assert page.status_code == 503
    assert "no agent named 'telescope'" in page.json()["error"]
