"""Failover benchmark: kill -9 the leading controller N times; how long until the new leader
takes a write, what failed meanwhile, and whether every answered submission was kept.

Theory of operation: the driver (this process) initialises a throw-away data directory and a
fresh PostgreSQL database (``--store``, default ``$CORRAL_TEST_POSTGRES_DSN``), starts the
embedded nats-server (TLS on), ``--controllers`` controller processes (each its own API port,
lease ``--lease`` seconds) and one node process offering the ``noop`` task. One client given
every controller's address submits ``queue_task`` calls back to back (each with its
idempotency key, as the client always sends). Each round: wait until a leader answers and
the standbys are up, kill -9 the leader, start it again at once (a standby now, as a
supervisor would), and time from the kill to the first submission answered after it (by the
new leader, which may be the killed one's successor on its port). Calls that raised meanwhile
are counted (the client retries a keyed call within its timeout, so normally none). At the
end every answered task id must be found and done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from _harness import free_port, run_in_tempdir
from corral import AsyncController, procs
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.config import Config
from corral.errors import CorralError
from corral.security import Authority
from corral.store import open_store
from corral.tokens import Role, create_token

console = Console(stderr=True)
HERE = Path(__file__).parent


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@contextlib.contextmanager
def database(dsn: str) -> Iterator[str]:
    """A fresh database on the server of ``dsn``, dropped at the end."""
    name = f"corral_bench_{uuid.uuid4().hex[:12]}"
    admin = make_url(dsn).set(drivername="postgresql")
    conninfo = admin.render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Fleet:
    """The controllers (processes) and the node of one run."""

    def __init__(self, args: argparse.Namespace, config: Config, store: str, bus: str) -> None:
        self.args, self.config, self.store, self.bus = args, config, store, bus
        self.ports = [free_port() for _ in range(args.controllers)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = config.data_path / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.base = [sys.executable, "-m", "corral", "--data-dir", str(config.data_path)]
        self.base += ["--log-format", "json"]
        self.env = {
            "CORRAL_LEASE": str(args.lease),
            "CORRAL_NATS_PORT": str(config.nats_port),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }

    @property
    def urls(self) -> list[str]:
        """Every controller's API URL."""
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start_controller(self, i: int) -> None:
        """Start controller ``i`` (a standby until it takes the lease)."""
        argv = [*self.base, "controller", "--nats", self.bus, "--store", self.store]
        env = {**self.env, "CORRAL_API_PORT": str(self.ports[i])}
        proc = procs.spawn(argv, env=env, log=self.logs / f"controller-{i}.log")
        if i < len(self.procs):
            self.procs[i] = proc
        else:
            self.procs.append(proc)

    def start(self) -> None:
        """Every controller and the node."""
        for i in range(self.args.controllers):
            self.start_controller(i)
        creds = self.config.data_path / "node-w1.creds"
        creds.write_text(Authority.load(self.config.data_path).enroll("w1"))
        argv = [*self.base, "node", "--name", "w1", "--nats", self.bus, "--creds", str(creds)]
        argv += ["--tasks", "_tasks_corral", "--slots", "4"]
        self.node = procs.spawn(argv, env=self.env, log=self.logs / "node-w1.log")

    async def roles(self, http: httpx.AsyncClient) -> list[str]:
        """Each controller's role from its /healthz ("" when it does not answer)."""

        async def one(url: str) -> str:
            try:
                return str((await http.get(f"{url}/healthz")).json().get("role", ""))
            except (httpx.HTTPError, ValueError):
                return ""

        return list(await asyncio.gather(*(one(url) for url in self.urls)))

    def stop(self) -> None:
        """Stop the node, then every controller."""
        for proc in [getattr(self, "node", None), *self.procs]:
            if proc is not None:
                procs.stop(proc)


class Traffic:
    """Back-to-back submissions through every controller's address."""

    def __init__(self, client: AsyncController) -> None:
        self.client = client
        self.answered: list[tuple[float, str, int]] = []  # (when, by which address, task id)
        self.failed: list[tuple[float, str]] = []
        self.new = asyncio.Event()

    async def run(self) -> None:
        """Submit until cancelled."""
        while True:
            try:
                task_id = await self.client.queue_task("noop", {"x": 1})
            except CorralError as exc:
                self.failed.append((time.monotonic(), type(exc).__name__))
                continue
            self.answered.append((time.monotonic(), self.client.address, task_id))
            self.new.set()

    async def first_after(self, since: float, timeout: float) -> float:
        """When the first submission after ``since`` was answered (after a kill: by the new
        leader, whichever address it has; the killed one may be back as its successor)."""
        async with asyncio.timeout(timeout):
            while not (self.answered and self.answered[-1][0] >= since):
                self.new.clear()
                await self.new.wait()
        return next(when for when, _, _ in self.answered if when >= since)


