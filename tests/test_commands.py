"""Addressed commands over a real nats-server: in-process controller and nodes.

The kill -9 and cut-off scenarios with real processes are in test_commands_processes.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import scaled
from corral import bus, subjects, wire
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.client import Client
from corral.config import Config
from corral.controller import Controller
from corral.errors import (
    AuthError,
    ControllerUnavailable,
    NotFound,
    OversizedMessage,
    Refused,
    Unavailable,
    UsageError,
)
from corral.node import Node
from corral.node.handlers import Handlers, Param
from corral.security import Authority
from corral.states import NodeStatus


@pytest.fixture
def config(config: Config, store_url: str) -> Config:
    """Every test here runs on SQLite, and on PostgreSQL when CORRAL_TEST_POSTGRES_DSN is set."""
    return msgspec.structs.replace(config, store=store_url)


def creds_for(config: Config, name: str) -> Path:
    path = config.data_path / f"{name}.creds"
    path.write_text(Authority.load(config.data_path).enroll(name))
    return path


def handlers_for(name: str, work: Path, **options: Any) -> Handlers:
    def whoami(suffix: str = "") -> str:
        return name + suffix

    def boom() -> None:
        raise RuntimeError(f"{name} exploded")

    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def not_data() -> object:
        return object()

    def big(n: int) -> str:
        return "x" * n

    return Handlers(
        work,
        commands={
            "whoami": whoami,
            "boom": boom,
            "slow": slow,
            "not_data": not_data,
            "big": big,
        },
        params={"gain": Param("gain", float, 1.0, "amplifier gain")},
        types={"PING": lambda args, data: {"pong": name, "n": args.get("n")}},
        **options,
    )


async def start_node(config: Config, name: str, **kw: Any) -> Node:
    work = config.data_path / "nodes" / name
    options = {k: kw.pop(k) for k in ("allow_shell", "allow_execute") if k in kw}
    node = Node(
        config,
        name,
        creds=creds_for(config, name),
        handlers=handlers_for(name, work, **options),
        work_dir=work,
        **kw,
    )
    await node.start(wait_for_bus=scaled(5))
    await asyncio.wait_for(node.wait_joined(), scaled(10))
    return node


@pytest.fixture
async def client(controller: Controller, config: Config) -> AsyncIterator[Client]:
    c = await Client.connect(config)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
async def fleet(controller: Controller, config: Config) -> AsyncIterator[dict[str, Node]]:
    nodes = {
        "web1": await start_node(config, "web1", labels=("gpu",), attributes={"role": "web"}),
        "web2": await start_node(config, "web2"),
        "db1": await start_node(config, "db1", interfaces=("eth1",), attributes={"role": "db"}),
        "sink1": await start_node(config, "sink1", attributes={"sink": True}, labels=("gpu",)),
    }
    # Every node is UP before a test sends anything.
    await _wait_consumers(controller, list(nodes))
    try:
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


async def _wait_consumers(controller: Controller, names: list[str]) -> None:
    """Wait until the controller has each node UP: its commands reach it from then on."""
    async with asyncio.timeout(scaled(10)):
        for name in names:
            while (r := controller.registry.nodes.get(name)) is None or r.status != NodeStatus.UP:
                await asyncio.sleep(0.02)


async def run(client: Client, targets: str, command: str = "whoami", **args: Any) -> Any:
    handle = await client.send(targets, command, **args)
    return await handle.wait(scaled(10))


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        ("web1", ["web1"]),
        ("web*", ["web1", "web2"]),
        ("?eb[12]", ["web1", "web2"]),
        ("web1,db1", ["db1", "web1"]),
        ("label:gpu", ["sink1", "web1"]),
        ("has:eth1", ["db1"]),
        ("has:web2", ["web2"]),
        ("sinks", ["sink1"]),
        ("attr:role=db", ["db1"]),  # SEER's DAttrib: exactly the db nodes
        ("attr:role", ["db1", "web1"]),  # every node announcing role, whatever its value
        ("*", ["db1", "sink1", "web1", "web2"]),
    ],
)
async def test_addressing_reaches_exactly_the_matching_nodes(
    fleet: dict[str, Node], client: Client, targets: str, expected: list[str]
) -> None:
    handle = await run(client, targets, suffix="!")
    assert sorted(handle.nodes) == expected
    assert handle.results == {n: n + "!" for n in expected}
    assert handle.ok


async def test_serials_strictly_increase_and_nodes_report_the_last_applied(
    fleet: dict[str, Node], client: Client
) -> None:
    first = await run(client, "web1")
    second = await run(client, "*")
    third = await run(client, "web2")
    assert first.serial < second.serial < third.serial
    assert fleet["web1"].last_serial == second.serial
    assert fleet["web2"].last_serial == third.serial

    def caught_up(nodes: list[wire.NodeView]) -> bool:
        serials = {n.name: n.last_serial for n in nodes}
        return serials["web1"] == second.serial and serials["web2"] == third.serial

    await client.wait_for(caught_up, scaled(5))


async def test_unknown_names_are_reported_and_nothing_matched_is_refused(
    fleet: dict[str, Node], client: Client
) -> None:
    handle = await run(client, "web1,nosuch")
    assert handle.unknown == ["nosuch"]
    assert handle.results == {"web1": "web1"}
    assert not handle.ok  # an unknown exact target is not success
    with pytest.raises(Refused, match="no node matches nosuch"):
        await client.send("nosuch", "whoami")
    with pytest.raises(Refused, match="no node matches"):
        await client.send("zz*", "whoami")
    with pytest.raises(UsageError, match="bad glob"):
        await client.send("web[1", "whoami")
    with pytest.raises(UsageError, match="bad attribute value.*drop the '='"):
        await client.send("attr:role=", "whoami")
    with pytest.raises(Refused, match="no node matches"):
        await client.send("attr:role=cache", "whoami")


async def test_get_set_and_typed_parameters(fleet: dict[str, Node], client: Client) -> None:
    got = await (await client.get("web*", "gain")).wait(scaled(10))
    assert got.results == {"web1": 1.0, "web2": 1.0}
    done = await (await client.set("web1", "gain", "2.5")).wait(scaled(10))
    assert done.results == {"web1": 2.5}
    assert (await (await client.get("web1")).wait(scaled(10))).results == {"web1": {"gain": 2.5}}
    bad = await (await client.set("web1", "gain", "loud")).wait(scaled(10))
    assert "bad value 'loud' for parameter gain" in bad.failed["web1"]
    unknown = await (await client.get("web1", "volume")).wait(scaled(10))
    assert "no parameter 'volume'" in unknown.failed["web1"]


async def test_failures_are_per_node_and_the_node_keeps_serving(
    fleet: dict[str, Node], client: Client
) -> None:
    boom = await run(client, "web*", "boom")
    assert boom.failed == {
        "web1": "RuntimeError: web1 exploded",
        "web2": "RuntimeError: web2 exploded",
    }
    missing = await run(client, "web1", "nosuch")
    assert "no command 'nosuch' on this node" in missing.failed["web1"]
    bad_result = await run(client, "web1", "not_data")
    assert "not msgpack-able" in bad_result.failed["web1"]
    slow = await (
        await client.command("web1", "command", "slow", args={"seconds": 5}, timeout=0.3)
    ).wait(scaled(10))
    assert "timed out after 0.3 s" in slow.failed["web1"]
    custom = await (await client.command("db1", "PING", args={"n": 3})).wait(scaled(10))
    assert custom.results == {"db1": {"pong": "db1", "n": 3}}
    unknown_type = await (await client.command("db1", "NOPE")).wait(scaled(10))
    assert "unknown message type 'NOPE'" in unknown_type.failed["db1"]
    assert (await run(client, "web1")).results == {"web1": "web1"}


async def test_outcomes_move_through_delivered_and_running(
    fleet: dict[str, Node], client: Client
) -> None:
    first = await client.command("web1", "command", "slow", args={"seconds": 0.6})
    second = await client.send("web1", "whoami")
    seen: set[str] = set()
    async for outcomes in second.updates(scaled(10)):
        seen.add(outcomes["web1"].state)
    assert "delivered" in seen  # it waited behind the slow one
    await first.wait(scaled(10))
    assert first.results == {"web1": 0.6}
    detail = await client.command_detail(first.serial)
    assert [o.state for o in detail.outcomes] == ["done"]


async def test_history_lists_commands_newest_first_with_counts(
    fleet: dict[str, Node], client: Client
) -> None:
    a = await run(client, "*")
    b = await run(client, "web*", "boom")
    page = await client.commands(limit=1)
    assert [c.serial for c in page] == [b.serial]
    assert page[0].counts == {"failed": 2}
    older = await client.commands(limit=10, before=b.serial)
    assert older[0].serial == a.serial
    assert older[0].counts == {"done": 4}
    with pytest.raises(NotFound, match="no command #999"):  # the API function, on the bus
        await client.command_detail(999)


async def test_oversized_and_malformed_requests_are_refused(
    fleet: dict[str, Node], client: Client, config: Config
) -> None:
    with pytest.raises(UsageError, match="exceeds max_command_bytes"):
        await client.put("web1", "big.bin", b"x" * (config.max_command_bytes + 1))
    # Past the client's own check, the controller refuses too.
    request = wire.CommandRequest(targets=["web1"], kind="put", name="f", data=b"x" * (2 << 20))
    with pytest.raises(OversizedMessage):
        await bus.request(client.nc, subjects.ctl("send"), request, wire.CommandAccepted)
    with pytest.raises(UsageError, match="bad command kind"):
        await client.command("web1", "no such kind")
    assert (await run(client, "web1")).ok


async def test_put_writes_inside_the_work_directory_only(
    fleet: dict[str, Node], client: Client
) -> None:
    done = await (await client.put("web1", "conf/app.ini", b"[a]\nx=1\n")).wait(scaled(10))
    assert done.results == {"web1": {"path": "conf/app.ini", "bytes": 8}}
    assert (fleet["web1"].work_dir / "conf" / "app.ini").read_bytes() == b"[a]\nx=1\n"
    for path in ("../escape.txt", "/etc/passwd", "conf/../../x"):
        refused = await (await client.put("web1", path, b"no")).wait(scaled(10))
        assert "PUT path" in refused.failed["web1"], path
    (fleet["web1"].work_dir / "link").symlink_to("/tmp")
    refused = await (await client.put("web1", "link/evil", b"no")).wait(scaled(10))
    assert "leaves the node's work directory" in refused.failed["web1"]
    assert not (fleet["web1"].work_dir.parent / "escape.txt").exists()


async def test_shell_and_execute_are_off_unless_the_node_enables_them(
    fleet: dict[str, Node], client: Client
) -> None:
    shell = await (await client.shell("web1", "echo hi")).wait(scaled(10))
    assert "start it with `corral node --allow-shell`" in shell.failed["web1"]
    execute = await (await client.execute("web1", b"print('hi')")).wait(scaled(10))
    assert "start it with `corral node --allow-execute`" in execute.failed["web1"]


async def test_shell_and_execute_stream_output_with_exit_codes(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "lab1", allow_shell=True, allow_execute=True)
    try:
        await _wait_consumers(controller, ["lab1"])
        shell = await (await client.shell("lab1", "echo out; echo err >&2; exit 3")).wait(
            scaled(10)
        )
        out = shell.outcomes["lab1"]
        assert (out.state, out.exit_code, out.stdout, out.stderr) == ("failed", 3, "out\n", "err\n")
        script = (
            b"import sys, time\n"
            b"print('start', sys.argv[1:], flush=True)\n"
            b"time.sleep(0.6)\n"
            b"print('end')\n"
        )
        handle = await client.execute("lab1", script, ["a", "b"])
        running_output = ""
        async for outcomes in handle.updates(scaled(10)):
            if outcomes["lab1"].state == "running":
                running_output = outcomes["lab1"].stdout
        assert running_output.startswith("start ['a', 'b']")  # streamed before the end
        done = handle.outcomes["lab1"]
        assert (done.state, done.exit_code) == ("done", 0)
        assert done.stdout == "start ['a', 'b']\nend\n"
        hang = await (
            await client.execute("lab1", b"import time\ntime.sleep(60)", timeout=0.5)
        ).wait(scaled(10))
        assert "timed out after 0.5 s" in hang.failed["lab1"]
    finally:
        await node.stop()


async def test_execute_needs_the_execute_role(
    fleet: dict[str, Node], controller: Controller, config: Config
) -> None:
    operator = await Client.connect(config, creds=config.data_path / "auth" / "operator.creds")
    try:
        assert operator.identity == "operator"
        with pytest.raises(AuthError, match="lacks the execute role"):
            await operator.execute("web1", b"print(1)")
        # The bus itself refuses the subject to this credential: nothing reaches the controller,
        # neither as itself nor speaking as the admin.
        request = wire.CommandRequest(targets=["web1"], kind="execute", data=b"print(1)")
        for subject in (
            subjects.ctl_as("execute", "operator"),
            subjects.ctl_as("execute", "admin"),
            subjects.ctl_as("send", "admin"),
        ):
            with pytest.raises(Exception):  # noqa: B017 - a permissions violation: no answer
                await bus.request(operator.nc, subject, request, wire.CommandAccepted, timeout=0.5)
        # ...and EXECUTE on the ordinary subject is refused by the controller.
        with pytest.raises(Refused, match="EXECUTE must be sent on corral.ctl.execute"):
            await bus.request(
                operator.nc, subjects.ctl_as("send", "operator"), request, wire.CommandAccepted
            )
        # A request on the bare subject names no sender: refused, the client told to update.
        with pytest.raises(UsageError, match="does not say which credential sent it"):
            await bus.request(operator.nc, subjects.ctl("send"), request, wire.CommandAccepted)
        # The operator may still send ordinary commands.
        assert (await (await operator.send("web1", "whoami")).wait(scaled(10))).ok
    finally:
        await operator.close()
    assert controller.commands.book.last_serial == 1  # only the ordinary command was recorded


async def test_commands_and_executes_are_audited(
    fleet: dict[str, Node], client: Client, controller: Controller
) -> None:
    handle = await run(client, "web*")
    await (await client.get("web1", "gain")).wait(scaled(10))
    assert controller.store is not None
    entries = await controller.store.audit_log()
    actions = [(e.action, e.target, e.detail.get("serial")) for e in entries]
    assert ("command", "web*", handle.serial) in actions
    assert all(e.action != "get" for e in entries)  # reads are not audited
    entry = next(e for e in entries if e.detail.get("serial") == handle.serial)
    assert entry.detail["nodes"] == ["web1", "web2"]
    # The actor is the credential the bus authenticated; what the client said is a claim.
    assert (entry.actor, entry.role) == ("bus:admin", "admin")
    assert entry.detail["on_behalf_of"] == client.actor


async def test_a_node_away_catches_up_in_order_and_expired_commands_are_reported(
    controller: Controller, client: Client, config: Config
) -> None:
    node = await start_node(config, "away1")
    await _wait_consumers(controller, ["away1"])
    applied: list[int] = []
    original = node.commands.on_applied
    await node.stop()
    await client.wait_for(
        lambda ns: any(n.name == "away1" and n.status == "LEFT" for n in ns), scaled(5)
    )
    old = await client.command("away1", "command", "whoami", retire_after=0.0)
    kept = [await client.send("away1", "whoami", suffix=str(i)) for i in range(20)]
    # Back, as a new process with the same work directory (its applied serial survives).
    back = Node(
        config,
        "away1",
        creds=config.data_path / "away1.creds",
        handlers=handlers_for("away1", node.work_dir),
        work_dir=node.work_dir,
    )
    back.commands.on_applied = lambda s: (applied.append(s), original(s))  # type: ignore[func-returns-value]
    await back.start(wait_for_bus=scaled(5))
    try:
        for i, handle in enumerate(kept):
            await handle.wait(scaled(10))
            assert handle.results == {"away1": f"away1{i}"}
        await old.wait(scaled(10))
        assert old.outcomes["away1"].state == "expired"
        assert "retire window" in old.failed["away1"]
        serials = [s for s in applied if s > 0]
        assert serials == sorted(set(serials))  # in order, each once
        assert serials[-1] == kept[-1].serial
    finally:
        await back.stop()


async def test_outcomes_are_persisted_and_serials_continue_after_a_controller_restart(
    config: Config, broker: Any
) -> None:
    first = ControllerService(config)
    await first.start()
    client = await Client.connect(config)
    node = await start_node(config, "r1")
    await _wait_consumers(first, ["r1"])
    a = await run(client, "r1")
    await first.stop()
    second = ControllerService(config)
    await second.start()
    try:
        # The bus may briefly answer "no responders" for the new controller's subjects to a
        # connection that reached the old one: wait until it routes to the new one.
        async with asyncio.timeout(scaled(5)):
            while True:
                try:
                    if (await client.stats()).controller == second.id:
                        break
                except ControllerUnavailable:
                    await asyncio.sleep(0.05)
        b = await run(client, "r1")
        assert b.serial == a.serial + 1
        detail = await client.command_detail(a.serial)
        assert detail.outcomes[0].result == "r1"
    finally:
        await node.stop()
        await client.close()
        await second.stop()


async def test_reports_reach_sinks_and_watchers_once_per_interval_with_aggregates(
    controller: Controller, client: Client, config: Config
) -> None:
    controller.reports.aggregators["temp"] = lambda values: max(values.values())
    got: asyncio.Queue[wire.ReportUpdate] = asyncio.Queue()
    sink = await start_node(config, "sinkA", attributes={"sink": True}, on_reports=got.put)
    other_got: list[wire.ReportUpdate] = []
    other = await start_node(config, "plain", on_reports=other_got.append)
    watched: asyncio.Queue[wire.ReportUpdate] = asyncio.Queue()

    async def on_watch(msg: Any) -> None:
        await watched.put(wire.decode(msg.data, wire.ReportUpdate, msg.headers))

    await client.nc.subscribe(subjects.report_events("temp"), cb=on_watch)
    try:
        await other.report("temp", 20.5)
        await sink.report("temp", 30.0)
        await sink.report("temp", 31.0)  # same interval: only the latest is pushed
        update = await asyncio.wait_for(got.get(), scaled(5))
        values = {(e.node, e.topic): e.value for e in update.reports}
        assert values == {("plain", "temp"): 20.5, ("sinkA", "temp"): 31.0}
        assert update.aggregates == {"temp": 31.0}
        seen = await asyncio.wait_for(watched.get(), scaled(5))
        assert {e.node for e in seen.reports} == {"plain", "sinkA"}
        assert other_got == []  # not a sink
        # Nothing changed: the next interval sends nothing; a new value is sent alone.
        await other.report("temp", 40.0)
        update = await asyncio.wait_for(got.get(), scaled(5))
        assert [(e.node, e.value) for e in update.reports] == [("plain", 40.0)]
        assert update.aggregates == {"temp": 40.0}
        latest = await client.reports("temp")
        assert {e.node: e.value for e in latest.reports} == {"plain": 40.0, "sinkA": 31.0}
        with pytest.raises(Exception, match="invalid report topic"):
            await sink.report("bad topic", 1)
    finally:
        await sink.stop()
        await other.stop()


async def test_corral_send_shows_outcomes_and_exits_nonzero_on_failure(
    fleet: dict[str, Node], config: Config
) -> None:
    from conftest import child_env, corral_argv

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *corral_argv(config, *args),
            env=child_env(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode() + err.decode()

    async def cli_json(*args: str) -> tuple[int, Any]:
        proc = await asyncio.create_subprocess_exec(
            *corral_argv(config, *args, "--json"),
            env=child_env(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, json.loads(out)

    code, out = await cli("send", "web*", "whoami", "suffix=-ok", "--wait", str(scaled(20)))
    assert code == 0, out
    assert "web1-ok" in out and "web2-ok" in out and "done" in out
    code, out = await cli("send", "web1,ghost", "whoami")
    assert code == 1 and "ghost" in out and "unknown" in out
    code, document = await cli_json("send", "*", "boom")
    assert code == 1
    assert {o["node"]: o["state"] for o in document["outcomes"]} == dict.fromkeys(
        ["db1", "sink1", "web1", "web2"], "failed"
    )
    code, document = await cli_json("get", "db1", "gain")
    assert code == 0 and document["outcomes"][0]["result"] == 1.0
    code, document = await cli_json("commands")
    assert code == 0 and [c["kind"] for c in document][:2] == ["get", "command"]
    code, out = await cli("send", "web[", "whoami")
    assert code == 2 and "bad glob" in out
    code, out = await cli("command", str(document[0]["serial"]))
    assert code == 0 and "gain" in out and "db1" in out


async def test_a_slow_stream_subscriber_keeps_the_node_bounded_and_sees_drops(
    fleet: dict[str, Node], client: Client
) -> None:
    node = fleet["web1"]
    samples = node.stream("samples", buffer=50)
    async with client.stream("web1", "samples", window=10) as reader:
        # Wait until the node knows the subscriber, then produce far faster than it reads.
        async with asyncio.timeout(scaled(5)):
            while not samples.subscribers:
                await asyncio.sleep(0.01)
        for i in range(10_000):
            samples.write(i)
            assert samples.buffered <= 50  # never more than the buffer, however slow
            if i % 100 == 0:
                await asyncio.sleep(0)  # a real producer yields now and then
        got = [await reader.next(scaled(5)) for _ in range(60)]
    assert got == sorted(set(got))  # in order, none twice; the gaps are what was dropped
    assert got[-50:] == list(range(9950, 10_000))  # the buffer kept the newest
    assert samples.dropped == 10_000 - 60  # a window of 10 in flight, 50 buffered
    assert reader.dropped == samples.dropped  # the subscriber is told how many it lost
    with pytest.raises(Refused, match="has no stream 'nope'"):
        async with client.stream("web1", "nope"):
            pass
    with pytest.raises(Unavailable, match="node ghost does not answer"):
        async with client.stream("ghost", "samples"):
            pass


async def test_a_result_too_large_to_report_fails_with_a_clear_error(
    fleet: dict[str, Node], client: Client, config: Config
) -> None:
    fine = await run(client, "web1", "big", n=200_000)  # above a control message's limit
    assert fine.results == {"web1": "x" * 200_000}
    too_big = await run(client, "web1", "big", n=config.max_command_bytes + 10)
    assert "over the 1048576-byte limit" in too_big.failed["web1"]
    assert (await run(client, "web1")).ok  # and it keeps serving


async def test_a_node_joining_after_a_broadcast_does_not_run_it(
    fleet: dict[str, Node], controller: Controller, client: Client, config: Config
) -> None:
    handle = await client.send("*", "whoami")
    late = await start_node(config, "late1")
    try:
        await handle.wait(scaled(10))
        assert "late1" not in handle.nodes and handle.ok
        await _wait_consumers(controller, ["late1"])
        after = await run(client, "*")
        assert "late1" in after.results
        assert late.last_serial == after.serial
        assert controller.commands.counters.get("rejected.unknown-command", 0) == 0
    finally:
        await late.stop()


async def test_your_own_message_types_from_the_cli(fleet: dict[str, Node], config: Config) -> None:
    from conftest import child_env, corral_argv

    proc = await asyncio.create_subprocess_exec(
        *corral_argv(config, "send", "db1", "ignored", "n=7", "--type", "PING", "--json"),
        env=child_env(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert json.loads(out)["outcomes"][0]["result"] == {"pong": "db1", "n": 7}


async def test_commands_reach_a_node_after_the_server_restarts(
    controller: Controller, config: Config, client: Client, broker: EmbeddedBroker
) -> None:
    # Nothing of the delivery lives in the server: the node subscribes again on reconnecting.
    node = await start_node(config, "again1")
    try:
        await _wait_consumers(controller, ["again1"])
        first = await run(client, "again1")
        assert first.results == {"again1": "again1"}
        broker.stop()
        await broker.start(timeout=scaled(15))
        await _wait_consumers(controller, ["again1"])
        second = await run(client, "again1", suffix="-back")
        assert second.results == {"again1": "again1-back"}
        assert node.last_serial == second.serial
    finally:
        await node.stop()
