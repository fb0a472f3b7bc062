"""Join, steady-state and failure-detection benchmark for one controller and N nodes.

Theory of operation: the driver (this process) initialises a throw-away data directory,
enrols every node name up front (one credential file each), starts the embedded nats-server
(TLS on) and the controller as its own process (``python -m corral controller``), then starts
worker processes that each host ``--per-process`` :class:`corral.node.Node` instances in one
event loop, every node with its own bus connection and credential. The driver watches node
transitions with :class:`corral.client.Client` (admin credential) and measures:

1. the time from starting the workers until every node is UP (and until the first one is);
2. the CPU used at steady state by the controller, nats-server and the workers (psutil);
3. the time from ``kill -9`` of one worker until all its nodes are DOWN.

Run ``python bench/bench_join.py --help`` for the options. Everything it starts is stopped,
and the data directory removed, at the end or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from corral import procs, subjects, wire
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.client import Client
from corral.config import Config
from corral.node import Node
from corral.security import Authority

console = Console(stderr=True)
Row = tuple[str, str, str, str]


# --- worker process -------------------------------------------------------------------------


async def run_worker(spec: dict[str, Any]) -> None:
    """Host the nodes of ``spec`` (``config`` fields, ``nodes``: [name, creds]) forever."""
    config = Config(**spec["config"])
    started = time.time()
    nodes = [Node(config, name, creds=Path(creds)) for name, creds in spec["nodes"]]
    await asyncio.gather(*(node.start(wait_for_bus=60.0) for node in nodes))
    # One line for the driver: when imports were done and when every connection was open.
    print(json.dumps({"imported": started, "connected": time.time()}), flush=True)
    await asyncio.Event().wait()


# --- driver ---------------------------------------------------------------------------------


class EventLog:
    """Node transitions as the driver receives them, with the time each one arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, wire.NodeEvent]] = []
        self.status: dict[str, str] = {}
        self._changed = asyncio.Event()

    async def follow(self, client: Client) -> None:
        """Record every event from ``client`` until cancelled."""
        async for event in client.events():
            self.seen.append((time.time(), event))
            self.status[event.node] = event.new
            self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds, re-checking on every event.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def all_are(self, names: Iterable[str], status: str) -> Callable[[], bool]:
        """A predicate: every one of ``names`` is at ``status``."""
        wanted = list(names)
        return lambda: all(self.status.get(n) == status for n in wanted)

    def times(self, names: set[str], new: str, since: float = 0.0) -> list[float]:
        """Controller timestamps (``at``) of transitions of ``names`` to ``new`` after ``since``."""
        return sorted(
            e.at for _, e in self.seen if e.node in names and e.new == new and e.at >= since
        )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def enroll_all(data: Path, names: list[str]) -> dict[str, str]:
    """Issue a credential for every name; return name -> credentials file."""
    authority, out = Authority.load(data), data / "bench-creds"
    out.mkdir(mode=0o700)
    paths = {}
    for name in names:
        path = out / f"{name}.creds"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(authority.enroll(name))
        paths[name] = str(path)
    return paths


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids``."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
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


def verdict(ok: bool) -> str:
    """A coloured PASS or FAIL."""
    return "[green]PASS[/]" if ok else "[red]FAIL[/]"


def connected_at(logs: Iterable[Path]) -> float:
    """The latest time a worker reported all its connections open (0 if none reported)."""
    latest = 0.0
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith('{"imported"'):
                latest = max(latest, json.loads(line)["connected"])
    return latest


