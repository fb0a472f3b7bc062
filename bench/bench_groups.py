"""Process groups: barrier, collect and distribute latency, corral next to mpi4py (Open MPI).

Theory of operation: the driver (this process) initialises a throw-away data directory, starts
the embedded nats-server (TLS on) and the controller as its own process (the controller is the
groups' coordinator), then runs the same member script twice per group size:

- with corral: ``corral launch -n N -- python member.py corral PLAN OUT``, every member a real
  process that joins with :meth:`corral.group.Group.join` (no arguments: ``launch`` sets
  ``CORRAL_GROUP*``);
- with MPI: ``mpirun --oversubscribe -n N python member.py mpi PLAN OUT`` (``comm.Barrier``,
  ``comm.gather``, ``comm.bcast`` of pickled ``bytes``).

Every member times its own operations with ``perf_counter``; rank 0 gathers every member's
times once at the end, untimed, and writes them as JSON. Barriers run back to back, so what
each member measures is the barrier's period, the wait it sees: p50 and p99 are taken over all
members' samples. Before each collect and distribute an untimed barrier lines the members up,
and an iteration counts as done when the slowest member has its result: p50 and p99 are taken
over the iterations' slowest times.

MPI on one machine talks through shared memory and is the floor: corral crosses a TLS bus and a
coordinator process, and in exchange a member's crash is reported instead of hanging everyone.
Run ``python bench/bench_groups.py --help`` for the options. Everything started is stopped,
and the temporary directory removed, at the end or on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _harness import free_port, run_in_tempdir
from corral import procs, subjects
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.client import Client
from corral.config import Config
from corral.security import Authority

console = Console(stderr=True)
GOAL_S = 0.002  # corral's barrier p50 for 8 members
KB, MB = 1024, 1024 * 1024

# One member, both backends: the same timing loop around three awaitable operations.
MEMBER = '''\
import asyncio, json, sys, time

async def measure(rank, ops, plan):
    """Time every step of the plan on this member; return {step name: [seconds]}."""
    barrier, collect, distribute = ops
    times = {}
    for step in plan:
        value, kind, out = b"x" * step["bytes"], step["kind"], []
        for i in range(step["warmup"] + step["iters"]):
            if kind != "barrier":
                await barrier()  # line the members up, untimed
            start = time.perf_counter()
            if kind == "barrier":
                await barrier()
            elif kind == "collect":
                await collect(value)
            else:
                await distribute(value if rank == 0 else None)
            if i >= step["warmup"]:
                out.append(time.perf_counter() - start)
        times[step["name"]] = out
    return times

def write(path, per_rank):
    """Every member's times: {step: [[rank 0's seconds], [rank 1's], ...]}."""
    with open(path, "w") as fh:
        json.dump({k: [r[k] for r in per_rank] for k in per_rank[0]}, fh)

async def corral(plan, path):
    from corral.group import Group
    g = await Group.join(startup_timeout=180)
    ops = (lambda: g.barrier(60), lambda v: g.collect(v, 60), lambda v: g.distribute(v, 60))
    times = await measure(g.rank, ops, plan)
    rows = await g.collect(times, 120)
    if g.rank == 0:
        write(path, rows)
    await g.leave()

async def mpi(plan, path):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    async def barrier(): comm.Barrier()
    async def collect(v): comm.gather(v, root=0)
    async def distribute(v): comm.bcast(v, root=0)
    times = await measure(comm.rank, (barrier, collect, distribute), plan)
    rows = comm.gather(times, root=0)
    if comm.rank == 0:
        write(path, rows)

backend, plan, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
asyncio.run((corral if backend == "corral" else mpi)(plan, out))
'''


def plans(args: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    """Group size -> the steps its members run (barriers for every size, values for one)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for n in args.sizes:
        steps = [dict(name="barrier", kind="barrier", bytes=0, iters=args.barriers)]
        if n == args.value_members:
            for kind in ("collect", "distribute"):
                for size, label in ((KB, "1 KB"), (MB, "1 MB")):
                    it = args.value_iterations
                    steps.append(dict(name=f"{kind} {label}", kind=kind, bytes=size, iters=it))
        for step in steps:
            step["warmup"] = max(2, step["iters"] // 10)
        out[n] = steps
    return out


async def run_members(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> str:
    """Run a launcher (``corral launch`` or ``mpirun``) to its end; return "" or why it failed."""
    proc = procs.spawn(argv, env=env, log=log)  # from this thread: it dies with us
    try:
        code = await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)
    except TimeoutError:
        return f"no result within {timeout:g} s"
    finally:
        if proc.poll() is None:  # timed out or interrupted
            # The launcher leads its own process group, with its members in it: stop them all.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return f"exit status {code}: {_tail(log)}" if code else ""


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])


class Bench:
    """The bus, the controller, and one run per (backend, group size)."""

    def __init__(self, args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack):
        self.args, self.root, self.stack = args, root, stack
        self.data = root / "data"
        self.member = root / "member.py"
        self.member.write_text(MEMBER)
        self.env: dict[str, str] = {}
        self.controller_pid = 0

    async def start(self) -> None:
        """Data directory, nats-server, controller process; wait until the controller serves."""
        config = Config(data_dir=str(self.data), nats_port=free_port())
        initialise(config, tls=not self.args.no_tls)
        broker = EmbeddedBroker(config, Authority.load(self.data))
        await broker.start()
        self.stack.callback(broker.stop)
        argv = [sys.executable, "-m", "corral", "--data-dir", str(self.data)]
        argv += ["--log-format", "json", "controller", "--nats", broker.url]
        controller = procs.spawn(argv, log=self.root / "controller.log")
        self.stack.callback(procs.stop, controller)
        self.controller_pid = controller.pid
        client = await Client.connect(config, wait=10.0)
        try:
            announce = await client.nc.subscribe(subjects.ANNOUNCE, max_msgs=1)
            await announce.next_msg(timeout=60.0)
        finally:
            await client.close()
        self.env = {"CORRAL_DATA_DIR": str(self.data), "CORRAL_NATS_URL": broker.url}
        console.log(f"nats-server and controller (pid {controller.pid}) up on {broker.url}")

    async def run(self, backend: str, n: int, steps: list[dict[str, Any]]) -> dict[str, Any]:
        """One launch of ``n`` members; return {step: [seconds]} or {"error": why}."""
        plan, out = self.root / f"plan-{n}.json", self.root / f"{backend}-{n}.json"
        plan.write_text(json.dumps(steps))
        script = [sys.executable, str(self.member), backend, str(plan), str(out)]
        if backend == "corral":
            argv = [sys.executable, "-m", "corral", "--data-dir", str(self.data)]
            argv += ["launch", "-n", str(n), "--name", f"bench-{n}", "--", *script]
        else:
            argv = ["mpirun", "--oversubscribe", "--allow-run-as-root", "-n", str(n), *script]
        console.log(f"{backend}: {n} members, " + ", ".join(s["name"] for s in steps))
        log = self.root / f"{backend}-{n}.log"
        error = await run_members(argv, self.env, log, self.args.timeout)
        if error or not out.exists():
            return {"error": error or "rank 0 wrote no result"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def mpi_missing() -> str:
    """Why MPI cannot run here, or "" if it can."""
    if shutil.which("mpirun") is None:
        return "skipped: install Open MPI (apt-get install -y openmpi-bin libopenmpi-dev)"
    probe = subprocess.run([sys.executable, "-c", "import mpi4py"], capture_output=True)
    if probe.returncode != 0:
        return f"skipped: install mpi4py ({sys.executable} -m pip install mpi4py)"
    return ""


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def latencies(per_rank: list[list[float]], kind: str) -> list[float]:
    """The samples one operation's statistics are taken over.

    Barriers run back to back, so each member's own time is the latency it sees: every
    member's samples count. A collect or distribute is done only once the slowest member has
    its result: per iteration, the slowest member's time counts.
    """
    if kind == "barrier":
        return [t for times in per_rank for t in times]
    return [max(column) for column in zip(*per_rank, strict=True)]


def cell(result: dict[str, Any], step: dict[str, Any]) -> tuple[str, float | None]:
    """'p50 / p99' in µs for ``step`` (or the error), and the p50 in seconds."""
    if "error" in result:
        return f"[red]{result['error']}[/]", None
    times = latencies(result[step["name"]], step["kind"])
    p50, p99 = statistics.median(times), percentile(times, 99)
    return f"{_us(p50)} / {_us(p99)}", p50


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}" if seconds < 1e-5 else f"{seconds * 1e6:,.0f}"


async def main(args: argparse.Namespace, root: Path) -> None:
    """Run every size with both backends and print the table; stop everything whatever happens."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    skip_mpi = "skipped: --no-mpi" if args.no_mpi else mpi_missing()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    load = os.getloadavg()[0]
    async with contextlib.AsyncExitStack() as stack:
        bench = Bench(args, root, stack)
        await bench.start()
        for n, steps in plans(args).items():
            results["corral", n] = await bench.run("corral", n, steps)
            skipped = {"error": skip_mpi}
            results["mpi", n] = skipped if skip_mpi else await bench.run("mpi", n, steps)
    table = Table(
        title=f"corral groups vs mpi4py on Open MPI, {os.cpu_count()} cores; latency in µs",
        title_justify="left",
        caption="barrier: every member's time; collect, distribute: the slowest member's; "
        f"1-min load average before start: {load:.2f}",
    )
    for column in ("operation", "members", "corral p50 / p99", "MPI p50 / p99", "corral/MPI"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for column in ("goal", "verdict"):
        table.add_column(column)
    for n, steps in plans(args).items():
        for step in steps:
            ours, ours_p50 = cell(results["corral", n], step)
            theirs, mpi_p50 = cell(results["mpi", n], step)
            ratio = f"{ours_p50 / mpi_p50:,.0f}x" if ours_p50 and mpi_p50 else "-"
            goal, verdict = "", ""
            if step["kind"] == "barrier" and n == 8:
                goal = f"p50 < {GOAL_S * 1e3:g} ms"
                ok = ours_p50 is not None and ours_p50 < GOAL_S
                verdict = "[green]PASS[/]" if ok else "[red]FAIL[/]"
            table.add_row(step["name"], str(n), ours, theirs, ratio, goal, verdict)
    out = Console()
    if not out.is_terminal:
        out.width = max(out.width, 110)  # a log file: no wrapping inside cells
    out.print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains every option)."""
    parser = argparse.ArgumentParser(
        description="Time barrier, collect and distribute with real member processes: corral "
        "(`corral launch -n N`, coordinated by a controller over a TLS nats-server) next to "
        "mpi4py on Open MPI (`mpirun -n N`, shared memory), the same member script for both. "
        "Reading the table: latencies are in microseconds, p50 / p99. For barriers (run back "
        "to back) every member's own wait counts; for collect and distribute (each started "
        "together after an untimed barrier) the slowest member's time counts, when the last "
        "one has its result. corral/MPI is the ratio of the p50s. The goal is corral's "
        "8-member barrier under 2 ms (p50). MPI is the floor on one machine, but a crashed "
        "member hangs it; corral reports the crash within down_after and goes on. Other work "
        "on the machine slows both: the caption shows the load average.",
        epilog="The MPI column needs `mpirun` (apt-get install openmpi-bin libopenmpi-dev) and "
        "mpi4py (pip install -e '.[bench]'); without them it says so and corral still runs. "
        "About 20 s on a quiet 2-core machine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--sizes", type=_ints, default="2,8,32", help="group sizes to time barriers for")
    add("--barriers", type=int, default=200, help="timed barriers per size (+10%% warm-up)")
    add("--value-members", type=int, default=8, help="group size for collect and distribute")
    add(
        "--value-iterations",
        type=int,
        default=100,
        help="timed collects and distributes per value size (1 KB and 1 MB; +10%% warm-up)",
    )
    add("--timeout", type=float, default=300.0, help="give up on one launch after this long")
    add("--no-tls", action="store_true", help="run the bus without TLS (to see what TLS costs)")
    add("--no-mpi", action="store_true", help="time corral only")
    add("--keep", action="store_true", help="keep the temporary directory (logs, raw times)")
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


if __name__ == "__main__":
    arguments = parse_args()
    run_in_tempdir(main, arguments, "corral-bench-groups-", console)
