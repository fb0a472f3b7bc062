"""Join, steady-state and failure-detection benchmark for one controller and N nodes.

Theory of operation: the driver (this process) initialises a throw-away data directory,
enrols every node name up front in one batch (one credential file each), starts the embedded
nats-server (TLS on) and the controller as its own process (``python -m corral controller``),
then starts worker processes (``_join_worker.py``, which imports only the node's modules) that
each host ``--per-process`` :class:`corral.node.Node` instances in one event loop, every node
with its own bus connection and credential. The driver watches node
transitions with :class:`corral.client.Client` (admin credential) and measures:

1. the time from starting the workers until every node is UP (and until the first one is);
2. the CPU used at steady state by the controller, nats-server and the workers (psutil);
3. the time from ``kill -9`` of one worker until all its nodes are DOWN;
4. the nodes marked DOWN that were not killed (false DOWN), and the controller's worst
   event-loop lag (``corral_event_loop_lag_max_seconds`` on its ``/metrics``).

``--nodes 1000,10000`` runs each size in turn (a fresh data directory, nats-server and
controller each) and prints a table per size. Run ``python bench/bench_join.py --help`` for
the options. Everything it starts is stopped,
and the data directory removed, at the end or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from _harness import free_port, run_in_tempdir
from corral import procs, subjects, wire
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.client import Client
from corral.config import Config
from corral.security import Authority

console = Console(stderr=True)
#: One line of the result table: metric, measured, goal, verdict.
Row = tuple[str, str, str, str]
#: The worker processes' script (a module of its own: it imports only the node's modules).
WORKER = Path(__file__).with_name("_join_worker.py")


class EventLog:
    """Node transitions as the driver receives them, and each node's latest status."""

    def __init__(self) -> None:
        self.seen: list[wire.NodeEvent] = []
        self.status: dict[str, str] = {}
        self._changed = asyncio.Event()

    async def follow(self, client: Client) -> None:
        """Record every event from ``client`` until cancelled."""
        async for event in client.events():
            self.seen.append(event)
            self.status[event.node] = event.new
            self._changed.set()

    async def until_all(self, names: Iterable[str], status: str, timeout: float) -> float:
        """Wait until every one of ``names`` is at ``status``; return when that was seen.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        wanted = list(names)
        async with asyncio.timeout(timeout):
            while not all(self.status.get(n) == status for n in wanted):
                self._changed.clear()
                await self._changed.wait()
        return time.time()

    def times(self, names: set[str], new: str, since: float = 0.0) -> list[float]:
        """Controller timestamps (``at``) of moves of ``names`` to ``new`` at or after ``since``."""
        seen = (e.at for e in self.seen if e.node in names and e.new == new)
        return sorted(at for at in seen if at >= since)


def enroll_all(data: Path, names: list[str]) -> dict[str, str]:
    """Issue a credential for every name; return name -> credentials file."""
    out = data / "bench-creds"
    out.mkdir(mode=0o700)
    paths = {}
    for name, text in Authority.load(data).enroll_many(names).items():
        path = out / f"{name}.creds"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
            fh.write(text)
        paths[name] = str(path)
    return paths


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (gone ones count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def kill_all(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every worker still running and reap it."""
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.wait()


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it (its errors while closing do not matter here)."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def row(metric: str, measured: str, goal: str = "-", ok: bool | None = None) -> Row:
    """A table line; the verdict is PASS or FAIL when the metric has a goal."""
    return metric, measured, goal, "" if ok is None else "[green]PASS[/]" if ok else "[red]FAIL[/]"


