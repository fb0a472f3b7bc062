"""Task cluster benchmark: corral next to Celery 5 (Redis) and Dask distributed, side by side.

Theory of operation: the driver (this process) starts each stack with two worker processes on
this machine and measures, for each:

- **round trip**: ``--trips`` sequential single tasks, from the call to the result in hand
  (corral: ``queue_task`` + ``wait`` over its HTTP API; Celery: ``delay().get()``; Dask:
  ``submit().result()``), after a warm-up; p50 and p99;
- **throughput**: ``--tasks`` no-op tasks queued in one batch call and every result gathered
  (corral: ``queue_tasks`` + ``wait`` of all ids; Celery: ``group(...).apply_async().get()``;
  Dask: ``client.map`` + ``client.gather``), in tasks per second.

The stacks: corral's embedded nats-server (TLS on), its controller as its own process with the
SQLite store (every instance persisted: queued, running, complete, each write fsynced), one
node with ``--slots 2`` (two worker processes); Celery 5 with Redis on 127.0.0.1:6379 as broker
and result backend and a prefork worker of concurrency 2 (results in Redis memory, nothing
fsynced); Dask's ``LocalCluster`` with 2 worker processes of one thread (nothing persisted).
Celery uses a Redis database (``--redis``) and a queue of its own for the run. Everything
started is stopped, and the temporary directory removed, at the end or on Ctrl-C / SIGTERM.

Run ``python bench/bench_tasks.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _harness import free_port, run_in_tempdir
from corral import AsyncController, procs
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.config import Config
from corral.security import Authority
from corral.store import Store
from corral.tokens import Role, create_token

console = Console(stderr=True)
HERE = Path(__file__).resolve().parent
Result = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def timed_trips(one: Callable[[], Awaitable[Any]], n: int, warmup: int) -> list[float]:
    """Seconds of each of ``n`` sequential round trips, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        await one()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await one()
        out.append(time.perf_counter() - start)
    return out


