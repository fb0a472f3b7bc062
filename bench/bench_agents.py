"""Agent messaging benchmark: corral vs bare nats-py vs Pyro5, request/reply and one-way.

Theory of operation: the driver (this process) initialises a throw-away data directory, starts
the embedded nats-server (TLS on) and one responder process per stack (this file with
``--child``; it prints ``ready`` once it serves). It times ``--asks`` sequential round trips
per stack, taken in ``--rounds`` turns that go round the stacks, so a noisy neighbour on the
machine slows them alike; then, as many times (``--bursts``), it sends each stack
``--messages`` one-way messages as fast as it can and asks for the count, answered once the
responder's handler has counted the burst's last (an event, no polling). The bare nats-py
responder is the floor: same server, credential, TLS and inbox prefix, no corral. Pyro5's
blocking calls run in a worker thread, one hop per turn, so that Ctrl-C is not held up.
Everything started is stopped and the directory removed at the end, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats
import Pyro5.api
from rich.console import Console
from rich.table import Table

from _harness import run_in_tempdir
from corral import Agent, Message, on, procs
from corral.broker import EmbeddedBroker
from corral.cli.admin import initialise
from corral.config import Config
from corral.errors import Overloaded
from corral.security import Authority, agent_inbox
from corral.sender import Sender

console = Console(stderr=True)
STACKS = ("corral", "bare nats-py", "Pyro5")
BARE, BARE_DONE = "corral.agent.bare", "corral.agent.bare-done"  # the agent credential's subjects
#: A stack's driver side: ``asks(n)`` -> (round trips in ns, last reply); ``burst(total)``
#: sends ``--messages`` and returns how many the responder has handled (``total`` expected).
Client = tuple[Callable[[int], Awaitable[tuple[list[int], Any]]], Callable[[int], Awaitable[int]]]


class Pong(Agent):
    """Answers ``ping`` with its data; counts ``note``; answers ``done`` after a burst's last."""

    name = "bench"

    def __init__(self, burst: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.burst, self.count, self.finished = burst, 0, asyncio.Event()

    def work(self) -> None:
        print("ready", flush=True)  # subscribed and serving: tell the driver

    @on("ping")
    async def ping(self, msg: Message) -> Any:
        return msg.data

    @on("note")
    async def note(self, msg: Message) -> None:
        self.count += 1
        if self.count % self.burst == 0:
            self.finished.set()

    @on("done")
    async def done(self, msg: Message) -> int:
        # One sender's messages arrive in order: once a note was refused (inbox full) the
        # count can never reach the goal, so answer at once and let the driver report it.
        if not self.overflow:
            await self.finished.wait()
            self.finished.clear()
        return self.count


async def serve_bare(spec: dict[str, Any]) -> None:
    """Plain nats-py: reply to requests with their data, count one-way messages."""
    count, finished, stop = 0, asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def on_message(msg: Any) -> None:
        nonlocal count
        data = msgspec.msgpack.decode(msg.data)
        if msg.reply:
            await msg.respond(msgspec.msgpack.encode(data))
        else:
            count += 1
            if count % spec["messages"] == 0:
                finished.set()

    async def on_done(msg: Any) -> None:
        await finished.wait()
        finished.clear()
        await msg.respond(msgspec.msgpack.encode(count))

    nc = await bare_connect(spec)
    await nc.subscribe(BARE, cb=on_message)
    await nc.subscribe(BARE_DONE, cb=on_done)
    await nc.flush()
    print("ready", flush=True)
    await stop.wait()
    await nc.drain()


@Pyro5.api.expose
class PyroPong:
    """Pyro5's twin of :class:`Pong`; one-way calls run in threads, hence the condition."""

    def __init__(self) -> None:
        self.count, self.changed = 0, threading.Condition()

    def ping(self, data: Any) -> Any:
        return data

    @Pyro5.api.oneway  # type: ignore[untyped-decorator]
    def note(self, data: Any) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def done(self, total: int, timeout: float) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.count >= total, timeout)
            return self.count


