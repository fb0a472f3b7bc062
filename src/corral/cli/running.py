"""Long-running commands: controller, node, up."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from corral import procs
from corral.cli.admin import initialise
from corral.cli.common import GLOBALS, at_least, configure, err, fail, local_audit, run
from corral.cli.supervisor import Supervised
from corral.cli.upview import watch_up
from corral.config import Config
from corral.core.text import check_join_text
from corral.errors import CorralError, NotLeader, Unavailable, UsageError
from corral.node import Node
from corral.node.handlers import Handlers, load_handlers
from corral.security import Authority, write_secret
from corral.tokens import ensure_admin_token

__all__ = ["register"]

#: seconds between a deposed controller's tries to serve again while the store or bus is away
_RESTART_WAIT = 1.0


async def until_signalled(main: asyncio.Task[Any]) -> None:
    """Wait for ``main`` or SIGINT/SIGTERM, whichever comes first; cancel ``main`` on a signal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({main, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if not main.done():
        main.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await main  # re-raises the task's own error, if it failed


async def _controller(config: Config) -> None:
    # Imported here: `corral node` processes should not pay for the store's imports.
    from corral.app import ControllerService
    from corral.broker import EmbeddedBroker

    broker = None
    if config.embedded:
        authority = Authority.load(config.data_path)
        broker = EmbeddedBroker(config, authority)
        await broker.start()
        err.print(f"nats-server listening on {broker.url} (log {broker.log_path})")
    try:
        # The imports' ~130,000 objects live as long as the process: out of the garbage
        # collector's full passes, which walked them for 30-100 ms with every thread stopped,
        # the event loop's included (issue #14). Per process, so tests that start many
        # controllers in one still collect the earlier ones' garbage.
        gc.freeze()
        deposed = False
        while True:
            controller = ControllerService(config)
            try:
                await until_signalled(asyncio.create_task(controller.serve_forever()))
                return
            except NotLeader as exc:
                # Deposed: everything of that leader is torn down; serve again as a standby
                # (a fresh controller, nothing carried over but the bus server).
                err.print(f"{exc}; serving again as a standby (leader: {exc.leader or '-'})")
                deposed = True
            except Unavailable as exc:
                if not deposed:
                    raise  # a first start: say what is wrong and stop
                # Deposed by a partition, the store or the bus may still be out of reach:
                # a standby waits for them instead of exiting.
                err.print(f"could not serve again as a standby: {exc}; trying again")
                pause = asyncio.create_task(asyncio.sleep(_RESTART_WAIT))
                await until_signalled(pause)
                if pause.cancelled():
                    return
    finally:
        if broker is not None:
            broker.stop()


def controller(
    nats: Annotated[
        str | None,
        typer.Option(
            "--nats",
            help="External NATS URL, or a cluster's servers comma-separated (default: the "
            "embedded server).",
        ),
    ] = None,
    nats_host: Annotated[
        str | None, typer.Option(help="Embedded server address (0.0.0.0 for other machines).")
    ] = None,
    nats_port: Annotated[int | None, typer.Option(help="Embedded server port.")] = None,
    store: Annotated[
        str | None, typer.Option(help="Store DSN, e.g. postgresql://user@host/db.")
    ] = None,
    creds: Annotated[str | None, typer.Option(help="Controller credentials file.")] = None,
    ca: Annotated[str | None, typer.Option(help="CA file to verify the bus.")] = None,
    aggregators: Annotated[
        list[str] | None,
        typer.Option(
            help="Python module with @corral.aggregator functions for node reports "
            "(repeatable; also the corral.aggregators entry points)."
        ),
    ] = None,
) -> None:
    """Run the controller (and the embedded nats-server unless --nats is given)."""
    config, _ = configure(
        daemon=True,
        nats_url=nats,
        nats_host=nats_host,
        nats_port=nats_port,
        store=store,
        creds=creds,
        ca=ca,
    )
    load_handlers(aggregators or (), entry_point_group="corral.aggregators")
    run(_controller(config))


def _attributes(pairs: list[str], sink: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--attr takes KEY=VALUE, got {pair!r}")
        attributes[key] = value
    if sink:
        attributes["sink"] = True
    return attributes


def node(
    name: Annotated[str, typer.Option(help="The node's unique name (as enrolled).")],
    label: Annotated[list[str] | None, typer.Option(help="A label (repeatable).")] = None,
    interface: Annotated[
        list[str] | None, typer.Option(help="An interface this node controls (repeatable).")
    ] = None,
    sink: Annotated[bool, typer.Option(help="Receive the periodic data updates.")] = False,
    attr: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE attribute (repeatable).")
    ] = None,
    slots: Annotated[
        int,
        typer.Option(
            help="Task worker slots offered (0: none).",
            callback=at_least(0, "give --slots 0 for a node that runs no tasks, or more"),
        ),
    ] = 1,
    tasks: Annotated[
        list[str] | None,
        typer.Option(help="Python module with @task functions for the workers (repeatable)."),
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="Bus URL, or a NATS cluster's servers comma-separated."),
    ] = None,
    creds: Annotated[str | None, typer.Option(help="This node's credentials file.")] = None,
    ca: Annotated[str | None, typer.Option(help="CA file to verify the bus (TLS).")] = None,
    handlers: Annotated[
        list[str] | None,
        typer.Option(
            help="Python module whose @corral.command / param / message_type handlers this "
            "node serves (repeatable; also the corral.handlers entry points)."
        ),
    ] = None,
    work_dir: Annotated[
        str | None,
        typer.Option(help="Where PUT writes and commands run. Default <data_dir>/nodes/NAME."),
    ] = None,
    allow_shell: Annotated[
        bool, typer.Option(help="Run shell commands (`corral run`). Off by default.")
    ] = False,
    allow_execute: Annotated[
        bool,
        typer.Option(help="Run uploaded Python files (`corral execute`). Off by default."),
    ] = False,
) -> None:
    """Run a node daemon: join the controller, heartbeat, run the commands sent to it.

    Starts even if the controller is not up yet, and joins when it appears. Commands sent
    while it was away arrive when it is back, in order, each once.

    Example: `corral node --name web1 --label gpu --handlers myapp.corral_handlers`
    """
    config, _ = configure(daemon=True, nats_url=nats, creds=creds, ca=ca)
    attributes = _attributes(attr or [], sink)
    try:
        check_join_text(label or (), interface or (), attributes, "", "", "")
    except CorralError as exc:
        fail(exc)
    load_handlers(handlers or ())
    directory = Path(work_dir).expanduser() if work_dir else config.data_path / "nodes" / name
    daemon = Node(
        config,
        name,
        labels=tuple(label or ()),
        interfaces=tuple(interface or ()),
        attributes=attributes,
        slots=slots,
        creds=Path(creds) if creds else None,
        handlers=Handlers.collect(
            directory,
            allow_shell=allow_shell,
            allow_execute=allow_execute,
            output_limit=config.output_limit,
        ),
        work_dir=directory,
        tasks=tuple(tasks or ()),
    )

    async def main() -> None:
        await until_signalled(asyncio.create_task(daemon.run()))
        await daemon.stop()

    run(main())


# --- up -------------------------------------------------------------------------------------


def _local_creds(config: Config, authority: Authority, name: str) -> Path:
    """The credential of a local node, issued once and reused by later runs."""
    path = authority.directory / f"node-{name}.creds"
    if not (path.exists() and authority.is_enrolled(name)):
        write_secret(path, authority.enroll(name))
    return path


def _api_ports(config: Config, controllers: int) -> list[int]:
    """The API port of each controller `corral up` runs: the configured one, then the next
    ones (0, any free port, stays 0 for each)."""
    base = config.api_port
    return [base + i if base > 0 else base for i in range(controllers)]


async def _up(
    config: Config,
    count: int,
    node_args: list[str],
    controller_args: list[str],
    controllers: int = 1,
) -> None:
    from corral.broker import EmbeddedBroker
    from corral.store import open_store

    initialise(config)
    async with await open_store(config.store_url) as store:
        await ensure_admin_token(config, store, local_audit("token_create", ""))
    authority = Authority.load(config.data_path)
    broker = EmbeddedBroker(config, authority)
    await broker.start()
    logs = config.data_path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rotate = (config.log_max_bytes, config.log_backups)
    base = [sys.executable, "-m", "corral", "--data-dir", str(config.data_path)]
    base += ["--log-format", "json", "--log-level", config.log_level]
    if GLOBALS.config_file:
        base += ["--config", GLOBALS.config_file]
    children: dict[str, subprocess.Popen[bytes]] = {}
    ports = _api_ports(config, controllers)
    names = ["controller", *(f"controller-{i}" for i in range(2, controllers + 1))]

    def starter(name: str, port: int) -> Callable[[], subprocess.Popen[bytes]]:
        argv = [*base, "controller", "--nats", broker.url, *controller_args]
        env = {"CORRAL_API_PORT": str(port)}
        return lambda: procs.spawn(argv, env=env, log=logs / f"{name}.log", rotate=rotate)

    supervised = [Supervised(n, starter(n, p), children) for n, p in zip(names, ports, strict=True)]
    try:
        for one in supervised:  # started here, on the loop's thread: see Supervised
            children[one.name] = one.start()
        for i in range(1, count + 1):
            name = f"node-{i}"
            creds = _local_creds(config, authority, name)
            argv = [*base, "node", "--name", name, "--nats", broker.url, "--creds", str(creds)]
            argv += node_args
            children[name] = procs.spawn(argv, log=logs / f"{name}.log", rotate=rotate)
        apis = [msgspec.structs.replace(config, api_port=p).api_url for p in ports]
        await until_signalled(
            asyncio.create_task(_watch(config, broker.url, children, apis, supervised))
        )
    finally:
        # Nodes first (they say goodbye to the controller), then the controllers, then the bus.
        nodes = [p for n, p in children.items() if n not in names]
        for proc in nodes:
            proc.terminate()
        for proc in nodes:
            procs.stop(proc)
        for name in names:
            if name in children:
                procs.stop(children[name])
        broker.stop()
        err.print("stopped: every child process has exited")


async def _watch(
    config: Config,
    url: str,
    children: dict[str, subprocess.Popen[bytes]],
    apis: list[str],
    supervised: list[Supervised],
) -> None:
    """Show the fleet while the supervisors restart what exits; either failing ends `up`."""
    tasks = [asyncio.create_task(one.run()) for one in supervised]
    tasks.append(asyncio.create_task(watch_up(config, url, children, apis)))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raises the error that ended it
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def up(
    nodes: Annotated[
        int,
        typer.Option(
            "--nodes",
            "-n",
            help="Local node daemons to start (0: the controller alone).",
            callback=at_least(0, "give --nodes 0 for the controller alone, or more nodes"),
        ),
    ] = 4,
    nats_port: Annotated[int | None, typer.Option(help="Embedded server port.")] = None,
    handlers: Annotated[
        list[str] | None,
        typer.Option(help="Handler module every local node loads (repeatable); see `node`."),
    ] = None,
    allow_shell: Annotated[
        bool, typer.Option(help="Let the local nodes run shell commands (`corral run`).")
    ] = False,
    aggregators: Annotated[
        list[str] | None,
        typer.Option(help="Module with @corral.aggregator functions for the controller."),
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option(help="Task module every local node's workers load (repeatable)."),
    ] = None,
    controllers: Annotated[
        int,
        typer.Option(
            "--controllers",
            help="Controllers to run: one leads, the others stand by to take over (2 or more "
            "need a shared store: --store postgresql://...). Each has its own API port: "
            "api_port, api_port+1, ...",
            callback=at_least(1, "give --controllers 1 (the default) or more"),
        ),
    ] = 1,
    store: Annotated[
        str | None, typer.Option(help="Store DSN, e.g. postgresql://user@host/db.")
    ] = None,
) -> None:
    """Run everything on this machine: nats-server, the controller(s) and N nodes.

    Initialises the data directory on first use (keys, credentials, TLS CA). Shows a live
    table of the nodes; Ctrl-C or SIGTERM stops every child process. A controller that exits
    (a crash, kill -9) is started again with backoff (0.5 s doubling to 10 s) while the bus
    and the nodes stay up. In another terminal: `corral send '*' ping`, `corral nodes`.
    """
    config, _ = configure(daemon=True, nats_port=nats_port, store=store)
    sqlite = "://" not in config.store_url or config.store_url.startswith("sqlite")
    if controllers > 1 and sqlite:
        fail(
            UsageError(
                f"--controllers {controllers} needs a store every controller shares, not the "
                f"SQLite file {config.store_url}: give --store postgresql://user@host/db"
            )
        )
    node_args = [arg for module in handlers or () for arg in ("--handlers", module)]
    node_args += [arg for module in tasks or () for arg in ("--tasks", module)]
    if allow_shell:
        node_args.append("--allow-shell")
    controller_args = [arg for module in aggregators or () for arg in ("--aggregators", module)]
    if store:
        controller_args += ["--store", store]
    run(_up(config, nodes, node_args, controller_args, controllers))


def register(app: typer.Typer) -> None:
    """Add these commands to ``app``."""
    app.command()(up)
    app.command()(controller)
    app.command()(node)
