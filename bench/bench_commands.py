"""Broadcast commands to 100 and 1,000 nodes, next to the bare-NATS floor of the same fan-out.

Theory of operation: the driver (this process) initialises a throw-away data directory,
enrols every node name up front (one credential file each), starts the embedded nats-server
(TLS on) and the controller as its own process (``python -m corral controller``), then starts
``--workers`` worker processes. Each worker hosts, in one event loop, its share of the
:class:`corral.node.Node` objects (every node with its own bus connection and credential and
one async ``noop`` command handler) and as many bare nats-py subscriber connections. The
driver tells the workers over the bus (``bench.worker.<i>``) to start 100 nodes in all, then
900 more; at each size it measures, in turns that alternate between the two stacks so that
other work on the machine slows both alike:

corral
    ``Client.command("*", "command", "noop")`` and ``handle.wait()``: the controller resolves
    ``*``, persists the command, answers, publishes it once to the JetStream command stream;
    every node's durable consumer delivers it, the node runs the handler, acknowledges it and
    reports ``done``; the controller persists the outcomes and publishes them. The time is taken
    from calling ``command`` to the handle settled (every node done).
bare NATS floor
    one core-NATS publish on ``bench.floor.go``, fanned out by the server to the same number
    of subscriber connections (in the same worker processes, with the data directory's
    ``controller.creds`` and TLS); each answers with one small publish on ``bench.floor.done``
    and the driver counts the answers of that round.

Then the sustained rate: ``--burst`` broadcasts sent back to back, each in flight while the
next goes (not waiting for their acceptance nor their outcomes; done outcomes are counted from
``corral.events.cmd.>``), and as many floor rounds published back to back. CPU per broadcast
comes from psutil.

Run ``python bench/bench_commands.py --help`` for the options. Everything it starts is
stopped, and the data directory removed, at the end or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from rich.console import Console
from rich.table import Table

from _harness import free_port, run_in_tempdir
from bench_groups import percentile
from bench_join import cpu_seconds, enroll_all, kill_all
from corral import loops, procs, subjects, wire
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.client import Client
from corral.config import Config
from corral.node import Node
from corral.node.handlers import Handlers
from corral.security import Authority

console = Console(stderr=True)
FLOOR_GO, FLOOR_DONE = "bench.floor.go", "bench.floor.done"
CONTROL, READY = "bench.worker.{}", "bench.ready"
#: The goals of the issue: corral within this factor of the floor, and the 1,000-node p99.
RATIO_GOAL, P99_GOAL = 2.0, 0.100
KINDS = ("driver", "controller", "nats-server", "workers")


# --- worker process ---------------------------------------------------------------------------


async def noop() -> None:
    """The command every node runs: nothing (async, so no thread hop)."""


class Worker:
    """One worker process: corral nodes and bare subscribers, started when the driver asks."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.config = Config(**spec["config"])
        self.waiting = list(spec["nodes"])  # [name, creds] not started yet
        self.nodes: list[Node] = []
        self.floor: list[NATS] = []
        self.tls = ssl.create_default_context(cafile=spec["ca"])

    async def connect(self, name: str) -> NATS:
        """A bare nats-py connection with the unrestricted controller credential."""
        return await nats.connect(
            self.config.bus_url,
            tls=self.tls,
            user_credentials=self.spec["creds"],
            name=name,
            max_reconnect_attempts=-1,
        )

    async def run(self) -> None:
        """Serve the driver's requests until killed."""
        nc = await self.connect(f"bench-worker-{self.spec['index']}")
        await nc.subscribe(CONTROL.format(self.spec["index"]), cb=self.on_control)
        await nc.flush()
        await nc.publish(READY, str(self.spec["index"]).encode())
        await nc.flush()
        await asyncio.Event().wait()

    async def on_control(self, msg: Any) -> None:
        """``{"nodes": k, "floor": k}``: start ``k`` more of each; answer with the totals."""
        request = json.loads(msg.data)
        try:
            await self.start_nodes(request.get("nodes", 0))
            await self.start_floor(request.get("floor", 0))
            answer = {"nodes": len(self.nodes), "floor": len(self.floor)}
        except Exception as exc:  # tell the driver instead of leaving it waiting
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        await msg.respond(json.dumps(answer).encode())

    async def start_nodes(self, count: int) -> None:
        """Start ``count`` more corral nodes, each with one async ``noop`` handler."""
        batch, self.waiting = self.waiting[:count], self.waiting[count:]
        nodes = []
        for name, creds in batch:
            work = self.config.data_path / "nodes" / name
            handlers = Handlers(work, commands={"noop": noop})
            nodes.append(Node(self.config, name, creds=Path(creds), handlers=handlers))
        await asyncio.gather(*(node.start(wait_for_bus=60.0) for node in nodes))
        self.nodes += nodes

    async def start_floor(self, count: int) -> None:
        """Open ``count`` more bare subscribers that answer every floor round."""

        async def one(i: int) -> NATS:
            nc = await self.connect(f"bench-floor-{self.spec['index']}-{i}")

            async def answer(msg: Any) -> None:
                await nc.publish(FLOOR_DONE, msg.data)

            await nc.subscribe(FLOOR_GO, cb=answer)
            await nc.flush()
            return nc

        first = len(self.floor)
        self.floor += await asyncio.gather(*(one(first + i) for i in range(count)))