def serve(kind: str, spec: dict[str, Any]) -> None:
    """Run the responder of ``kind`` until SIGTERM (the agent stops cleanly)."""
    if kind == "Pyro5":
        with Pyro5.api.Daemon(host="127.0.0.1", port=spec["port"]) as daemon:
            daemon.register(PyroPong(), "bench")
            print("ready", flush=True)
            daemon.requestLoop()
        return
    if kind == "bare nats-py":
        return asyncio.run(serve_bare(spec))
    agent = Pong(spec["messages"], config=Config(**spec["config"]), inbox_size=spec["inbox"])

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, agent.stop)
        await agent.run()

    asyncio.run(run())


async def bare_connect(spec: dict[str, Any]) -> Any:
    """A nats-py connection with the agent credential, TLS and inbox a corral Sender uses."""
    data = Path(spec["config"]["data_dir"])
    return await nats.connect(
        f"tls://127.0.0.1:{spec['config']['nats_port']}",
        user_credentials=str(data / "auth" / "agent.creds"),
        tls=ssl.create_default_context(cafile=str(data / "pki" / "ca.pem")),
        inbox_prefix=agent_inbox("sender"),
    )


async def timed(n: int, ask: Callable[[], Awaitable[Any]]) -> tuple[list[int], Any]:
    """Await ``ask()`` ``n`` times; return each one's duration (ns) and the last result."""
    took, reply = [], None
    for _ in range(n):
        start = time.perf_counter_ns()
        reply = await ask()
        took.append(time.perf_counter_ns() - start)
    return took, reply


async def corral_client(
    spec: dict[str, Any], a: argparse.Namespace, stack: contextlib.AsyncExitStack
) -> Client:
    """corral's driver side: a :class:`Sender` with the data directory's agent credential."""
    tx, data = await Sender.connect(Config(**spec["config"])), payload(a)
    stack.push_async_callback(tx.close)

    async def burst(_: int) -> int:
        for _ in range(a.messages):
            await tx.send_to("bench", "note", data)
        while True:  # with a small --inbox, "done" too may be refused: ask until it fits
            with contextlib.suppress(Overloaded):
                return int(await tx.ask("bench", "done", timeout=a.timeout))

    return lambda k: timed(k, lambda: tx.ask("bench", "ping", data)), burst


async def bare_client(
    spec: dict[str, Any], a: argparse.Namespace, stack: contextlib.AsyncExitStack
) -> Client:
    """The floor's driver side: ``nc.request`` and ``nc.publish``, msgpack by hand."""
    nc, data = await bare_connect(spec), payload(a)
    pack, unpack = msgspec.msgpack.encode, msgspec.msgpack.decode
    stack.push_async_callback(nc.close)

    async def ask() -> Any:
        return unpack((await nc.request(BARE, pack(data), timeout=5.0)).data)

    async def burst(_: int) -> int:
        for _ in range(a.messages):
            await nc.publish(BARE, pack(data))
        return int(unpack((await nc.request(BARE_DONE, b"", timeout=a.timeout)).data))

    return lambda k: timed(k, ask), burst


async def pyro_client(
    spec: dict[str, Any], a: argparse.Namespace, stack: contextlib.AsyncExitStack
) -> Client:
    """Pyro5's driver side: a proxy, called from a worker thread (it blocks)."""
    proxy, data = Pyro5.api.Proxy(f"PYRO:bench@127.0.0.1:{spec['port']}"), payload(a)
    own = proxy._pyroClaimOwnership  # a proxy serves one thread at a time: take it over

    def release() -> None:
        own()
        proxy._pyroRelease()

    async def now(value: Any) -> Any:  # a blocking call's result, to share timed()
        return value

    def asks(k: int) -> tuple[list[int], Any]:  # in a worker thread, with a loop of its own
        own()
        return asyncio.run(timed(k, lambda: now(proxy.ping(data))))

    def burst(total: int) -> int:
        own()
        for _ in range(a.messages):
            proxy.note(data)
        return int(proxy.done(total, a.timeout))

    stack.callback(release)
    return lambda k: asyncio.to_thread(asks, k), lambda t: asyncio.to_thread(burst, t)


def payload(a: argparse.Namespace) -> dict[str, Any]:
    """The data of every message: a small dict."""
    return {"seq": 12345, "text": "x" * a.size}