async def main(args: argparse.Namespace, root: Path) -> None:
    """Run the benchmark and print the table; stop everything whatever happens."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    load = os.getloadavg()[0]
    config = Config(data_dir=str(root / "data"), nats_port=free_port())
    initialise(config)
    broker = EmbeddedBroker(config, Authority.load(config.data_path))
    takeovers: list[float] = []
    failed_during: list[int] = []
    with database(args.store) as store:
        async with await open_store(store) as opened:
            _, token = await create_token(opened, Role.OPERATE, "bench")
        await broker.start()
        fleet = Fleet(args, config, store, broker.url)
        try:
            fleet.start()
            async with (
                httpx.AsyncClient(timeout=1.0) as http,
                AsyncController(fleet.urls, token, timeout=args.timeout) as client,
            ):
                traffic = Traffic(client)
                runner = asyncio.create_task(traffic.run())
                try:
                    for kill in range(args.kills):
                        leader = await until_settled(fleet, http, traffic, args.timeout)
                        killed = time.monotonic()
                        failed_before = len(traffic.failed)
                        fleet.procs[leader].send_signal(signal.SIGKILL)
                        fleet.procs[leader].wait()
                        fleet.start_controller(leader)  # back at once, as a standby
                        answered = await traffic.first_after(killed, args.timeout)
                        takeovers.append(answered - killed)
                        failed_during.append(len(traffic.failed) - failed_before)
                        console.print(
                            f"kill {kill + 1}/{args.kills}: a write accepted "
                            f"{takeovers[-1]:.2f}s after, {failed_during[-1]} calls failed, "
                            f"{len(traffic.answered)} answered so far"
                        )
                finally:
                    runner.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await runner
                lost = 0
                for _, _, task_id in traffic.answered:
                    try:
                        await client.wait(task_id, timeout=args.timeout)
                    except CorralError:
                        lost += 1
        finally:
            fleet.stop()
            broker.stop()
    goal = args.lease + 2.0
    p50, p99 = percentile(takeovers, 0.5), percentile(takeovers, 0.99)
    rows = [
        ("kills", str(len(takeovers)), "-", "-"),
        ("kill -> first write accepted, p50", f"{p50:.2f} s", "-", "-"),
        ("kill -> first write accepted, p99", f"{p99:.2f} s", f"<= {goal:g} s", _ok(p99 <= goal)),
        ("kill -> first write accepted, max", f"{max(takeovers):.2f} s", "-", "-"),
        ("mean", f"{statistics.mean(takeovers):.2f} s", "-", "-"),
        ("calls that failed meanwhile", str(sum(failed_during)), "0", _ok(not any(failed_during))),
        *(
            (f"  of which {kind}", str(count), "-", "-")
            for kind, count in sorted(Counter(kind for _, kind in traffic.failed).items())
        ),
        (
            "answered submissions lost",
            f"{lost} of {len(traffic.answered)}",
            "0",
            _ok(lost == 0),
        ),
    ]
    title = f"corral failover benchmark: {args.controllers} controllers on PostgreSQL, "
    title += f"lease {args.lease:g} s, {os.cpu_count()} cores"
    table = Table(
        title=title, title_justify="left", caption=f"1-min load average before start: {load:.2f}"
    )
    for column in ("metric", "measured", "goal", "verdict"):
        table.add_column(column)
    for line in rows:
        table.add_row(*line)
    Console().print(table)


def _ok(good: bool) -> str:
    return "[green]ok[/]" if good else "[red]missed[/]"


async def until_settled(
    fleet: Fleet, http: httpx.AsyncClient, traffic: Traffic, timeout: float
) -> int:
    """Wait until one controller leads, every other answers as a standby, and the leader
    has taken a submission since; return the leader's index."""
    async with asyncio.timeout(timeout):
        while True:
            roles = await fleet.roles(http)
            if roles.count("leader") == 1 and roles.count("standby") == len(roles) - 1:
                leader = roles.index("leader")
                since = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await traffic.first_after(since, timeout / 4)
                    if traffic.answered[-1][1] == fleet.urls[leader]:
                        return leader
            await asyncio.sleep(0.1)  # other processes: ask their /healthz again


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains every option)."""
    parser = argparse.ArgumentParser(
        description="Kill -9 the leading controller N times under a steady stream of "
        "submissions; time each takeover to the first accepted write.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--kills", type=int, default=20, help="leaders killed, one after another")
    add("--controllers", type=int, default=2, help="controller processes")
    add("--lease", type=float, default=5.0, help="the controllers' lease, seconds")
    add(
        "--store",
        default=os.environ.get("CORRAL_TEST_POSTGRES_DSN", ""),
        help="PostgreSQL server DSN (a fresh database is made and dropped on it); default "
        "$CORRAL_TEST_POSTGRES_DSN",
    )
    add("--timeout", type=float, default=60.0, help="give up on a step after this long")
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    if not args.store:
        parser.error("give --store postgresql://... (or set CORRAL_TEST_POSTGRES_DSN)")
    if args.controllers < 2 or args.kills < 1:
        parser.error("--controllers must be 2 or more and --kills 1 or more")
    return args


if __name__ == "__main__":
    run_in_tempdir(main, parse_args(), "corral-failover-", console)