class Bench:
    """The processes under test and the three measurements; ``stack`` stops them all."""

    client: Client  # the driver's watching connection, set by start()

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack):
        self.args, self.root, self.stack = args, root, stack
        self.data = root / "data"
        self.nodes = nodes = args.size
        per = args.per_process or max(100, nodes // 20)
        self.per_process = per
        self.names = [f"n{i:05d}" for i in range(nodes)]
        self.groups = [self.names[i : i + per] for i in range(0, nodes, per)]
        self.workers: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, list[int]] = {}  # controller, nats-server, workers
        self.events = EventLog()
        self.metrics_url = ""

    async def start(self) -> None:
        """Data directory, credentials, nats-server, controller process, watching client."""
        a = self.args
        settings = {"data_dir": str(self.data), "heartbeat_interval": a.heartbeat}
        settings["down_after"] = a.down_after
        config = Config(**settings, nats_port=free_port())
        initialise(config)
        t = time.monotonic()
        creds = enroll_all(self.data, self.names)
        console.log(f"enrolled {len(self.names)} nodes in {time.monotonic() - t:.1f}s")
        broker = EmbeddedBroker(config, Authority.load(self.data))
        await broker.start()
        self.stack.callback(broker.stop)
        env = {"CORRAL_HEARTBEAT_INTERVAL": str(a.heartbeat)}
        env["CORRAL_DOWN_AFTER"] = str(a.down_after)
        api_port = free_port()  # never the default: another controller may hold it
        env["CORRAL_API_PORT"] = str(api_port)
        self.metrics_url = f"http://127.0.0.1:{api_port}/metrics"
        argv = [sys.executable, "-m", "corral", "--data-dir", str(self.data)]
        argv += ["--log-format", "json", "controller", "--nats", broker.url]
        controller = procs.spawn(argv, env=env, log=self.root / "controller.log")
        self.stack.callback(procs.stop, controller)
        assert broker.proc is not None
        self.pids = {"controller": [controller.pid], "nats-server": [broker.proc.pid]}

        client = await Client.connect(config, wait=10.0)
        self.stack.push_async_callback(client.close)
        self.stack.push_async_callback(cancel, asyncio.create_task(self.events.follow(client)))
        # The controller serves once it announces itself; the flush makes the event
        # subscription (sent meanwhile) effective before any node starts.
        announce = await client.nc.subscribe(subjects.ANNOUNCE, max_msgs=1)
        await announce.next_msg(timeout=60.0)
        await client.nc.flush()
        self.client = client
        shared = {**settings, "nats_url": broker.url}
        for i, group in enumerate(self.groups):
            spec = {"config": shared, "nodes": [[n, creds[n]] for n in group]}
            (self.root / f"worker-{i}.json").write_text(json.dumps(spec))
        self.stack.callback(kill_all, self.workers)
        console.log(f"nats-server and controller up on {broker.url}")

    def snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by each kind of process, and by the rest of the machine."""
        used = {k: cpu_seconds(v) for k, v in self.pids.items()}
        t = psutil.cpu_times()
        kinds = ("user", "nice", "system", "steal")  # not softirq: our own loopback traffic
        busy = sum(getattr(t, kind, 0.0) for kind in kinds)
        used["other"] = busy - sum(used.values()) - cpu_seconds([os.getpid()])
        return used

    def _worker_times(self) -> tuple[float, float]:
        """The latest times a worker finished its imports and had all connections open."""
        imported = connected = 0.0
        for i in range(len(self.groups)):
            for line in (self.root / f"worker-{i}.log").read_text(errors="replace").splitlines():
                if line.startswith('{"imported"'):
                    report = json.loads(line)
                    imported = max(imported, report["imported"])
                    connected = max(connected, report["connected"])
        return imported, connected

    async def join(self) -> list[Row]:
        """Start the workers; time until the first and the last node is UP."""
        self.pids["workers"] = []
        base = self.snapshot()
        t0 = time.time()
        for i in range(len(self.groups)):
            argv = [sys.executable, str(WORKER), str(self.root / f"worker-{i}.json")]
            self.workers.append(procs.spawn(argv, log=self.root / f"worker-{i}.log"))
        self.pids["workers"][:] = [w.pid for w in self.workers]
        console.log(f"started {len(self.workers)} workers; waiting for {len(self.names)} nodes UP")
        timeout = max(self.args.timeout, self.nodes / 50)
        try:
            seen = await self.events.until_all(self.names, "UP", timeout)
        except TimeoutError:
            self._log_progress(timeout)
            raise
        used = {k: v - base[k] for k, v in self.snapshot().items()}
        cpu = " / ".join(f"{used[k]:.1f}" for k in self.pids)
        # Confirm against the registry itself (one read: the events say it already holds).
        n = len(self.names)
        await self.client.wait_for(lambda views: sum(v.status == "UP" for v in views) == n, 30.0)
        ups = self.events.times(set(self.names), "UP")
        imported, opened = self._worker_times()
        console.log(f"all UP after {ups[-1] - t0:.2f}s")
        took, goal = ups[-1] - t0, 3.0 * max(1.0, n / 1000)
        lag = await self.loop_lag()
        return [
            row(
                f"all {n} nodes UP",
                f"{took:.2f} s (seen {seen - t0:.2f} s)",
                f"<= {goal:g} s",
                took <= goal,
            ),
            row("first node UP", f"{ups[0] - t0:.2f} s"),
            row("workers' imports done (last)", f"{imported - t0:.2f} s"),
            row("all bus connections open", f"{opened - t0:.2f} s"),
            row("CPU to all UP (ctl / nats / workers)", f"{cpu} s"),
            row("other processes' CPU to all UP", f"{max(used['other'], 0):.1f} s"),
            row(
                "controller loop lag, max to all UP",
                f"{lag * 1000:.0f} ms",
                "<= 50 ms",
                lag <= 0.05,
            ),
        ]

    def _log_progress(self, waited: float) -> None:
        """Say how far the join got when it was given up (a run that never has all UP)."""
        up = sum(status == "UP" for status in self.events.status.values())
        moves = {new: sum(e.new == new for e in self.events.seen) for new in ("UP", "DOWN")}
        logs = (self.root / f"worker-{i}.log" for i in range(len(self.groups)))
        opened = sum('{"imported"' in log.read_text(errors="replace") for log in logs)
        console.log(
            f"gave up after {waited:g}s: {up} of {len(self.names)} UP; {moves['UP']} moves to "
            f"UP and {moves['DOWN']} to DOWN so far; {opened} of {len(self.groups)} workers "
            "had every connection open"
        )

    async def loop_lag(self) -> float:
        """The controller's worst event-loop lag so far, from its ``/metrics`` (loopback)."""
        import httpx  # here: the worker processes (this script too) must not pay for it

        async with httpx.AsyncClient() as http:
            text = (await http.get(self.metrics_url, timeout=10.0)).text
        for line in text.splitlines():
            if line.startswith("corral_event_loop_lag_max_seconds "):
                return float(line.split()[1])
        return float("nan")

    async def steady(self) -> list[Row]:
        """CPU share of each process kind over ``--sample`` seconds once all are UP."""
        await asyncio.sleep(self.args.settle)  # let the join burst's replies and commits finish
        before = self.snapshot()
        start = time.monotonic()
        console.log(f"sampling CPU for {self.args.sample:g}s")
        await asyncio.sleep(self.args.sample)  # a measurement window, not synchronisation
        wall = time.monotonic() - start
        share = {k: 100 * (v - before[k]) / wall for k, v in self.snapshot().items()}
        ctl, nats, workers = (f"{share[k]:.1f} % of a core" for k in self.pids)
        return [
            row("controller CPU, steady state", ctl, "< 50 %", share["controller"] < 50.0),
            row("nats-server CPU, steady", nats),
            row(f"workers CPU, steady ({len(self.workers)} processes)", workers),
            row("other processes' CPU, steady", f"{max(share['other'], 0):.1f} % of a core"),
        ]

    async def detect(self) -> list[Row]:
        """``kill -9`` the first worker; time until all its nodes are DOWN."""
        victim, limit = set(self.groups[0]), self.args.down_after + 1.0
        t_kill = time.time()
        self.workers[0].kill()
        self.workers[0].wait()
        console.log(f"killed worker 0 ({len(victim)} nodes); waiting for them to be DOWN")
        await self.events.until_all(victim, "DOWN", self.args.down_after + 30.0)
        downs = self.events.times(victim, "DOWN", t_kill)
        false_downs = len(self.events.times(set(self.names) - victim, "DOWN"))
        took = downs[-1] - t_kill
        measured = f"{took:.2f} s (first {downs[0] - t_kill:.2f} s)"
        lag = await self.loop_lag()
        return [
            row(f"kill -9 -> all {len(victim)} DOWN", measured, f"<= {limit:g} s", took <= limit),
            row("false DOWN (nodes not killed)", str(false_downs), "0", false_downs == 0),
            row(
                "controller loop lag, max overall", f"{lag * 1000:.0f} ms", "<= 50 ms", lag <= 0.05
            ),
        ]


