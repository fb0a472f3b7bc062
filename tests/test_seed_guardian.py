"""From the LIGO Guardian seed (004): code written as a Guardian user writes it runs on corral.

System modules here import from ``guardian`` (LIGO's name) and use the seed's shapes: module
level ``request``/``nominal``/``edges``, ``log()``/``notify()`` in state code, ``NodeManager``
with ``nodes['X'] = 'DOWN'``, ``nodes.arrived``, ``@nodes.checker()``, and the OK of LIGO
(executing, AUTO or MANAGED, REQUEST == STATE == NOMINAL, done, no error, connected).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conftest import Procs, scaled
from corral import wire
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import SystemLoadError
from corral.guardian import Guardian, GuardianClient
from corral.guardian.sync import GuardianClient as SyncGuardianClient
from test_guardian import start, system  # the same hosting helpers (`hosted`: conftest)
from test_guardian_processes import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "guardian"

SEED_SUS = textwrap.dedent(
    """
    from guardian import GuardState, GuardStateDecorator, log, notify

    request = 'DOWN'
    nominal = 'ALIGNED'
    WATCHDOG = {'ok': True}

    class watchdog_ok(GuardStateDecorator):
        def pre_exec(self):
            if not WATCHDOG['ok']:
                return 'DOWN'

    class DOWN(GuardState):
        goto = True
        def main(self):
            log('all off in %s', self.guardian)

    class SAFE(GuardState):
        def main(self):
            self.timer['settle'] = 0
        def run(self):
            return self.timer['settle']

    class ALIGNED(GuardState):
        @watchdog_ok
        def run(self):
            notify('aligned and watching the watchdog')
            return True

    edges = [('DOWN', 'SAFE'), ('SAFE', 'ALIGNED')]
    """
)


@pytest.fixture
async def client(broker: EmbeddedBroker, config: Config) -> AsyncIterator[GuardianClient]:
    c = await GuardianClient.connect(config, by="operator")
    try:
        yield c
    finally:
        await c.close()


async def until(
    client: GuardianClient,
    name: str,
    ok: Callable[[wire.GuardianView], bool],
    timeout: float = 15,
) -> wire.GuardianView:
    """Watch ``name`` (its stored view first) until a view satisfies ``ok``."""
    last: list[wire.GuardianView] = []

    async def watch() -> wire.GuardianView:
        async with contextlib.aclosing(client.watch(name, history=False)) as views:
            async for view in views:
                if view is not None:
                    last[:] = [view]
                    if ok(view):
                        return view
        raise AssertionError("watch ended")

    try:
        return await asyncio.wait_for(watch(), scaled(timeout))
    except TimeoutError:
        raise AssertionError(f"{name}: condition not met; last view {last}") from None


async def test_a_seed_module_importing_from_guardian_runs_with_log_notify_and_decorators(
    hosted: list[Guardian], client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    await start(hosted, config, system(tmp_path, SEED_SUS, "sus.py"), "SUS_ETMX")
    down = await until(client, "SUS_ETMX", lambda v: v.state == "DOWN" and v.arrived)
    assert down.status == "OK"  # log() is defined in state code: no ERROR
    assert down.log == ("all off in SUS_ETMX",)
    assert down.nominal == "ALIGNED"
    assert down.ok is False  # REQUEST == STATE, but not NOMINAL

    await client.request("SUS_ETMX", "ALIGNED")
    view = await until(client, "SUS_ETMX", lambda v: v.state == "ALIGNED" and v.arrived)
    assert view.notifications == ("aligned and watching the watchdog",)
    assert view.error == "" and view.ok is True


async def test_guard_state_decorator_pre_exec_jumps_before_the_method_runs(
    hosted: list[Guardian], client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    g = await start(hosted, config, system(tmp_path, SEED_SUS, "sus.py"), "SUS_ITMX")
    await client.request("SUS_ITMX", "ALIGNED")
    await until(client, "SUS_ITMX", lambda v: v.state == "ALIGNED" and v.arrived)
    g.system.module.WATCHDOG["ok"] = False
    view = await until(client, "SUS_ITMX", lambda v: "DOWN" in v.trail[-3:])
    assert view.error == "" and view.status != "ERROR"  # pre_exec's 'DOWN' is a jump
    g.system.module.WATCHDOG["ok"] = True
    await until(client, "SUS_ITMX", lambda v: v.state == "ALIGNED" and v.ok)


async def test_ok_is_ligos_and_nominal_is_checked(
    hosted: list[Guardian], client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    path = system(tmp_path, SEED_SUS.replace("request = 'DOWN'", "request = 'ALIGNED'"), "a.py")
    await start(hosted, config, path, "SUS_BS")
    view = await until(client, "SUS_BS", lambda v: v.arrived)
    assert (view.state, view.request, view.nominal, view.ok) == ("ALIGNED",) * 3 + (True,)

    await client.pause("SUS_BS")  # not executing: not OK
    assert (await client.view("SUS_BS")).ok is False
    await client.pause("SUS_BS", False)
    await until(client, "SUS_BS", lambda v: v.ok)
    await client.set_mode("SUS_BS", "MANUAL")  # MANUAL: not OK
    assert (await client.view("SUS_BS")).ok is False
    await client.set_mode("SUS_BS", "AUTO")
    await until(client, "SUS_BS", lambda v: v.ok)
    await client.request("SUS_BS", "DOWN")  # off nominal: not OK even when arrived
    view = await until(client, "SUS_BS", lambda v: v.state == "DOWN" and v.arrived)
    assert view.ok is False

    bad = system(tmp_path, SEED_SUS.replace("nominal = 'ALIGNED'", "nominal = 'ALINGED'"), "b.py")
    with pytest.raises(SystemLoadError, match="nominal state 'ALINGED' is not defined"):
        Guardian(bad, "SUS_BAD", config=config)


TOP = (EXAMPLES / "top.py").read_text().replace('"SUS_MC1", "SUS_MC2", "SUS_MC3"', '"A", "B"')


async def test_a_monitor_only_top_node_aggregates_its_nodes_ok(
    hosted: list[Guardian], client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    nominal = SEED_SUS.replace("request = 'DOWN'", "request = 'ALIGNED'")
    for name in ("A", "B"):
        await start(hosted, config, system(tmp_path, nominal, f"{name}.py"), name)
        await until(client, name, lambda v: v.ok)
    await start(hosted, config, system(tmp_path, TOP, "top.py"), "TOP")
    top = await until(client, "TOP", lambda v: v.ok)
    assert (top.state, top.nominal, top.mode) == ("WATCHING", "WATCHING", "AUTO")
    ok, views = await client.top(["A", "B", "TOP"])
    assert ok and [v.name for v in views] == ["A", "B", "TOP"]

    await client.request("B", "DOWN")  # B leaves its nominal state: TOP is not OK
    top = await until(client, "TOP", lambda v: v.notifications == ("B not OK: DOWN (OK)",))
    assert not top.ok and top.state == "WATCHING" and top.trail == ("WATCHING",)
    assert (await client.view("B")).mode == "AUTO"  # monitor only: B was never taken
    ok, views = await client.top(["A", "B"])
    assert not ok and [v.ok for v in views] == [True, False]
    ok, views = await client.top(["A", "NEVER_RAN"])
    assert not ok and views[1].status == "CONNECTION_ERROR"

    def blocking_top() -> tuple[bool, list[wire.GuardianView]]:
        with SyncGuardianClient.connect(config) as g:
            return g.top()

    ok, views = await asyncio.to_thread(blocking_top)  # every guardian, TOP included
    assert not ok and [v.name for v in views if not v.ok] == ["B", "TOP"]

    result = await asyncio.to_thread(cli, config, "guardian", "top", "A", "B")
    assert result.returncode == 1, result.stderr
    assert "B: not OK" in result.stdout and "TOP: not OK (1/2 OK)" in result.stdout

    await client.request("B", "ALIGNED")
    await until(client, "TOP", lambda v: v.ok)
    result = await asyncio.to_thread(cli, config, "guardian", "top", "A", "B")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TOP: OK (2/2 OK)" in result.stdout


MANAGER = textwrap.dedent(
    """
    from guardian import GuardState, NodeManager

    nodes = NodeManager(['GONE'])
    request = 'DOWN'

    class INIT(GuardState):
        def main(self):
            nodes.set_managed()
            return True

    class DOWN(GuardState):
        goto = True

        @nodes.checker()
        def main(self):
            nodes['GONE'] = 'DOWN'

        @nodes.checker()
        def run(self):
            return nodes.arrived

    edges = [('INIT', 'DOWN')]
    """
)


async def test_a_manager_requesting_a_dead_node_records_its_fault_and_stays_out_of_error(
    hosted: list[Guardian], client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    g = await start(hosted, config, system(tmp_path, MANAGER, "mgr.py"), "IMC")
    view = await until(client, "IMC", lambda v: any("GONE" in n for n in v.notifications))
    assert view.status == "NOTIFICATION" and view.error == ""
    assert view.state == "DOWN" and not view.arrived and view.trail == ("INIT", "DOWN")
    nodes = g.system.module.nodes
    assert nodes["GONE"].fault.startswith("request DOWN not delivered: no guardian named 'GONE'")
    assert any(f.startswith("GONE: connection error (request DOWN not") for f in nodes.faults())
    assert not nodes.OK


async def test_a_killed_guardian_reads_connection_error_in_guardian_client_list(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "suspension.py", tmp_path / "suspension.py")
    proc = procs.start(
        "guardian", "run", str(tmp_path / "suspension.py"), "--name", "SUS_PR2", log="pr2"
    )
    await until(client, "SUS_PR2", lambda v: v.alive and v.arrived)
    [live] = await client.list()
    assert (live.name, live.status, live.alive) == ("SUS_PR2", "OK", True)

    proc.kill()  # kill -9: no goodbye view
    proc.wait()
    killed = time.monotonic()
    deadline = killed + scaled(config.down_after + 5)
    while True:
        [seen] = await client.list()
        if seen.status == "CONNECTION_ERROR" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)  # polling the list, as a user would; the bound is asserted
    assert seen.status == "CONNECTION_ERROR" and seen.ok is False
    assert seen.alive is True  # the last view it wrote; the reader judges it stale
    assert time.monotonic() - killed <= scaled(config.down_after + 5)
    shown = await asyncio.to_thread(cli, config, "guardian", "show", "SUS_PR2")
    assert shown.returncode == 0, shown.stderr
    assert "CONNECTION_ERROR" in shown.stdout and "(not OK)" in shown.stdout


async def test_request_wait_prints_each_state_it_walks_through(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    shutil.copy(EXAMPLES / "suspension.py", tmp_path / "suspension.py")
    procs.start("guardian", "run", str(tmp_path / "suspension.py"), "--name", "SUS_MC1", log="s")
    await until(client, "SUS_MC1", lambda v: v.alive and v.arrived and v.state == "DOWN")
    result = await asyncio.to_thread(
        cli, config, "guardian", "request", "SUS_MC1", "ALIGNED", "--wait", str(scaled(30))
    )
    assert result.returncode == 0, result.stderr
    walked = re.findall(r"^\d\d:\d\d:\d\d SUS_MC1: (\w+)$", result.stdout, re.M)
    assert walked == ["DOWN", "SAFE", "DAMPED", "ALIGNED"], result.stdout
    assert "SUS_MC1: ALIGNED -> ALIGNED  AUTO  OK  arrived" in result.stdout
    assert "nominal ALIGNED  (OK)" in result.stdout


async def test_the_example_manager_holds_once_while_a_mode_fault_lasts(
    procs: Procs, client: GuardianClient, config: Config, tmp_path: Path
) -> None:
    from test_guardian_processes import start_example

    await start_example(procs, client, tmp_path)
    await client.request("IMC", "ALIGNED")
    aligned = await until(client, "IMC", lambda v: v.arrived and v.state == "ALIGNED")
    assert aligned.ok  # nominal ALIGNED, AUTO, done

    # A person takes SUS_MC3 (a mode fault): IMC jumps DOWN once and holds there.
    result = await asyncio.to_thread(cli, config, "guardian", "mode", "SUS_MC3", "AUTO")
    assert result.returncode == 0, result.stderr
    down = await until(
        client,
        "IMC",
        lambda v: v.state == "DOWN" and any("SUS_MC3: mode" in n for n in v.notifications),
    )
    # Two more heartbeats of IMC later it has entered no other state: no DOWN <-> ALIGNED flap.
    later = await until(
        client, "IMC", lambda v: v.beat >= down.beat + 2 * config.heartbeat_interval
    )
    assert later.entered == down.entered and later.state == "DOWN", later.trail
    assert (
        later.ok is False and "SUS_MC3: mode changed to AUTO (by a person)" in later.notifications
    )
