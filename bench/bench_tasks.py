"""Task cluster benchmark: corral next to Ray, Celery 5 (Redis) and Dask distributed.

Theory of operation: the driver (this process) starts the three stacks, each with two worker
processes on this machine, and measures, for each:

- **round trip**: ``--trips`` sequential single tasks, from the call to the result in hand
  (corral: ``run_task`` through ``corral.Client``, i.e. queue and wait in one call, once over
  the bus — ``nats://``, the admin credential — and once over the HTTP API — ``http://``, a
  token —, against the same controller; Ray: ``ray.get(f.remote())``; Celery:
  ``delay().get()``; Dask: ``submit().result()``), after a warm-up, taken in ``--rounds``
  turns that go round the stacks so a noisy neighbour slows them alike; p50 and p99;
- **throughput**: ``--tasks`` no-op tasks queued in one batch call and every result gathered
  (corral: ``queue_tasks`` + ``wait`` of all ids; Ray: ``ray.get([f.remote(i) ...])``;
  Celery: ``group(...).apply_async().get()``; Dask: ``client.map`` + ``client.gather``), in
  tasks per second.

The table's last columns compare the corral bus row with each other row, in the same run:
its round trip p50 as a fraction of theirs, its throughput as a multiple of theirs.

The stacks: corral's embedded nats-server (TLS on), its controller as its own process with the
SQLite store (every instance persisted: queued, running, complete; each write answered once
the OS has it and fsynced within ``store_fsync_interval``, 0.1 s; ``--fsync-interval 0``: each
commit fsynced before answering), one node with ``--slots 2`` (two worker processes); Celery 5
with Redis on 127.0.0.1:6379 as broker and result backend and a prefork worker of concurrency
2 (results in Redis memory, nothing fsynced); Dask's ``LocalCluster`` with 2 worker processes
of one thread (nothing persisted); Ray 2.60 started locally (``ray.init(num_cpus=2)``: two
worker processes, results in its in-memory object store, nothing persisted).
Celery uses a Redis database (``--redis``) and a queue of its own for the run. Everything
started is stopped, and the temporary directory removed, at the end or on Ctrl-C / SIGTERM.

Run ``python bench/bench_tasks.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
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
from corral import AsyncController, Client, procs
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.config import Config
from corral.security import Authority
from corral.store import open_store
from corral.tokens import Role, create_token

console = Console(stderr=True)
HERE = Path(__file__).resolve().parent


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Stack:
    """A running stack: one single-task round trip, and the batch run of N tasks."""

    def __init__(
        self,
        trip: Callable[[], Awaitable[Any]],
        batch: Callable[[int], Awaitable[list[Any]]],
    ) -> None:
        self.trip, self.batch = trip, batch
        self.trips: list[float] = []
        self.elapsed = 0.0
        self.error = ""


def in_thread(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a blocking client's call in one thread of its own (its clients are not shared)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)

    async def call(*args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    return call


def env_with_bench() -> dict[str, str]:
    """Children import the benchmark's task modules from this directory."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


# --- corral ---------------------------------------------------------------------------------