async def bench(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> list[Row]:
    """Run the three measurements; everything started is registered on ``stack`` to stop."""
    data = root / "data"
    config = Config(
        data_dir=str(data),
        nats_port=free_port(),
        heartbeat_interval=args.heartbeat,
        down_after=args.down_after,
    )
    initialise(config)
    names = [f"n{i:05d}" for i in range(args.nodes)]
    t = time.monotonic()
    creds = enroll_all(data, names)
    console.log(f"enrolled {len(names)} nodes in {time.monotonic() - t:.1f}s")

    broker = EmbeddedBroker(config, Authority.load(data))
    await broker.start()
    stack.callback(broker.stop)
    assert broker.proc is not None
    env = {
        "CORRAL_HEARTBEAT_INTERVAL": str(args.heartbeat),
        "CORRAL_DOWN_AFTER": str(args.down_after),
    }
    argv = [sys.executable, "-m", "corral", "--data-dir", str(data), "--log-format", "json"]
    controller = procs.spawn(
        [*argv, "controller", "--nats", broker.url], env=env, log=root / "controller.log"
    )
    stack.callback(procs.stop, controller)

    client = await Client.connect(config, wait=10.0)
    stack.push_async_callback(client.close)
    events = EventLog()
    follower = asyncio.create_task(events.follow(client))
    stack.push_async_callback(cancel, follower)
    # The controller is serving once it announces itself; the flush makes our event
    # subscription (sent meanwhile) effective before any node starts.
    announce = await client.nc.subscribe(subjects.ANNOUNCE, max_msgs=1)
    await announce.next_msg(timeout=60.0)
    await client.nc.flush()
    console.log(f"broker and controller up ({broker.url})")

    config_json = {
        "data_dir": str(data),
        "nats_url": broker.url,
        "heartbeat_interval": args.heartbeat,
        "down_after": args.down_after,
    }
    groups = [names[i : i + args.per_process] for i in range(0, len(names), args.per_process)]
    workers: list[subprocess.Popen[bytes]] = []
    stack.callback(kill_all, workers)
    for i, group in enumerate(groups):
        spec = root / f"worker-{i}.json"
        spec.write_text(
            json.dumps({"config": config_json, "nodes": [[n, creds[n]] for n in group]})
        )
    t0 = time.time()
    for i in range(len(groups)):
        me = [sys.executable, __file__, "--worker", str(root / f"worker-{i}.json")]
        workers.append(procs.spawn(me, log=root / f"worker-{i}.log"))
    console.log(f"started {len(workers)} worker processes; waiting for {len(names)} nodes UP")
    await events.until(events.all_are(names, "UP"), args.timeout)
    t_all = time.time()
    # Confirm against the registry itself (one read: the events say it already holds).
    await client.wait_for(lambda views: sum(v.status == "UP" for v in views) == len(names), 30.0)
    ups = events.times(set(names), "UP")
    opened = connected_at(root / f"worker-{i}.log" for i in range(len(groups))) - t0
    console.log(f"all UP after {ups[-1] - t0:.2f}s; sampling CPU for {args.sample:.0f}s")

    pids = {
        "controller": [controller.pid],
        "nats-server": [broker.proc.pid],
        "workers": [w.pid for w in workers],
    }
    await asyncio.sleep(args.settle)
    before = {k: cpu_seconds(v) for k, v in pids.items()}
    start = time.monotonic()
    await asyncio.sleep(args.sample)  # a measurement window, not synchronisation
    wall = time.monotonic() - start
    share = {k: 100 * (cpu_seconds(v) - before[k]) / wall for k, v in pids.items()}

    victim = set(groups[0])
    t_kill = time.time()
    workers[0].kill()
    workers[0].wait()
    console.log(f"killed worker 0 ({len(victim)} nodes); waiting for them to be DOWN")
    await events.until(events.all_are(victim, "DOWN"), args.down_after + 30.0)
    downs = events.times(victim, "DOWN", t_kill)
    false_downs = len(events.times(set(names) - victim, "DOWN"))
    limit = args.down_after + 1.0
    n = len(names)
    return [
        (
            f"all {n} nodes UP after start",
            f"{ups[-1] - t0:.2f} s (seen {t_all - t0:.2f} s)",
            "< 10 s",
            verdict(ups[-1] - t0 < 10.0),
        ),
        ("first node UP", f"{ups[0] - t0:.2f} s", "-", ""),
        ("all bus connections open", f"{opened:.2f} s", "-", ""),
        (
            f"controller CPU, steady ({args.heartbeat:g} s heartbeats)",
            f"{share['controller']:.1f} % of a core",
            "< 25 %",
            verdict(share["controller"] < 25.0),
        ),
        ("nats-server CPU, steady", f"{share['nats-server']:.1f} % of a core", "-", ""),
        (
            f"workers CPU, steady ({len(workers)} processes)",
            f"{share['workers']:.1f} % of a core",
            "-",
            "",
        ),
        (
            f"kill -9 -> all {len(victim)} DOWN",
            f"{downs[-1] - t_kill:.2f} s (first {downs[0] - t_kill:.2f} s)",
            f"<= {limit:g} s",
            verdict(downs[-1] - t_kill <= limit),
        ),
        ("false DOWN (nodes not killed)", str(false_downs), "0", verdict(false_downs == 0)),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Start a nats-server (TLS), a controller process and N nodes hosted in worker "
            "processes; measure time to all UP, steady-state CPU, and detection of a kill -9."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=1000, help="logical nodes in total")
    parser.add_argument(
        "--per-process",
        type=int,
        default=100,
        help="nodes per worker process (one event loop each)",
    )
    parser.add_argument("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
    parser.add_argument(
        "--down-after", type=float, default=3.0, help="seconds of silence before DOWN"
    )
    parser.add_argument(
        "--sample", type=float, default=10.0, help="steady-state CPU sampling window, seconds"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait after all UP before sampling"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="give up waiting for all UP after this many seconds",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, data) and print its path",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: run as a worker
    args = parser.parse_args(argv)
    if args.down_after <= args.heartbeat:
        parser.error("--down-after must exceed --heartbeat")
    return args


async def main(args: argparse.Namespace, root: Path) -> None:
    """Run the benchmark and print the table; stop everything whatever happens."""
    async with contextlib.AsyncExitStack() as stack:
        rows = await bench(args, root, stack)
    table = Table(
        title=f"corral join benchmark: {args.nodes} nodes, {os.cpu_count()} cores",
        title_justify="left",
    )
    for col in ("metric", "measured", "goal", "verdict"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker is not None:
        asyncio.run(run_worker(json.loads(arguments.worker.read_text())))
        sys.exit(0)
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    try:
        asyncio.run(main(arguments, tmp))
    except KeyboardInterrupt:
        console.print("interrupted: everything started has been stopped")
        sys.exit(130)
    finally:
        if arguments.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
