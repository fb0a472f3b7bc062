"""Guardians on a real nats-server, hosted in the test's process: walks, jumps, managers."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from conftest import scaled
from corral import wire
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.errors import GuardianRefused, NoSuchGuardian
from corral.guardian import Guardian, GuardianClient

SUS = textwrap.dedent(
    """
    from corral.guardian import GuardState, notify

    VISITED = []

    class _Tracked(GuardState):  # a base class, not a state (its name starts with "_")
        def main(self):
            VISITED.append(type(self).__name__)

    class DOWN(_Tracked):
        goto = True

    class SAFE(_Tracked):
        pass

    class DAMPED(_Tracked):
        pass

    class ALIGNED(_Tracked):
        def run(self):
            if FAULT["on"]:
                return "TRIPPED"
            return True

    class TRIPPED(GuardState):
        request = False
        def main(self):
            FAULT["on"] = False
            FAULT["trips"] += 1
            notify("watchdog tripped")

    class BROKEN(GuardState):
        def main(self):
            raise ValueError("coil driver unplugged")

    FAULT = {"on": False, "trips": 0}
    edges = [("DOWN", "SAFE"), ("SAFE", "DAMPED"), ("DAMPED", "ALIGNED"), ("TRIPPED", "DOWN"),
             ("SAFE", "BROKEN")]
    """
)


def system(tmp: Path, text: str = SUS, name: str = "sus.py") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.fixture
async def client(broker: EmbeddedBroker, config: Config) -> AsyncIterator[GuardianClient]:
    c = await GuardianClient.connect(config, by="alice")
    try:
        yield c
    finally:
        await c.close()


async def start(hosted: list[Guardian], config: Config, path: Path, name: str) -> Guardian:
    g = Guardian(path, name, config=config, cycle=0.01)
    await g.start()
    hosted.append(g)
    return g


async def until(
    client: GuardianClient,
    name: str,
    ok: Callable[[wire.GuardianView], bool],
    timeout: float = 10,
    since: int = -1,
) -> list[wire.GuardianView]:
    """Watch ``name`` until a view newer than seq ``since`` satisfies ``ok``; return the
    views seen (the publisher coalesces: a state passed through quickly may not be seen)."""
    seen: list[wire.GuardianView] = []

    async def watch() -> None:
        async with contextlib.aclosing(client.watch(name, history=False)) as views:
            async for view in views:
                if view is None or view.seq <= since:
                    continue
                seen.append(view)
                if ok(view):
                    return

    try:
        await asyncio.wait_for(watch(), scaled(timeout))
    except TimeoutError:
        raise AssertionError(f"{name}: condition not met; last views {seen[-3:]}") from None
    return seen


async def test_request_walks_the_shortest_path(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    g = await start(hosted, config, system(tmp_path), "SUS1")
    await until(client, "SUS1", lambda v: v.arrived and v.state == "DOWN")
    assert [s.name for s in g.core.graph.states][:2] == ["DOWN", "SAFE"]  # _Tracked is no state
    view = await client.request("SUS1", "ALIGNED")
    assert view.request == "ALIGNED"
    await until(client, "SUS1", lambda v: v.arrived and v.state == "ALIGNED")
    # Every state entered, in order (a viewer may miss the quick ones: views are coalesced).
    assert g.system.module.VISITED == ["DOWN", "SAFE", "DAMPED", "ALIGNED"]
    assert (await client.view("SUS1")).status == "OK"


async def test_user_code_raising_is_error_and_the_runtime_stays_alive(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    await start(hosted, config, system(tmp_path), "SUS1")
    await client.request("SUS1", "BROKEN")
    view = (await until(client, "SUS1", lambda v: v.status == "ERROR"))[-1]
    assert view.state == "BROKEN" and "ValueError: coil driver unplugged" in view.error
    assert "Traceback" in view.error
    # Still serving: a new request clears the error and walks on.
    await client.request("SUS1", "DOWN")
    view = (await until(client, "SUS1", lambda v: v.arrived and v.state == "DOWN"))[-1]
    assert view.status == "OK" and view.error == ""


async def test_unknown_guardian_and_bad_requests_are_refused_clearly(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    with pytest.raises(NoSuchGuardian, match="no guardian named 'NOBODY' is running"):
        await client.request("NOBODY", "DOWN")
    await start(hosted, config, system(tmp_path), "SUS1")
    with pytest.raises(GuardianRefused, match="no state 'UP'.*states: DOWN, SAFE"):
        await client.request("SUS1", "UP")
    with pytest.raises(GuardianRefused, match="no mode 'SLEEPY'"):
        await client.set_mode("SUS1", "SLEEPY")


async def test_reload_with_a_broken_module_keeps_the_old_one(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    path = system(tmp_path)
    await start(hosted, config, path, "SUS1")
    await client.request("SUS1", "DAMPED")
    await until(client, "SUS1", lambda v: v.arrived and v.state == "DAMPED")
    path.write_text(SUS + "\nthis is not python(\n")
    with pytest.raises(GuardianRefused, match="(?s)failed to import.*SyntaxError.*keeps running"):
        await client.reload("SUS1")
    view = await client.view("SUS1")
    assert view.state == "DAMPED" and "SyntaxError" in view.load_error
    await client.request("SUS1", "ALIGNED")  # the old code still runs
    await until(client, "SUS1", lambda v: v.arrived and v.state == "ALIGNED")
    # A good module loads, keeping state and request, and clears the error.
    path.write_text(SUS.replace("class SAFE(_Tracked):", "class SAFE(_Tracked):\n    index = 7"))
    view = await client.reload("SUS1")
    assert (view.state, view.request, view.load_error) == ("ALIGNED", "ALIGNED", "")
    graph = await client.graph("SUS1")
    assert {s.name: s.index for s in graph.states}["SAFE"] == 7


async def test_a_second_guardian_with_the_same_name_is_refused(
    hosted: list[Guardian], config: Config, tmp_path: Path
) -> None:
    from corral.errors import DuplicateName

    g = await start(hosted, config, system(tmp_path), "SUS1")
    twin = Guardian(system(tmp_path), "SUS1", config=config)
    with pytest.raises(DuplicateName, match="'SUS1' is held by a live guardian on host"):
        await twin.start()
    assert g.view().alive


async def test_jump_in_auto_recovers_to_the_request(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    g = await start(hosted, config, system(tmp_path), "SUS1")
    await client.request("SUS1", "ALIGNED")
    await until(client, "SUS1", lambda v: v.arrived and v.state == "ALIGNED")
    before = await client.view("SUS1")
    g.system.module.FAULT["on"] = True  # the next ALIGNED.run() jumps to TRIPPED
    seen = await until(
        client, "SUS1", lambda v: v.arrived and v.state == "ALIGNED", since=before.seq
    )
    assert g.system.module.FAULT["trips"] == 1  # it went through TRIPPED...
    assert not any(v.stalled for v in seen) and seen[-1].status == "OK"  # ...and came back


async def test_jump_in_managed_stalls_then_revive_and_re_request_recover(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    g = await start(hosted, config, system(tmp_path), "SUS1")
    boss = GuardianClient(client.nc, by="BOSS", manager=True)
    view = await boss.set_mode("SUS1", "MANAGED")
    assert (view.mode, view.manager) == ("MANAGED", "BOSS")
    await boss.request("SUS1", "ALIGNED")
    await until(client, "SUS1", lambda v: v.arrived and v.state == "ALIGNED")
    for recover in (boss.revive, lambda name: boss.request(name, "ALIGNED")):
        g.system.module.FAULT["on"] = True
        view = (await until(client, "SUS1", lambda v: v.stalled))[-1]
        assert view.state == "TRIPPED" and view.status == "STALLED"
        # It holds there: TRIPPED is done (its run returns True) but no edge is followed.
        view = (await until(client, "SUS1", lambda v: v.phase == "DONE", since=view.seq - 1))[-1]
        assert view.state == "TRIPPED" and view.path == ()
        view = await recover("SUS1")
        view = (
            await until(
                client, "SUS1", lambda v: v.arrived and v.state == "ALIGNED", since=view.seq - 1
            )
        )[-1]
        assert view.status == "OK" and not view.stalled


async def test_managed_ownership_refuses_another_manager_and_a_person_takes_it_back(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    await start(hosted, config, system(tmp_path), "SUS1")
    boss = GuardianClient(client.nc, by="BOSS", manager=True)
    rival = GuardianClient(client.nc, by="RIVAL", manager=True)
    await boss.set_mode("SUS1", "MANAGED")
    with pytest.raises(GuardianRefused, match="managed by BOSS; RIVAL cannot take it"):
        await rival.set_mode("SUS1", "MANAGED")
    with pytest.raises(GuardianRefused, match="MANAGED by BOSS.*alice"):
        await client.request("SUS1", "SAFE")
    view = await client.set_mode("SUS1", "AUTO")  # a person takes it back
    assert (view.mode, view.manager) == ("AUTO", "")
    assert (await rival.set_mode("SUS1", "MANAGED")).manager == "RIVAL"


async def test_pause_holds_and_resume_walks_on(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    await start(hosted, config, system(tmp_path), "SUS1")
    await until(client, "SUS1", lambda v: v.arrived)
    assert (await client.pause("SUS1")).paused
    view = await client.request("SUS1", "DAMPED")
    assert view.state == "SAFE" and view.phase == "ENTER"  # took the request, ran nothing
    assert (await client.view("SUS1")).state == "SAFE"
    await client.pause("SUS1", False)
    await until(client, "SUS1", lambda v: v.arrived and v.state == "DAMPED")


MANAGER = textwrap.dedent(
    """
    from corral.guardian import GuardState, NodeManager

    nodes = NodeManager(["A", "B", "C"])
    request = "IDLE"

    class INIT(GuardState):
        goto = True
        def main(self):
            nodes.set_managed()
            return True

    class IDLE(GuardState):
        goto = True

    class DOWN(GuardState):
        goto = True
        @nodes.checker()
        def run(self):
            return not nodes.faults()  # hold here while anything is wrong

    class ALIGNED(GuardState):
        def main(self):
            for name in ("A", "B", "C"):
                nodes[name] = "ALIGNED"
            assert nodes["A"].request == "ALIGNED"  # the reply updated the copy at once

        @nodes.checker(fail_return="DOWN")
        def run(self):
            return nodes.arrived and all(nodes[n] == "ALIGNED" for n in ("A", "B", "C"))

    edges = [("INIT", "IDLE"), ("IDLE", "ALIGNED")]
    """
)


async def test_manager_drives_three_nodes_until_arrived_and_jumps_on_a_mode_change(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    sus = system(tmp_path)
    for name in ("A", "B", "C"):
        await start(hosted, config, sus, name)
    await start(hosted, config, system(tmp_path, MANAGER, "mgr.py"), "MGR")
    await until(client, "MGR", lambda v: v.arrived and v.state == "IDLE")
    for name in ("A", "B", "C"):
        view = await client.view(name)
        assert (view.mode, view.manager) == ("MANAGED", "MGR")
    await client.request("MGR", "ALIGNED")
    view = (await until(client, "MGR", lambda v: v.arrived and v.state == "ALIGNED"))[-1]
    assert view.status == "OK"
    for name in ("A", "B", "C"):
        assert (await client.view(name)).state == "ALIGNED"
    # A person takes B back: the checker reports it and fail_return jumps to DOWN.
    await client.set_mode("B", "MANUAL")
    view = (await until(client, "MGR", lambda v: v.state == "DOWN" and v.notifications))[-1]
    assert "B: mode changed to MANUAL (by a person)" in view.notifications


async def test_manager_reports_a_restarted_node_and_takes_it_back_on_init(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    sus = system(tmp_path)
    for name in ("A", "B", "C"):
        await start(hosted, config, sus, name)
    await start(hosted, config, system(tmp_path, MANAGER, "mgr.py"), "MGR")
    await until(client, "MGR", lambda v: v.arrived and v.state == "IDLE")
    await client.request("MGR", "DOWN")
    # A stops cleanly (its last view says so): a connection error at once, not after down_after.
    a = hosted[0]
    await a.stop()
    hosted.remove(a)
    seen = await until(
        client, "MGR", lambda v: any("A: connection error" in n for n in v.notifications)
    )
    assert "A: connection error (it stopped)" in seen[-1].notifications
    # A new A (a restart: AUTO, another instance) is reported as such...
    await start(hosted, config, sus, "A")
    seen = await until(client, "MGR", lambda v: any("A: restarted" in n for n in v.notifications))
    assert "A: restarted (now AUTO); request INIT" in seen[-1].notifications
    # ...and INIT takes it back: the fault clears.
    await client.request("MGR", "INIT")
    await until(client, "MGR", lambda v: v.arrived and v.state == "INIT")
    assert (await client.view("A")).manager == "MGR"
    await client.request("MGR", "DOWN")
    seen = await until(client, "MGR", lambda v: v.arrived and v.state == "DOWN")
    assert seen[-1].notifications == () and seen[-1].status == "OK"


async def test_the_blocking_client_requests_and_waits(
    hosted: list[Guardian], config: Config, tmp_path: Path
) -> None:
    from corral.guardian.sync import GuardianClient as SyncClient

    await start(hosted, config, system(tmp_path), "SUS1")

    def script() -> tuple[str, bool, list[str], str, list[str]]:
        with SyncClient.connect(config, by="bob") as g:
            view = g.request("SUS1", "DAMPED", wait=scaled(10))
            # Methods the twin derives from the async client (none written by hand).
            graph = g.graph("SUS1")
            with pytest.raises(AttributeError):
                g.reqeust("SUS1", "DAMPED")  # a typo is an AttributeError, not a call
            return (
                view.state,
                view.arrived,
                [v.name for v in g.list()],
                g.view("SUS1").state,
                sorted(s.name for s in graph.states)[:1],
            )

    # In a thread: the guardian runs in this test's event loop and must keep serving.
    state, arrived, names, seen, first = await asyncio.to_thread(script)
    assert (state, arrived, names, seen) == ("DAMPED", True, ["SUS1"], "DAMPED") and first


def test_the_blocking_guardian_client_has_every_method_of_the_async_one() -> None:
    import inspect

    from corral.guardian.client import GuardianClient as AsyncClient
    from corral.guardian.sync import GuardianClient as SyncClient

    public = {n for n, _ in inspect.getmembers(AsyncClient) if not n.startswith("_")}
    assert public and public <= set(dir(SyncClient))


async def test_guardians_and_their_manager_recover_after_the_server_restarts(
    config: Config, tmp_path: Path
) -> None:
    from corral.security import Authority

    broker = EmbeddedBroker(config, Authority.load(config.data_path))
    await broker.start(timeout=scaled(15))
    guardians: list[Guardian] = []
    try:
        sus = system(tmp_path)
        for name in ("A", "B", "C"):
            await start(guardians, config, sus, name)
        mgr = await start(guardians, config, system(tmp_path, MANAGER, "mgr.py"), "MGR")
        nodes = mgr.system.module.nodes

        def held() -> bool:
            return nodes.arrived and all(n.managed_by == "MGR" for n in nodes)

        assert await asyncio.to_thread(nodes.wait, held, scaled(10))
        # The server goes away (and with it the in-memory bucket), then comes back.
        broker.stop()
        assert await asyncio.to_thread(nodes.wait, lambda: not nodes.arrived, scaled(10))
        broker = EmbeddedBroker(config, Authority.load(config.data_path))
        await broker.start(timeout=scaled(15))
        # The guardians reconnect and publish again; the manager's watch is made again.
        assert await asyncio.to_thread(nodes.wait, held, scaled(30))
        assert nodes.faults() == [] and mgr.core.status == "OK"
        async with await GuardianClient.connect(config) as client:
            assert (await client.view("A")).manager == "MGR"  # answering again, still held
    finally:
        for g in guardians:
            await g.stop()
        broker.stop()


async def test_malformed_and_unknown_requests_get_error_replies(
    hosted: list[Guardian], config: Config, client: GuardianClient, tmp_path: Path
) -> None:
    from corral.errors import MalformedMessage
    from corral.subjects import guardian

    await start(hosted, config, system(tmp_path), "SUS1")
    reply = await client.nc.request(
        guardian("SUS1", "request"), b"\xc1 not msgpack", headers=wire.HEADERS, timeout=5
    )
    with pytest.raises(MalformedMessage, match="malformed GuardianRequest"):
        wire.decode_reply(reply.data, wire.GuardianView, reply.headers)
    reply = await client.nc.request(guardian("SUS1", "explode"), b"", headers=wire.HEADERS)
    with pytest.raises(GuardianRefused, match="no verb 'explode'"):
        wire.decode_reply(reply.data, wire.GuardianView, reply.headers)
    assert (await client.view("SUS1")).status == "OK"  # and it keeps serving