def env_with_bench() -> dict[str, str]:
    """Children import the benchmark's task modules from this directory."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


# --- corral ---------------------------------------------------------------------------------


async def bench_corral(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> Result:
    data = root / "data"
    config = Config(data_dir=str(data), nats_port=free_port(), api_port=free_port())
    initialise(config)
    async with await Store.open(config.store_url) as store:
        _, token = await create_token(store, Role.OPERATE, "bench")
    authority = Authority.load(data)
    broker = EmbeddedBroker(config, authority)
    await broker.start()
    stack.callback(broker.stop)
    base = [sys.executable, "-m", "corral", "--data-dir", str(data), "--log-format", "json"]
    env = {**env_with_bench(), "CORRAL_API_PORT": str(config.api_port)}
    controller = procs.spawn(
        [*base, "controller", "--nats", broker.url], env=env, log=root / "controller.log"
    )
    stack.callback(procs.stop, controller)
    creds = data / "auth" / "node-bench.creds"
    creds.write_text(authority.enroll("bench"))
    node_argv = [*base, "node", "--name", "bench", "--nats", broker.url, "--creds", str(creds)]
    node_argv += ["--slots", "2", "--tasks", "_tasks_corral"]
    node = procs.spawn(node_argv, env=env, log=root / "node.log")
    stack.callback(procs.stop, node)
    client = AsyncController(config.api_url, token, timeout=120)
    stack.push_async_callback(client.close)
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(Exception):
                if await client.list_tasks(keys=["noop"]):
                    break
            await asyncio.sleep(0.1)
    console.log(f"corral: controller pid {controller.pid}, node pid {node.pid}, {config.api_url}")
    trips = await timed_trips(lambda: client.run("noop"), args.trips, args.warmup)
    start = time.perf_counter()
    ids = await client.queue_tasks("noop", [{"x": i} for i in range(args.tasks)])
    done = await client.wait_many(ids, 600)
    elapsed = time.perf_counter() - start
    assert [d.result for d in done] == list(range(args.tasks)), "corral lost or mixed results"
    return {"trips": trips, "elapsed": elapsed}


# --- Celery ---------------------------------------------------------------------------------


async def bench_celery(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> Result:
    queue = f"corral-bench-{uuid.uuid4().hex[:8]}"
    env = {**env_with_bench(), "BENCH_REDIS": args.redis, "BENCH_QUEUE": queue}
    os.environ.update(env)
    sys.path.insert(0, str(HERE))
    import _tasks_celery  # noqa: PLC0415 - after the environment names the queue
    from celery import group

    argv = [sys.executable, "-m", "celery", "-A", "_tasks_celery", "worker", "--pool", "prefork"]
    argv += ["--concurrency", "2", "-Q", queue, "--without-gossip", "--without-mingle"]
    argv += ["--without-heartbeat", "--loglevel", "warning"]
    worker = procs.spawn(argv, env=env, log=root / "celery.log")
    stack.callback(procs.stop, worker)
    noop = _tasks_celery.noop

    def one() -> None:
        noop.delay(1).get(timeout=30)

    await asyncio.to_thread(lambda: noop.delay(0).get(timeout=60))  # worker up
    console.log(f"celery: worker pid {worker.pid}, queue {queue} on {args.redis}")
    trips = await asyncio.to_thread(_sync_trips, one, args.trips, args.warmup)

    def throughput() -> float:
        start = time.perf_counter()
        result = group(noop.s(i) for i in range(args.tasks)).apply_async()
        values = result.get(timeout=600)
        elapsed = time.perf_counter() - start
        assert values == list(range(args.tasks)), "celery lost or mixed results"
        return elapsed

    elapsed = await asyncio.to_thread(throughput)
    _tasks_celery.app.control.purge()
    return {"trips": trips, "elapsed": elapsed}


def _sync_trips(one: Callable[[], Any], n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        one()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        one()
        out.append(time.perf_counter() - start)
    return out


# --- Dask -----------------------------------------------------------------------------------


async def bench_dask(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> Result:
    from dask.distributed import Client, LocalCluster

    sys.path.insert(0, str(HERE))
    from _tasks_corral import noop

    def run() -> Result:
        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                local_directory=str(root / "dask"),
            ) as cluster,
            Client(cluster) as client,
        ):
            client.submit(noop, 0, pure=False).result()
            console.log(f"dask: scheduler {cluster.scheduler_address}")
            trips = _sync_trips(
                lambda: client.submit(noop, 1, pure=False).result(), args.trips, args.warmup
            )
            start = time.perf_counter()
            futures = client.map(noop, range(args.tasks), pure=False)
            values = client.gather(futures)
            elapsed = time.perf_counter() - start
            assert values == list(range(args.tasks)), "dask lost or mixed results"
            return {"trips": trips, "elapsed": elapsed}

    return await asyncio.to_thread(run)


# --- main -----------------------------------------------------------------------------------

STACKS = {"corral": bench_corral, "Celery 5 (Redis)": bench_celery, "Dask distributed": bench_dask}


async def main(args: argparse.Namespace, root: Path) -> None:
    results: dict[str, Result] = {}
    for name, bench in STACKS.items():
        if name.split()[0].lower() in args.skip:
            continue
        console.rule(name)
        async with contextlib.AsyncExitStack() as stack:
            try:
                results[name] = await bench(args, root, stack)
            except Exception as exc:  # one stack failing must not hide the others
                console.log(f"[red]{name} failed: {type(exc).__name__}: {exc}")
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    table = Table(
        title=f"{args.tasks:,} no-op tasks, 2 worker processes each; {args.trips} round trips",
        caption="corral persists every task (SQLite, fsync); Celery keeps results in Redis "
        "memory; Dask persists nothing",
    )
    for column in (
        "stack",
        "throughput (tasks/s)",
        "10k wall (s)",
        "round trip p50",
        "p99",
        "vs corral",
    ):
        table.add_column(column, justify="right" if column != "stack" else "left")
    base = results.get("corral", {}).get("elapsed")
    for name, r in results.items():
        if "error" in r:
            table.add_row(name, "error", "", "", "", r["error"][:60])
            continue
        rate = args.tasks / r["elapsed"]
        ratio = f"{r['elapsed'] / base:.2f}x slower" if base and name != "corral" else ""
        table.add_row(
            name,
            f"{rate:,.0f}",
            f"{r['elapsed']:.2f}",
            f"{statistics.median(r['trips']) * 1000:.2f} ms",
            f"{percentile(r['trips'], 99) * 1000:.2f} ms",
            ratio,
        )
    Console().print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the throughput run")
    parser.add_argument("--trips", type=int, default=500, help="timed single-task round trips")
    parser.add_argument("--warmup", type=int, default=50, help="untimed round trips first")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="Celery's Redis")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["corral", "celery", "dask"], help="stacks to skip"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_in_tempdir(main, parse_args(), "corral-bench-tasks-", console)