def spawn(kind: str, spec: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    """Start the responder of ``kind``, in its own process group, dying with us."""

    def die_with_parent() -> None:  # between fork and exec, as corral.procs does
        if sys.platform.startswith("linux"):
            ctypes.CDLL(ctypes.util.find_library("c")).prctl(1, signal.SIGTERM)

    argv = [sys.executable, __file__, "--child", kind, "--spec", json.dumps(spec)]
    with log.open("ab") as out:  # own process group: Ctrl-C reaches only the driver
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=out, preexec_fn=die_with_parent, process_group=0
        )


async def start(
    kind: str, spec: dict[str, Any], log: Path, stack: contextlib.AsyncExitStack
) -> None:
    """Start the responder of ``kind`` (``stack`` stops it); return once it says ``ready``.

    Raises:
        RuntimeError: it exited first (the end of its log says why).
    """
    child = spawn(kind, spec, log)
    stack.callback(procs.stop, child)
    assert child.stdout is not None
    if (await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)).strip() != b"ready":
        tail = (await asyncio.to_thread(log.read_text))[-2000:]
        raise RuntimeError(f"{kind} responder failed to start; the end of {log}:\n{tail}")


def go_on() -> None:
    """Raise CancelledError if a cancellation was swallowed (nats-py's forced flush does)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def measure(clients: dict[str, Client], a: argparse.Namespace) -> dict[str, list[float]]:
    """Interleaved round trips, then bursts: kind -> [p50, p99, median msgs/s, lost].

    Raises:
        RuntimeError: a stack's reply differs from its request.
    """
    took: dict[str, list[int]] = {kind: [] for kind in clients}
    rates: dict[str, list[float]] = {kind: [] for kind in clients}
    handled = dict.fromkeys(clients, 0)
    for kind, (asks, _) in clients.items():
        if (await asks(a.warmup))[1] != payload(a):
            raise RuntimeError(f"{kind}: the reply differs from the request")
    for r in range(a.rounds):
        for kind, (asks, _) in clients.items():
            go_on()
            took[kind] += (await asks(a.asks * (r + 1) // a.rounds - a.asks * r // a.rounds))[0]
    console.log(f"{a.bursts} bursts of {a.messages} one-way messages per stack")
    for b in range(a.bursts):
        for kind, (_, burst) in clients.items():
            go_on()
            start_s = time.perf_counter()
            count = await burst((b + 1) * a.messages)
            rates[kind].append((count - handled[kind]) / (time.perf_counter() - start_s))
            handled[kind] = count
    results = {}
    for kind, ns in took.items():
        ns.sort()
        p50, p99 = ns[len(ns) // 2] / 1e3, ns[min(len(ns) - 1, len(ns) * 99 // 100)] / 1e3
        rate = sorted(rates[kind])[a.bursts // 2]
        results[kind] = [p50, p99, rate, a.bursts * a.messages - handled[kind]]
    return results


async def main(a: argparse.Namespace, root: Path) -> None:
    """Start everything, measure, print the table; stop everything whatever happens."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    a.load = os.getloadavg()[0]  # other work on the machine shows in the numbers: say so
    ports = []
    for _ in range(2):  # nats-server's and Pyro5's: ports nobody listens on right now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
    config = Config(data_dir=str(root / "data"), nats_port=ports[0])
    initialise(config)
    spec = {"config": {"data_dir": config.data_dir, "nats_port": ports[0]}, "port": ports[1]}
    spec |= {"messages": a.messages, "inbox": a.inbox or a.messages}
    async with contextlib.AsyncExitStack() as stack:
        broker = EmbeddedBroker(config, Authority.load(config.data_path))
        await broker.start()
        stack.callback(broker.stop)
        logs = {kind: root / f"{kind.replace(' ', '-')}.log" for kind in STACKS}
        await asyncio.gather(*(start(kind, spec, logs[kind], stack) for kind in STACKS))
        connect = {"corral": corral_client, "bare nats-py": bare_client, "Pyro5": pyro_client}
        clients = {kind: await connect[kind](spec, a, stack) for kind in STACKS}
        console.log(f"all serving; {a.asks} round trips per stack in {a.rounds} turns")
        results = await measure(clients, a)
    Console().print(report(results, a))