async def start_corral(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> dict[str, Stack]:
    data = root / "data"
    config = Config(data_dir=str(data), nats_port=free_port(), api_port=free_port())
    initialise(config)
    async with await open_store(config.store_url) as store:
        _, token = await create_token(store, Role.OPERATE, "bench")
    authority = Authority.load(data)
    broker = EmbeddedBroker(config, authority)
    await broker.start()
    stack.callback(broker.stop)
    base = [sys.executable, "-m", "corral", "--data-dir", str(data), "--log-format", "json"]
    env = {**env_with_bench(), "CORRAL_API_PORT": str(config.api_port)}
    if args.prefetch:
        env["CORRAL_TASK_PREFETCH"] = str(args.prefetch)
    if args.fsync_interval is not None:
        env["CORRAL_STORE_FSYNC_INTERVAL"] = str(args.fsync_interval)
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

    # The same controller through the one client over the bus (the admin credential).
    over_bus = Client(broker.url, creds=data / "auth" / "admin.creds", config=config, timeout=120)
    await over_bus.open()
    stack.push_async_callback(over_bus.close)

    def batch(client: Client) -> Callable[[int], Awaitable[list[Any]]]:
        async def run(n: int) -> list[Any]:
            ids = await client.queue_tasks("noop", [{"x": i} for i in range(n)])
            return [d.result for d in await client.wait_many(ids, 600)]

        return run

    return {
        CORRAL_BUS: Stack(lambda: over_bus.run("noop", x=1), batch(over_bus)),
        "corral (http://)": Stack(lambda: client.run("noop", x=1), batch(client)),
    }


# --- Ray ------------------------------------------------------------------------------------


async def start_ray(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> dict[str, Stack]:
    import ray

    def start() -> Any:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _temp_dir=str(root / "ray"),
        )
        stack.callback(ray.shutdown)

        @ray.remote
        def noop(x: int = 0) -> int:
            return x

        ray.get([noop.remote(i) for i in range(4)])  # both workers are up
        console.log(f"ray {ray.__version__}: {ray.cluster_resources().get('CPU')} CPUs")
        return noop

    run = in_thread(lambda fn, *a: fn(*a))
    noop = await run(start)

    def batch(n: int) -> list[Any]:
        result: list[Any] = ray.get([noop.remote(i) for i in range(n)])
        return result

    return {
        "Ray 2.60": Stack(lambda: run(lambda: ray.get(noop.remote(1))), lambda n: run(batch, n))
    }


# --- Celery ---------------------------------------------------------------------------------


async def start_celery(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> dict[str, Stack]:
    queue = f"corral-bench-{uuid.uuid4().hex[:8]}"
    env = {**env_with_bench(), "BENCH_REDIS": args.redis, "BENCH_QUEUE": queue}
    os.environ.update(env)
    sys.path.insert(0, str(HERE))
    from celery import group

    import _tasks_celery  # noqa: PLC0415 - after the environment names the queue

    argv = [sys.executable, "-m", "celery", "-A", "_tasks_celery", "worker", "--pool", "prefork"]
    argv += ["--concurrency", "2", "-Q", queue, "--without-gossip", "--without-mingle"]
    argv += ["--without-heartbeat", "--loglevel", "warning"]
    worker = procs.spawn(argv, env=env, log=root / "celery.log")
    stack.callback(procs.stop, worker)
    noop = _tasks_celery.noop
    await asyncio.to_thread(lambda: noop.delay(0).get(timeout=60))  # the worker is up
    console.log(f"celery: worker pid {worker.pid}, queue {queue} on {args.redis}")
    stack.callback(_tasks_celery.app.control.purge)

    def batch(n: int) -> list[Any]:
        result: list[Any] = group(noop.s(i) for i in range(n)).apply_async().get(timeout=600)
        return result

    return {
        "Celery 5 (Redis)": Stack(
            in_thread(lambda: noop.delay(1).get(timeout=30)), in_thread(batch)
        )
    }


# --- Dask -----------------------------------------------------------------------------------


async def start_dask(
    args: argparse.Namespace, root: Path, stack: contextlib.AsyncExitStack
) -> dict[str, Stack]:
    from dask.distributed import Client, LocalCluster

    sys.path.insert(0, str(HERE))
    from _tasks_corral import noop

    def start() -> Any:
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            local_directory=str(root / "dask"),
        )
        stack.callback(cluster.close)
        client = Client(cluster)
        stack.callback(client.close)
        client.submit(noop, 0, pure=False).result()
        console.log(f"dask: scheduler {cluster.scheduler_address}")
        return client

    run = in_thread(lambda fn, *a: fn(*a))
    client = await run(start)

    def batch(n: int) -> list[Any]:
        result: list[Any] = client.gather(client.map(noop, range(n), pure=False))
        return result

    return {
        "Dask distributed": Stack(
            lambda: run(lambda: client.submit(noop, 1, pure=False).result()),
            lambda n: run(batch, n),
        )
    }


# --- main -----------------------------------------------------------------------------------

CORRAL_BUS = "corral (nats://)"
STACKS = {"corral": start_corral, "ray": start_ray, "celery": start_celery, "dask": start_dask}


async def measure(stacks: dict[str, Stack], args: argparse.Namespace) -> None:
    """Round trips in turns that go round the stacks (a noisy neighbour slows them alike),
    then each stack's batch run."""
    for s in stacks.values():
        for _ in range(args.warmup):
            await s.trip()
    per_round = max(1, args.trips // args.rounds)
    for _ in range(args.rounds):
        for s in stacks.values():
            for _ in range(per_round):
                start = time.perf_counter()
                await s.trip()
                s.trips.append(time.perf_counter() - start)
    for name, s in stacks.items():
        console.log(f"{name}: {args.tasks:,} tasks")
        start = time.perf_counter()
        values = await s.batch(args.tasks)
        s.elapsed = time.perf_counter() - start
        if values != list(range(args.tasks)):
            s.error = "lost or mixed results"


async def main(args: argparse.Namespace, root: Path) -> None:
    stacks: dict[str, Stack] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, start in STACKS.items():
            if name in args.skip:
                continue
            try:
                stacks.update(await start(args, root, stack))
            except Exception as exc:  # one stack failing must not hide the others
                console.log(f"[red]{name} did not start: {type(exc).__name__}: {exc}")
        await measure(stacks, args)
    trips = len(next(iter(stacks.values())).trips) if stacks else 0
    interval = 0.1 if args.fsync_interval is None else args.fsync_interval
    fsync = "at every commit" if interval == 0 else f"within {interval:g} s"
    table = Table(
        title=f"{args.tasks:,} no-op tasks, 2 worker processes each; {trips} round trips each",
        caption="corral writes every state of every task to SQLite before answering (fsynced "
        f"{fsync}); Ray keeps results in its object store, Celery in Redis memory; Dask "
        "persists nothing",
    )
    for column in (
        "stack",
        "throughput (tasks/s)",
        "batch wall (s)",
        "round trip p50",
        "p99",
        "bus p50 / this p50",
        "bus throughput / this",
    ):
        table.add_column(column, justify="right" if column != "stack" else "left")
    base = stacks.get(CORRAL_BUS)
    for name, s in stacks.items():
        if s.error:
            table.add_row(name, "error", "", "", "", "", s.error)
            continue
        p50, faster = "", ""
        if base is not None and name != CORRAL_BUS and not base.error:
            p50 = f"{statistics.median(base.trips) / statistics.median(s.trips):.2f}"
            faster = f"{s.elapsed / base.elapsed:.1f}x"
        table.add_row(
            name,
            f"{args.tasks / s.elapsed:,.0f}",
            f"{s.elapsed:.2f}",
            f"{statistics.median(s.trips) * 1000:.2f} ms",
            f"{percentile(s.trips, 99) * 1000:.2f} ms",
            p50,
            faster,
        )
    Console(width=max(Console().width, 132)).print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the throughput run")
    parser.add_argument("--trips", type=int, default=500, help="timed single-task round trips")
    parser.add_argument("--warmup", type=int, default=50, help="untimed round trips first")
    parser.add_argument("--rounds", type=int, default=10, help="turns the round trips take")
    parser.add_argument(
        "--fsync-interval",
        type=float,
        default=None,
        help="corral's store_fsync_interval (default: the controller's, 0.1 s; 0 fsyncs "
        "every commit before answering)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11", help="Celery's Redis")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=list(STACKS), help="stacks to skip"
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="corral's task_prefetch, the ceiling of its adaptive prefetch (default: the "
        "controller's default, 16)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_in_tempdir(main, parse_args(), "corral-bench-tasks-", console)
