"""The dashboard's charts data, guardian graph JSON, offline API docs, the forget button and
the command view, over plain HTTP against a controller in this process (the browser side is
in tests/test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx

from conftest import scaled
from corral import wire
from corral.config import Config
from corral.controller import Controller
from corral.core.taskstate import TaskInstance
from corral.dashboard import data
from corral.dashboard.trends import Sample, Trends, node_stats
from corral.guardian import Guardian
from corral.node import Node
from corral.tokens import Role
from dashboard_fixtures import first_event, sign_in
from tasks_fixtures import node, start_task_node, token_for  # noqa: F401 - fixtures
from test_guardian import start, system

# --- the charts' core -------------------------------------------------------------------


def test_trends_keep_a_bounded_ring_and_give_only_what_is_newer() -> None:
    trends = Trends(keep=3)
    for i in range(5):
        trends.add(Sample(t=100.0 + i, nodes={"UP": i, "DOWN": 1}))
    assert [r["seq"] for r in trends.since(0)] == [3, 4, 5]  # the oldest two fell out
    assert [(r["up"], r["down"], r["t"]) for r in trends.since(4)] == [(4, 1, 104.0)]
    assert trends.since(5) == []


def test_trends_count_task_ends_and_their_latency_per_sample() -> None:
    trends = Trends()

    def ended(ident: int, status: str, queued: float, started: float, done: float) -> TaskInstance:
        return TaskInstance(
            id=ident,
            key="k",
            status=status,
            queued_at=queued,
            started_at=started,
            finished_at=done,
        )

    trends.tasks_ended(
        [
            ended(1, "complete", 10.0, 11.0, 12.0),  # waited 1, ran 1
            ended(2, "complete", 10.0, 13.0, 16.0),  # waited 3, ran 3
            ended(3, "failed", 10.0, 12.0, 22.0),  # waited 2, ran 10
        ]
    )
    row = trends.add(Sample(t=30.0))
    assert (row["complete"], row["failed"], row["cancelled"]) == (2, 1, 0)
    assert (row["run_p50"], row["run_p95"], row["wait_p50"]) == (3.0, 10.0, 2.0)
    # The next sample counts only what ended after this one.
    after = trends.add(Sample(t=32.0))
    assert (after["complete"], after["run_p50"]) == (0, None)


def test_node_stats_read_cpu_and_memory_only_when_a_node_sends_them() -> None:
    class WithStats:
        stats = {"cpu_percent": 12.345, "mem_percent": 50, "disk_percent": 3.0}

    class Bogus:
        stats = {"cpu_percent": "high", "mem_percent": True}

    class AsStruct:
        class stats:  # a struct-like value, as a heartbeat's stats may be
            cpu_percent = 7
            mem_percent = None

    assert node_stats(WithStats()) == (12.35, 50.0)
    assert node_stats(AsStruct()) == (7.0, None)
    assert node_stats(Bogus()) == (None, None)
    assert node_stats(object()) == (None, None)  # a node record without stats
    row = Trends().add(Sample(t=1.0, stats={"a": (12.0, None), "b": (None, 40.0)}))
    assert row["cpu"] == {"a": 12.0} and row["mem"] == {"b": 40.0}


# --- the charts' stream -----------------------------------------------------------------


async def test_the_charts_stream_counts_nodes_tasks_and_command_outcomes(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    assert controller.api is not None and controller.api.dashboard is not None
    dashboard = controller.api.dashboard
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    page = await web.get("/ui/charts")
    assert page.status_code == 200 and "uPlot.iife.min.js" in page.text
    # A task and a command from the dashboard: the next samples count them.
    await web.post("/ui/tasks", data={"csrf": csrf, "task_key": "add", "args": '{"a": 1, "b": 2}'})
    sent = await web.post("/ui/commands", data={"csrf": csrf, "targets": "w1", "kind": "get"})
    assert sent.status_code == 303
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(scaled(30)):
        while not (
            sum(r["complete"] for r in seen) >= 1
            and sum(r["cmd_done"] + r["cmd_failed"] for r in seen) >= 1
        ):
            await asyncio.sleep(0.2)
            seen = dashboard.trends.since(0)
    assert any(r["up"] == 1 for r in seen)
    assert all(r["run_p50"] is None or r["run_p50"] >= 0 for r in seen)
    first = await first_event(web, "/ui/events/charts")
    assert first["reset"] is True and first["keep"] > 0
    assert [r["seq"] for r in first["samples"]][: len(seen)] == [r["seq"] for r in seen]


# --- the command view -------------------------------------------------------------------


async def test_a_command_just_accepted_shows_its_kind_actor_and_targets(
    controller: Controller,
    node: Node,  # noqa: F811
) -> None:
    request = wire.CommandRequest(targets=["w1"], kind="get", name="version", actor="dana")
    await controller.commands.wait_settled()
    accepted = controller.commands.accept(request, "", False, role="operate")
    # Before the group commit has written it: from the service's memory, not blanks.
    found = await data.command_detail(controller, accepted.serial)
    assert found is not None
    assert (found["kind"], found["actor"], found["targets"]) == ("get", "dana", ["w1"])
    history = await data.command_history(controller)
    assert history[0]["serial"] == accepted.serial and history[0]["actor"] == "dana"


async def test_the_target_field_suggests_star_and_all_gets_a_hint(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    controller.registry.nodes["w1"].labels = ("gpu",)
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    form = (await web.get("/ui/commands")).text
    hints = re.findall(r'<option value="([^"]*)"', form.split('id="target-hints"')[1])
    assert hints[0] == "*" and "label:gpu" in hints and "w1" in hints and "all" not in hints
    sent = await web.post("/ui/commands", data={"csrf": csrf, "targets": "all", "kind": "get"})
    assert sent.status_code == 303 and sent.headers["location"] == "/ui/commands"
    assert "every node is *" in (await web.get("/ui/commands")).text


async def test_the_fleet_table_shows_each_nodes_host_stats(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    # What a heartbeat brings (node/stats.py), set here so the numbers are known. The node
    # stops first: its next heartbeat (every 0.2 s here) would bring the host's real numbers.
    # A node that left keeps its last stats on the page.
    await node.stop()
    controller.registry.nodes["w1"].stats = {
        "cpu_percent": 12.4,
        "mem_percent": 55.6,
        "disk_percent": 70.0,
        "load1": 0.5,
    }
    await sign_in(web, token=await token_for(controller, Role.READ))
    page = (await web.get("/ui/fleet")).text
    row = page.split('data-node="w1"')[1].split("</tr>")[0]
    assert '<td class="stats">12% / 56% / 70% / 0.50</td>' in row
    live = await first_event(web, "/ui/events/fleet")
    (w1,) = [n for n in live if n["name"] == "w1"]
    assert w1["stats"]["mem_percent"] == 55.6  # the page's script draws the same cell from it


# --- forget -----------------------------------------------------------------------------


async def test_forget_removes_a_node_that_is_not_up_and_refuses_one_that_is(
    controller: Controller, config: Config, web: httpx.AsyncClient
) -> None:
    leaving = await start_task_node(config, "gone1")
    try:
        csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
        page = (await web.get("/ui/nodes/gone1")).text
        assert re.search(r'id="forget-form"[^>]*hidden', page.replace("\n", " "))  # UP: hidden
        refused = await web.post("/ui/nodes/gone1/forget", data={"csrf": csrf})
        assert refused.headers["location"] == "/ui/nodes/gone1"
        assert "is UP" in (await web.get("/ui/nodes/gone1")).text
        assert "gone1" in controller.registry.nodes
    finally:
        await leaving.stop()
    async with asyncio.timeout(scaled(10)):
        while controller.registry.nodes["gone1"].status == "UP":
            await asyncio.sleep(0.05)
    reader = await token_for(controller, Role.READ)
    async with httpx.AsyncClient(base_url=str(web.base_url), timeout=scaled(20)) as other:
        read_csrf = await sign_in(other, token=reader)
        assert (
            await other.post("/ui/nodes/gone1/forget", data={"csrf": read_csrf})
        ).status_code == 403
    gone = await web.post("/ui/nodes/gone1/forget", data={"csrf": csrf})
    assert gone.status_code == 303 and gone.headers["location"] == "/ui/fleet"
    assert "gone1" not in controller.registry.nodes
    assert "node gone1 forgotten" in (await web.get("/ui/fleet")).text
    assert controller.store is not None
    async with asyncio.timeout(scaled(10)):  # audit entries go with the next group commit
        while not any(
            e.action == "dashboard.node_delete" and e.target == "gone1"
            for e in await controller.store.audit_log(50)
        ):
            await asyncio.sleep(0.05)


# --- guardian graphs --------------------------------------------------------------------


async def test_a_guardians_graph_is_served_as_json_for_the_browser_to_draw(
    controller: Controller,
    web: httpx.AsyncClient,
    hosted: list[Guardian],
    config: Config,
    tmp_path: Path,
) -> None:
    await start(hosted, config, system(tmp_path), "SUS1")
    await sign_in(web, token=await token_for(controller, Role.READ))
    reply = await web.get("/ui/guardians/SUS1/graph.json")
    assert reply.status_code == 200
    graph = reply.json()
    names = [s["name"] for s in graph["states"]]
    assert {"DOWN", "SAFE", "DAMPED", "ALIGNED", "TRIPPED"} <= set(names)
    assert ["SAFE", "DAMPED"] in graph["edges"]
    assert graph["view"]["name"] == "SUS1" and graph["view"]["state"] in names
    assert next(s for s in graph["states"] if s["name"] == "TRIPPED")["request"] is False
    page = (await web.get("/ui/guardians/SUS1")).text
    assert "dagre.min.js" in page and "/ui/guardians/SUS1/graph.json" in page
    assert "Graphviz" not in page
    missing = await web.get("/ui/guardians/NOPE/graph.json")
    assert missing.status_code == 404 and missing.json()["error"]


# --- offline API docs -------------------------------------------------------------------


async def test_docs_and_redoc_load_every_asset_from_the_controller(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    for path, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        page = await web.get(path)
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing off the host
        assert "fonts.googleapis" not in page.text and "cdn." not in page.text
        assert "validator.swagger.io" not in page.text
        for name in assets:
            asset = await web.get(f"/docs-static/{name}")
            assert asset.status_code == 200 and len(asset.content) > 100_000, name
    assert '"validatorUrl": null' in (await web.get("/docs")).text
    for name in ("swagger-ui.LICENSE", "redoc.LICENSE"):
        assert (await web.get(f"/docs-static/{name}")).status_code == 200


def test_the_vendored_libraries_and_their_licences_ship_in_the_package() -> None:
    from importlib.resources import files

    vendor = files("corral.dashboard").joinpath("static/vendor")
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE", "dagre.min.js"):
        assert vendor.joinpath(name).is_file(), name
    dagre = vendor.joinpath("dagre.LICENSE").read_text()
    assert "MIT" in dagre or "Permission is hereby granted, free of charge" in dagre  # MIT's text
    docs = files("corral.controller").joinpath("docs_static")
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert docs.joinpath(name).is_file(), name
    root = files("corral.dashboard").joinpath("static")
    for script in ("charts.js", "graph.js"):
        text = root.joinpath(script).read_text()
        for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, (script, sink)
        assert "http" not in text.replace("http://www.w3.org/2000/svg", ""), script


# --- tasks ------------------------------------------------------------------------------


async def test_a_prefetched_instance_shows_as_assigned_not_as_running(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert controller.tasks is not None and controller.api is not None
    assert controller.api.dashboard is not None
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    release = tmp_path / "release"
    args = json.dumps({"path": str(release)})
    await web.post("/ui/tasks", data={"csrf": csrf, "task_key": "wait_for_file", "args": args})
    async with asyncio.timeout(scaled(20)):
        while [i.status for i in controller.tasks.running()] != ["running"]:
            await asyncio.sleep(0.05)
    (inst,) = controller.tasks.running()
    page = (await web.get("/ui/tasks")).text
    assert f'data-task="{inst.id}" data-status="running"' in page and "<progress" in page
    # The scheduler's `assigned` state (given to a node, still waiting in its worker pipe),
    # where the scheduler has one: shown as such, with no empty progress bar.
    inst.status = "assigned"
    try:
        page = (await web.get("/ui/tasks")).text
        assert f'data-task="{inst.id}" data-status="assigned"' in page
        assert "prefetched: waits for a free worker" in page and "<progress" not in page
        live = await first_event(web, "/ui/events/tasks")
        assert [t["status"] for t in live["running"]] == ["assigned"]
        sample = controller.api.dashboard.sampler.sample()
        assert (sample.assigned, sample.running) == (1, 0)
    finally:
        inst.status = "running"
    release.write_text("go")
    async with asyncio.timeout(scaled(20)):
        while controller.tasks.running():
            await asyncio.sleep(0.05)