async def run_size(args: argparse.Namespace, root: Path) -> Table:
    """Run the benchmark for ``args.size`` nodes under ``root``; return its table."""
    load = os.getloadavg()[0]
    async with contextlib.AsyncExitStack() as stack:
        bench = Bench(args, root, stack)
        await bench.start()
        rows = await bench.join() + await bench.steady() + await bench.detect()
    title = f"corral join benchmark: {bench.nodes} nodes ({bench.per_process} per process), "
    title += f"{args.heartbeat:g} s heartbeats, down after {args.down_after:g} s, "
    title += f"{os.cpu_count()} cores"
    table = Table(
        title=title, title_justify="left", caption=f"1-min load average before start: {load:.2f}"
    )
    for column in ("metric", "measured", "goal", "verdict"):
        table.add_column(column)
    for line in rows:
        table.add_row(*line)
    return table


async def main(args: argparse.Namespace, root: Path) -> None:
    """Run every size in turn and print the tables; stop everything whatever happens."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    tables = []
    for size in args.nodes:
        args.size = size
        (root / str(size)).mkdir()
        tables.append(await run_size(args, root / str(size)))
        Console().print(tables[-1])
    if len(tables) > 1:
        console.log("all sizes again:")
        for table in tables:
            Console().print(table)


def _sizes(text: str) -> list[int]:
    """``1000`` or ``1000,10000``: the sizes to run, in order."""
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains every option)."""
    parser = argparse.ArgumentParser(
        description="Start a nats-server (TLS), a controller process and N nodes hosted in worker "
        "processes; measure the time until all are UP, the steady-state CPU, and the detection "
        "of a kill -9.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--nodes", type=_sizes, default=[1000], help="nodes in total; 1000,10000 runs both")
    add(
        "--per-process",
        type=int,
        default=0,
        help="nodes per worker process (one event loop each); 0: 100, or nodes/20 if more",
    )
    add("--heartbeat", type=float, default=1.0, help="seconds between node heartbeats")
    add("--down-after", type=float, default=3.0, help="seconds of silence before a node is DOWN")
    add("--sample", type=float, default=10.0, help="steady-state CPU sampling window, seconds")
    add("--settle", type=float, default=2.0, help="seconds to wait after all UP before sampling")
    add("--timeout", type=float, default=120.0, help="give up waiting for all UP after this long")
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args(argv)
    if args.down_after <= args.heartbeat:
        parser.error("--down-after must exceed --heartbeat")
    if min(args.nodes) < max(args.per_process, 100):
        parser.error("--nodes must be at least --per-process and 100 (one worker is killed)")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    run_in_tempdir(main, arguments, "corral-bench-", console)
