"""Shared fixtures: a real nats-server per test, a real store, real processes.

Timeouts scale with ``CORRAL_TESTS_TIMEOUT_FACTOR`` for slow machines. Set
``CORRAL_TEST_POSTGRES_DSN`` to run the store and registry tests on PostgreSQL too.
"""

from __future__ import annotations

import asyncio
import compileall
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.config import Config
from corral.controller import Controller
from corral.guardian import Guardian
from corral.security import Authority
from corral.sender import Sender

PG_DSN_ENV = "CORRAL_TEST_POSTGRES_DSN"
FACTOR = float(os.environ.get("CORRAL_TESTS_TIMEOUT_FACTOR", "1"))

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def pytest_configure(config: pytest.Config) -> None:
    """Compile corral's modules to bytecode files once, as ``pip install`` does: with an
    editable install and ``PYTHONDONTWRITEBYTECODE`` set, every controller and node process a
    test starts would compile them again (about 0.1 s of CPU each)."""
    import corral

    compileall.compile_dir(Path(corral.__file__).parent, quiet=1)


def scaled(seconds: float) -> float:
    """A timeout scaled for slow machines."""
    return seconds * FACTOR


async def eventually(
    check: Callable[[], Awaitable[object]],
    timeout: float,
    *,
    ignoring: tuple[type[BaseException], ...] = (),
) -> None:
    """Re-check a condition held by another process (or a server) until it is true.

    For state no event announces; poll every 50 ms, fail with ``TimeoutError`` after
    ``timeout`` seconds (scale it with :func:`scaled`). ``ignoring`` names exceptions that
    mean "not yet" (``Disconnected`` while a controller restarts, say).
    """
    async with asyncio.timeout(timeout):
        while True:
            try:
                if await check():
                    return
            except ignoring:
                pass
            await asyncio.sleep(0.05)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty database: a file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "data" / "corral.db")
        return
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        pytest.skip(f"{PG_DSN_ENV} not set: PostgreSQL store tests skipped")
    name = f"corral_test_{uuid.uuid4().hex}"
    admin = make_url(dsn).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised data directory (authority and CA), copied by each test."""
    data = tmp_path_factory.mktemp("template")
    initialise(Config(data_dir=str(data)))
    return data


@pytest.fixture
def config(template: Path, tmp_path: Path) -> Config:
    """Fast timings, TLS on, a private port and data directory (SQLite store)."""
    data = tmp_path / "data"
    shutil.copytree(template, data)
    return Config(
        data_dir=str(data),
        nats_port=free_port(),
        heartbeat_interval=0.2,
        down_after=1.0,
        announce_interval=0.2,
        api_port=0,  # any free port: tests never fight over the default
    )


@pytest.fixture
async def broker(config: Config) -> AsyncIterator[EmbeddedBroker]:
    """A real nats-server (operator mode, JetStream, TLS) for this test."""
    b = EmbeddedBroker(config, Authority.load(config.data_path))
    await b.start(timeout=scaled(15))
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
async def controller(config: Config, broker: EmbeddedBroker) -> AsyncIterator[Controller]:
    """A controller running in this process against the test's broker."""
    c = ControllerService(config)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def web(controller: Controller) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like HTTP client of the in-process controller (no redirects followed)."""
    assert controller.api is not None
    async with httpx.AsyncClient(base_url=controller.api.url, timeout=scaled(20)) as client:
        yield client


@pytest.fixture
async def tx(broker: EmbeddedBroker, config: Config) -> AsyncIterator[Sender]:
    """A Sender with the data directory's agent credential, closed after the test."""
    s = await Sender.connect(config)
    try:
        yield s
    finally:
        await s.close()


def corral_argv(config: Config, *args: str) -> list[str]:
    """``python -m corral`` with this test's data directory and bus."""
    return [
        sys.executable,
        "-m",
        "corral",
        "--data-dir",
        str(config.data_path),
        "--log-format",
        "json",
        *args,
    ]


def child_env(config: Config) -> dict[str, str]:
    """Environment for child processes: the test's timings."""
    return {
        **os.environ,
        # Handler modules in tests/ (`corral node --handlers sample_handlers`).
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")) if p
        ),
        "CORRAL_HEARTBEAT_INTERVAL": str(config.heartbeat_interval),
        "CORRAL_DOWN_AFTER": str(config.down_after),
        "CORRAL_ANNOUNCE_INTERVAL": str(config.announce_interval),
        "CORRAL_NATS_PORT": str(config.nats_port),
    }


class Procs:
    """Child processes started by a test, killed at its end whatever happens."""

    def __init__(self, config: Config, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        """Start ``corral ARGS`` with its output in ``<logs>/<log>.log``."""
        self.logs.mkdir(exist_ok=True)
        with open(self.logs / f"{log}.log", "ab") as out:
            proc = subprocess.Popen(
                corral_argv(self.config, *args),
                env=child_env(self.config),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started.append(proc)
        return proc

    def log(self, log: str) -> str:
        """What a child printed so far."""
        path = self.logs / f"{log}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        """Kill whatever is still running."""
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def procs(config: Config, tmp_path: Path) -> Iterator[Procs]:
    """Start real corral processes; all are killed when the test ends."""
    p = Procs(config, tmp_path / "logs")
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
async def hosted(broker: EmbeddedBroker, config: Config) -> AsyncIterator[list[Guardian]]:
    """Guardians started by a test (tests/test_guardian.py ``start``), stopped at its end."""
    started: list[Guardian] = []
    try:
        yield started
    finally:
        for g in started:
            await g.stop()