def report(results: dict[str, list[float]], a: argparse.Namespace) -> Table:
    """The results table, with the ratios to bare nats-py and the goals' verdicts."""
    floor, corral, pyro = results["bare nats-py"], results["corral"], results["Pyro5"]
    title = f"agents: {a.asks} round trips, {a.bursts}x{a.messages} one-way ({a.size}-char text)"
    title += f", {os.cpu_count()} cores, 1-min load average before: {a.load:.2f}"
    table = Table(title=title, title_justify="left", caption_justify="left")
    for column in ("stack", "p50 µs", "p99 µs", "msgs/s", "lost", "p50/bare", "msgs/s/bare"):
        table.add_column(column, justify="left" if column == "stack" else "right")
    for kind, (p50, p99, rate, lost) in results.items():
        ratios = f"{p50 / floor[0]:.2f}x", f"{rate / floor[2]:.2f}x"
        table.add_row(kind, f"{p50:.0f}", f"{p99:.0f}", f"{rate:,.0f}", f"{lost:.0f}", *ratios)
    verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]"}
    near, quicker, more = corral[0] <= 1.5 * floor[0], corral[0] < pyro[0], corral[2] > pyro[2]
    table.caption = (
        f"corral p50 within 1.5x of bare nats-py: {verdict[near]} ({corral[0] / floor[0]:.2f}x)\n"
        f"corral round trip faster than Pyro5: {verdict[quicker]} ({pyro[0] / corral[0]:.2f}x)\n"
        f"corral one-way faster than Pyro5: {verdict[more]} ({corral[2] / pyro[2]:.2f}x)"
    )
    return table


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, description and epilog kept as written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` explains every option)."""
    parser = argparse.ArgumentParser(
        formatter_class=_Help,
        description="""\
How fast does an agent answer, and how many messages can it take? Three stacks, each
responder in its own process, measured from this one:
  corral        an Agent (async @on("ping") handler) asked with corral.sender.Sender
  bare nats-py  the same exchange in plain nats-py, same server, TLS and credential:
                the floor, so the ratio to it is what corral's own layer costs
  Pyro5         a Pyro5 daemon with its defaults (serpent, no TLS), a direct socket""",
        epilog="""\
The table: p50/p99 of a round trip, one-way messages/s handled (the median burst), "lost"
one-way messages (never handled), ratios to bare nats-py. Goals: corral's p50 within 1.5x
of bare nats-py; corral faster than Pyro5. Other work on the machine moves the µs (the
title shows the load average): compare ratios.

  python bench/bench_agents.py                         # the defaults, ~45 s
  python bench/bench_agents.py --asks 500 --messages 5000   # a quick check
  python bench/bench_agents.py --inbox 1000            # the Agent's default inbox""",
    )
    add = parser.add_argument
    add("--asks", type=int, default=5000, help="timed sequential round trips per stack")
    add("--warmup", type=int, default=500, help="untimed round trips per stack first")
    add("--rounds", type=int, default=10, help="take the round trips in this many turns")
    add("--messages", type=int, default=50_000, help="one-way messages in a burst")
    add("--bursts", type=int, default=3, help="one-way bursts per stack (the median counts)")
    add("--size", type=int, default=32, help="length of the text in each message's data")
    add("--inbox", type=int, default=0, help="corral agent's inbox; 0: as big as a burst")
    add("--timeout", type=float, default=120.0, help="give up waiting for a burst after this")
    add("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    add("--child", choices=STACKS, help=argparse.SUPPRESS)  # internal: run a responder
    add("--spec", type=json.loads, help=argparse.SUPPRESS)  # internal: the child's settings
    args = parser.parse_args(argv)
    if min(args.asks - args.rounds + 1, args.messages, args.warmup, args.rounds, args.bursts) < 1:
        parser.error("--asks, --messages, --warmup, --rounds (<= asks), --bursts must be > 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child is not None:
        serve(arguments.child, arguments.spec)
        sys.exit(0)
    run_in_tempdir(main, arguments, "corral-bench-", console)