# --- driver -----------------------------------------------------------------------------------


@dataclass
class Samples:
    """One stack's measurements at one size."""

    times: list[float] = field(default_factory=list)  # seconds per broadcast / round
    accepted: list[float] = field(default_factory=list)  # of which until command() returned
    #: with --timeline: when the command was published, the first and the last report seen
    timeline: list[tuple[float, float, float]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind, summed
    rate: float = 0.0  # broadcasts (rounds) per second, sustained
    burst_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds of the burst
    errors: list[str] = field(default_factory=list)

    def add_cpu(self, used: dict[str, float]) -> None:
        """Add the CPU seconds of one turn."""
        for kind, seconds in used.items():
            self.cpu[kind] = self.cpu.get(kind, 0.0) + seconds


class Floor:
    """The driver's side of the bare-NATS floor: publish a round, count its answers."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.round = 0
        self.counts: dict[int, int] = {}
        self.total = 0
        self.target = 0  # answers that make the current wait complete
        self.expected = 0  # subscribers per round
        self.reached = asyncio.Event()

    async def start(self) -> None:
        """Subscribe to the answers."""
        await self.nc.subscribe(FLOOR_DONE, cb=self._on_answer, pending_msgs_limit=1_000_000)
        await self.nc.flush()

    async def _on_answer(self, msg: Any) -> None:
        self.total += 1
        if self.total >= self.target:
            self.reached.set()

    async def rounds(self, count: int, timeout: float) -> float:
        """Publish ``count`` rounds back to back; seconds until every answer was counted."""
        self.reached.clear()
        self.target = self.total + count * self.expected
        start = time.perf_counter()
        for _ in range(count):
            self.round += 1
            await self.nc.publish(FLOOR_GO, b"%d" % self.round)
        await self.nc.flush()
        async with asyncio.timeout(timeout):
            await self.reached.wait()
        return time.perf_counter() - start


class Bench:
    """The processes under test and the measurements; ``stack`` stops them all."""

    client: Client  # the operator's connection (admin credential)
    floor: Floor

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack):
        self.args, self.root, self.stack = args, root, stack
        self.data = root / "data"
        self.total = max(args.sizes)
        self.names = [f"n{i:05d}" for i in range(self.total)]
        self.workers: list[subprocess.Popen[bytes]] = []
        self.pids: dict[str, list[int]] = {"driver": [os.getpid()]}
        self.started = [0] * args.workers  # corral nodes started per worker
        self.last_serial = 0
        self.done: dict[int, int] = {}  # serial -> done outcomes seen (sustained)
        self.failed: list[str] = []
        self.done_target = 0
        self.done_total = 0
        self.done_reached = asyncio.Event()
        self.reports: list[float] = []  # when each node's report was seen (--timeline)
        self.published = 0.0  # when the last command was seen published (--timeline)

    async def start(self) -> None:
        """Data directory, credentials, nats-server, controller, driver connections, workers."""
        a = self.args
        settings: dict[str, Any] = {"data_dir": str(self.data)}
        config = Config(**settings, nats_port=free_port())
        initialise(config)
        t = time.monotonic()
        creds = enroll_all(self.data, self.names)
        console.log(f"enrolled {len(self.names)} nodes in {time.monotonic() - t:.1f}s")
        broker = EmbeddedBroker(config, Authority.load(self.data))
        await broker.start()
        self.stack.callback(broker.stop)
        argv = [sys.executable, "-m", "corral", "--data-dir", str(self.data)]
        argv += ["--log-format", "json", "controller", "--nats", broker.url]
        controller = procs.spawn(argv, log=self.root / "controller.log")
        self.stack.callback(procs.stop, controller)
        assert broker.proc is not None
        self.pids |= {"controller": [controller.pid], "nats-server": [broker.proc.pid]}

        client = await Client.connect(config, wait=10.0)
        self.stack.push_async_callback(client.close)
        announce = await client.nc.subscribe(subjects.ANNOUNCE, max_msgs=1)
        await announce.next_msg(timeout=60.0)
        await client.nc.subscribe(subjects.command_events(), cb=self._on_update)
        await client.nc.flush()
        self.client = client

        ca = config.ca_path()
        assert ca is not None, "the embedded broker always uses TLS"
        ctl_creds = str(config.creds_path("controller"))
        nc = await nats.connect(
            broker.url, tls=ssl.create_default_context(cafile=str(ca)), user_credentials=ctl_creds
        )
        self.stack.push_async_callback(nc.close)
        self.floor = Floor(nc)
        await self.floor.start()

        if a.timeline:

            async def seen(msg: Any) -> None:
                self.reports.append(time.perf_counter())

            async def published(msg: Any) -> None:
                self.published = time.perf_counter()

            await nc.subscribe(subjects.node_in_wildcard("out"), cb=seen)
            await nc.subscribe(subjects.COMMANDS_ALL, cb=published)
        ready = await nc.subscribe(READY)
        await nc.flush()
        shared = {**settings, "nats_url": broker.url}
        self.stack.callback(kill_all, self.workers)
        for i in range(a.workers):
            mine = self.names[i :: a.workers]
            spec = {"index": i, "config": shared, "ca": str(ca), "creds": ctl_creds}
            spec["nodes"] = [[n, creds[n]] for n in mine]
            path = self.root / f"worker-{i}.json"
            path.write_text(json.dumps(spec))
            argv = [sys.executable, __file__, "--worker", str(path)]
            self.workers.append(procs.spawn(argv, log=self.root / f"worker-{i}.log"))
        self.pids["workers"] = [w.pid for w in self.workers]
        async with asyncio.timeout(60.0):
            for _ in self.workers:
                await ready.next_msg(timeout=60.0)
        await ready.unsubscribe()
        console.log(f"nats-server, controller and {a.workers} workers up on {broker.url}")

    def snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by each kind of process."""
        return {kind: cpu_seconds(self.pids[kind]) for kind in KINDS}

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """CPU seconds used by each kind since ``before``."""
        now = self.snapshot()
        return {kind: now[kind] - before[kind] for kind in KINDS}

    async def grow(self, size: int) -> None:
        """Bring the corral nodes and the bare subscribers to ``size`` each; warm both up."""
        a = self.args
        want = [len(self.names[i : size : a.workers]) for i in range(a.workers)]
        t = time.monotonic()

        async def tell(i: int) -> None:
            more = want[i] - self.started[i]
            request = json.dumps({"nodes": more, "floor": more}).encode()
            reply = await self.floor.nc.request(CONTROL.format(i), request, timeout=a.timeout)
            answer = json.loads(reply.data)
            if "error" in answer:
                raise RuntimeError(f"worker {i}: {answer['error']}")
            self.started[i] = answer["nodes"]

        await asyncio.gather(*(tell(i) for i in range(a.workers)))
        console.log(f"{size} nodes and {size} bare subscribers connected; waiting for UP")
        await self.client.wait_for(lambda v: sum(n.status == "UP" for n in v) == size, a.timeout)
        self.floor.expected = size
        # The first broadcast also waits for every node's command consumer to exist.
        for _ in range(a.warmup):
            await self.broadcast(size, a.timeout)
            await self.floor.rounds(1, a.timeout)
        console.log(f"{size} nodes UP and warmed up after {time.monotonic() - t:.1f}s")

    async def broadcast(self, size: int, timeout: float, samples: Samples | None = None) -> float:
        """One no-op COMMAND to every node; seconds until every node is done.

        ``samples.accepted`` gets the part until ``command`` returned: the controller's
        commit and answer, and the handle's subscription and first read of the outcomes.
        """
        start = time.perf_counter()
        self.reports.clear()
        handle = await self.client.command("*", "command", "noop")
        if samples is not None:
            samples.accepted.append(time.perf_counter() - start)
        try:
            await handle.wait(timeout)
        finally:
            await handle.close()
        took = time.perf_counter() - start
        if samples is not None and self.args.timeline and self.reports:
            times = (self.published - start, self.reports[0] - start, self.reports[-1] - start)
            samples.timeline.append(times)
        if len(handle.nodes) != size or not handle.ok:
            raise RuntimeError(f"broadcast #{handle.serial} to {size} nodes: {handle.counts()}")
        self.last_serial = handle.serial
        return took

    async def _on_update(self, msg: Any) -> None:
        if not self.done_target:
            return  # only bursts count here
        update = wire.decode(msg.data, wire.CommandUpdate, msg.headers)
        if update.serial <= self.last_serial:
            return
        for outcome in update.outcomes:
            if outcome.state == "done":
                self.done_total += 1
            elif outcome.state in ("failed", "expired"):
                self.failed.append(f"#{update.serial} {outcome.node}: {outcome.error}")
        if self.done_total >= self.done_target:
            self.done_reached.set()

    async def burst(self, size: int, count: int) -> float:
        """``count`` broadcasts back to back; seconds until every node is done with all."""
        self.done_total, self.done_target = 0, count * size
        self.done_reached.clear()
        start = time.perf_counter()
        # Sent back to back, as the floor publishes its rounds: each send is in flight while
        # the next goes (the controller accepts what arrives together in one group commit).
        sends = [self.client.command("*", "command", "noop", follow=False) for _ in range(count)]
        serial = max(handle.serial for handle in await asyncio.gather(*sends))
        try:
            async with asyncio.timeout(self.args.timeout):
                await self.done_reached.wait()
        except TimeoutError:
            raise RuntimeError(
                f"burst: {self.done_total} of {self.done_target} done outcomes; "
                f"failed: {self.failed[:3]}"
            ) from None
        took = time.perf_counter() - start
        self.done_target, self.last_serial = 0, serial
        return took

    async def measure(self, size: int) -> tuple[Samples, Samples]:
        """Sequential rounds in alternating turns, then the sustained rate, for both stacks."""
        a = self.args
        corral, floor = Samples(), Samples()
        per_turn = max(1, a.rounds // a.turns)
        console.log(f"{size} nodes: {a.rounds} sequential broadcasts per stack, in turns")
        for turn in range(a.turns):
            n = per_turn if turn < a.turns - 1 else a.rounds - per_turn * (a.turns - 1)
            before = self.snapshot()
            corral.times += [await self.broadcast(size, a.timeout, corral) for _ in range(n)]
            corral.add_cpu(self.since(before))
            before = self.snapshot()
            floor.times += [await self.floor.rounds(1, a.timeout) for _ in range(n)]
            floor.add_cpu(self.since(before))
        console.log(f"{size} nodes: {a.burst} broadcasts back to back per stack")
        before = self.snapshot()
        corral.rate = a.burst / await self.burst(size, a.burst)
        corral.burst_cpu = self.since(before)
        before = self.snapshot()
        floor.rate = a.burst / await self.floor.rounds(a.burst, a.timeout)
        floor.burst_cpu = self.since(before)
        stats = await self.client.stats()
        counters = {k: v for k, v in stats.counters.items() if k.startswith("commands.")}
        console.log(f"{size} nodes: controller counters {counters}")
        return corral, floor


# --- the table --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _verdict(ok: bool) -> str:
    return "[green]PASS[/]" if ok else "[red]FAIL[/]"


def rows_for(
    size: int, corral: Samples, floor: Samples, rounds: int, burst: int
) -> list[tuple[str, ...]]:
    """The table lines of one size."""
    out = []
    for name, q in (("p50", 50.0), ("p99", 99.0)):
        c, f = percentile(corral.times, q), percentile(floor.times, q)
        ratio = c / f
        goal, ok = f"<= {RATIO_GOAL:g}x", ratio <= RATIO_GOAL
        if name == "p99" and size >= 1000:
            goal += f", < {P99_GOAL * 1000:.0f} ms"
            ok = ok and c < P99_GOAL
        metric = f"{size} nodes: {name} time to all done"
        out.append((metric, _ms(c), _ms(f), f"{ratio:.1f}x", goal, _verdict(ok)))
    accepted = percentile(corral.accepted, 50.0)
    out.append((f"{size} nodes: p50 until command() returned", _ms(accepted), "", "", "", ""))
    if corral.timeline:
        text = " / ".join(_ms(statistics.median(t[i] for t in corral.timeline)) for i in range(3))
        metric = f"{size} nodes: p50 published / first / last report"
        out.append((metric, text, "", "", "", ""))
    ratio = floor.rate / corral.rate
    out.append(
        (
            f"{size} nodes: sustained broadcasts/s",
            f"{corral.rate:.1f}",
            f"{floor.rate:.1f}",
            f"{ratio:.1f}x",
            f"<= {RATIO_GOAL:g}x",
            _verdict(ratio <= RATIO_GOAL),
        )
    )

    def cpu(s: Samples, kinds: tuple[str, ...]) -> str:
        return " / ".join(f"{s.cpu.get(k, 0.0) / rounds * 1000:.1f}" for k in kinds)

    c_total = sum(corral.cpu.values()) / rounds
    f_total = sum(floor.cpu.values()) / rounds
    out.append(
        (
            f"{size} nodes: CPU ms per broadcast (driver/ctl/nats/workers)",
            cpu(corral, KINDS),
            cpu(floor, KINDS),
            f"{c_total / f_total:.1f}x" if f_total > 0 else "-",
            "-",
            "",
        )
    )

    def burst_cpu(s: Samples) -> str:
        return " / ".join(f"{s.burst_cpu.get(k, 0.0) / burst * 1000:.1f}" for k in KINDS)

    c_total = sum(corral.burst_cpu.values()) / burst
    f_total = sum(floor.burst_cpu.values()) / burst
    out.append(
        (
            f"{size} nodes: CPU ms per broadcast in the burst",
            burst_cpu(corral),
            burst_cpu(floor),
            f"{c_total / f_total:.1f}x" if f_total > 0 else "-",
            "-",
            "",
        )
    )
    return out


async def main(args: argparse.Namespace, root: Path) -> None:
    """Run the benchmark and print the table; stop everything whatever happens."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    load = os.getloadavg()
    rows: list[tuple[str, ...]] = []
    results: dict[int, tuple[Samples, Samples]] = {}
    async with contextlib.AsyncExitStack() as stack:
        bench = Bench(args, root, stack)
        await bench.start()
        for size in sorted(args.sizes):
            await bench.grow(size)
            results[size] = await bench.measure(size)
            rows += rows_for(size, *results[size], args.rounds, args.burst)
    after = os.getloadavg()
    if args.json:
        dump = {str(n): {"corral": asdict(c), "floor": asdict(f)} for n, (c, f) in results.items()}
        args.json.write_text(json.dumps(dump, indent=1))
    title = f"corral commands benchmark: no-op COMMAND broadcast, {args.workers} worker processes, "
    title += f"{args.rounds} sequential rounds per size, bursts of {args.burst}, "
    title += f"{os.cpu_count()} cores"
    caption = f"1/5/15-min load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
    caption += f"after: {after[0]:.2f} {after[1]:.2f} {after[2]:.2f}"
    table = Table(title=title, title_justify="left", caption=caption)
    for column in ("metric", "corral", "bare NATS floor", "ratio", "goal", "verdict"):
        table.add_column(column)
    for line in rows:
        table.add_row(*line)
    Console(width=max(Console().width, 120)).print(table)


def _sizes(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"give node counts like 100,1000, not {text!r}")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains every option)."""
    parser = argparse.ArgumentParser(
        description="Broadcast a no-op COMMAND to every node and wait until all are done, at "
        "each size (nodes are added between sizes), next to the bare-NATS floor: one core-NATS "
        "publish fanned out to as many subscriber connections in the same worker processes, "
        "each answering with one publish. Prints p50/p99 time to all done, the sustained "
        "rate, and CPU per broadcast, with the ratio corral / floor.",
        epilog="Reading the table: the ratio is corral / floor for times and floor / corral "
        "for rates, so above 1 means corral is slower; p99 of 50 samples is the largest. "
        "'until command() returned' is the part spent before the handle exists (the "
        "controller's commit and answer, the handle's first read of the outcomes). CPU is "
        "psutil's user+system time of the driver, the controller, nats-server and all workers "
        "during the sequential turns, divided by the broadcasts (and, on its own row, during the "
        "burst). Other jobs on the machine "
        "slow both stacks: the caption gives the load average. To profile, run with --keep "
        "and attach py-spy (pip install py-spy) to the controller or a worker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--sizes", type=_sizes, default=[100, 1000], help="node counts to measure at, growing")
    add("--workers", type=int, default=4, help="worker processes hosting the nodes")
    add("--rounds", type=int, default=50, help="sequential broadcasts (and floor rounds) per size")
    add("--turns", type=int, default=5, help="alternate corral and the floor this many times")
    add("--burst", type=int, default=50, help="broadcasts (rounds) sent back to back, sustained")
    add("--warmup", type=int, default=3, help="untimed broadcasts after each growth")
    add("--timeout", type=float, default=120.0, help="give up on any one wait after this long")
    add(
        "--timeline",
        action="store_true",
        help="also subscribe to the commands and to every node's reports (adds load) and "
        "show when the command was published and the first and the last report arrived",
    )
    add("--json", type=Path, help="also write the raw samples to this file")
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    add("--worker", type=Path, help=argparse.SUPPRESS)  # internal: run as a worker process
    args = parser.parse_args(argv)
    if args.workers < 1 or args.rounds < args.turns or args.burst < 1:
        parser.error("need --workers >= 1, --rounds >= --turns, --burst >= 1")
    if args.sizes != sorted(args.sizes):
        parser.error("--sizes must grow (nodes are only added)")
    return args


def _worker_main(spec_file: Path) -> None:
    """Run as a worker process until the driver kills it, on the loop ``corral node`` runs
    (uvloop where installed), for corral's nodes and the floor's subscribers alike."""
    loops.run(Worker(json.loads(spec_file.read_text())).run())


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker is not None:
        _worker_main(arguments.worker)
        sys.exit(0)
    run_in_tempdir(main, arguments, "corral-bench-", console)
