"""``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` over HTTP, against a real controller,
node, worker processes and nats-server (stopped and started again for readiness)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import child_env, corral_argv, eventually, scaled
from corral import AsyncController, TaskFailed
from corral._version import __version__
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.controller import Controller
from corral.controller.probes import needs_token
from corral.node import Node
from corral.tokens import Role
from tasks_fixtures import api, node, token_for  # noqa: F401 - fixtures

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(web: httpx.AsyncClient) -> Samples:
    reply = await web.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_a_token_off_loopback_unless_public() -> None:
    assert not needs_token("127.0.0.1", False) and not needs_token("::1", False)
    assert needs_token("10.0.0.7", False) and needs_token(None, False)
    assert needs_token("not-an-address", False)
    assert not needs_token("10.0.0.7", True)


async def test_healthz_says_alive_and_who_leads(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    reply = await web.get("/healthz")
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "ok" and body["role"] == "leader" and body["epoch"] >= 1
    assert body["leader"] == body["controller"] == controller.id
    assert body["uptime"] >= 0


async def test_metrics_follow_nodes_heartbeats_tasks_and_the_store(
    controller: Controller,
    web: httpx.AsyncClient,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    first = await scrape(web)
    assert value(first, "corral_nodes", status="UP") == 1
    assert value(first, "corral_nodes", status="LEFT") == 0
    info = {"version": __version__, "controller": controller.id[:8]}
    assert value(first, "corral_controller_info", **info) == 1
    beats = value(first, "corral_heartbeats_total")

    async def more_beats() -> bool:
        return value(await scrape(web), "corral_heartbeats_total") > beats

    await eventually(more_beats, scaled(15))
    done = value(first, "corral_tasks_finished_total", status="complete")
    ids = await api.queue_tasks("add", [{"a": i, "b": 1} for i in range(5)])
    await api.wait_many(ids, scaled(20))
    after = await scrape(web)
    assert value(after, "corral_tasks_finished_total", status="complete") == done + 5
    assert value(after, "corral_task_run_seconds_count") >= 5
    assert value(after, "corral_task_wait_seconds_count") >= 5
    assert value(after, "corral_tasks", status="queued") == 0
    assert value(after, "corral_store_commit_seconds_count") > 0
    assert value(after, "corral_store_commit_units_sum") >= value(
        after, "corral_store_commit_units_count"
    )
    assert value(after, "corral_event_loop_lag_seconds_count") > 0  # the node's join took time

    async def log_fsynced() -> bool:  # SQLite: the log reaches the disk within 0.1 s
        return value(await scrape(web), "corral_store_log_fsyncs_total") > 0

    await eventually(log_fsynced, scaled(5))
    # The worst lag since start is kept: never below the latest.
    worst = value(after, "corral_event_loop_lag_max_seconds")
    assert worst >= value(after, "corral_event_loop_lag_last_seconds") and worst >= 0
    assert value(after, "corral_bus_connected") == 1
    # A refused message is counted by its reason.
    refused = sum(v for (n, _), v in after.items() if n == "corral_refused_total")
    assert controller.nc is not None
    await controller.nc.publish("corral.in.w1.hb", b"not msgpack")

    async def counted() -> bool:
        samples = await scrape(web)
        return sum(v for (n, _), v in samples.items() if n == "corral_refused_total") > refused

    await eventually(counted, scaled(15))
    await node.stop()

    async def left() -> bool:
        return value(await scrape(web), "corral_nodes", status="LEFT") == 1

    await eventually(left, scaled(15))


async def test_readyz_follows_the_bus_and_reconnects_are_counted(
    controller: Controller, web: httpx.AsyncClient, broker: EmbeddedBroker
) -> None:
    ready = await web.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "bus": "ok", "store": "ok"}
    broker.stop()

    async def not_ready() -> bool:
        reply = await web.get("/readyz")
        return reply.status_code == 503 and reply.json()["bus"] == "not connected"

    await eventually(not_ready, scaled(15))
    assert (await web.get("/healthz")).status_code == 200  # alive all the same
    await broker.start(timeout=scaled(15))

    async def ready_again() -> bool:
        return (await web.get("/readyz")).status_code == 200

    await eventually(ready_again, scaled(30))
    assert value(await scrape(web), "corral_bus_reconnects_total") >= 1


async def test_status_needs_a_read_token_and_shows_one_screen(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    assert (await web.get("/status")).status_code == 401
    token = await token_for(controller, Role.READ)
    reply = await web.get("/status", headers={"authorization": f"Bearer {token}"})
    assert reply.status_code == 200
    body = reply.json()
    assert body["controllers"][0]["controller"] == controller.id
    assert body["bus"]["connected"] is True and body["ready"]["store"] == "ok"
    assert body["nodes"]["UP"] == 0 and body["tasks"]["queued"] == 0
    assert body["failures"] == {"tasks": [], "commands": []}


def _cli(config: Config, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in child_env(config).items() if k != "CORRAL_API_TOKEN"}
    return subprocess.run(
        corral_argv(config, *args), env=env, capture_output=True, text=True, timeout=scaled(60)
    )


async def test_corral_status_shows_one_screen_and_json(
    controller: Controller,
    config: Config,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    assert controller.api is not None
    url = controller.api.url
    with pytest.raises(TaskFailed):
        await api.run("boom", message="status shows this")
    token = await token_for(controller, Role.READ)
    found = await asyncio.to_thread(
        _cli, config, "status", "--json", "--api", url, "--token", token
    )
    assert found.returncode == 0, found.stdout + found.stderr
    body = json.loads(found.stdout)
    assert body["ready"] == {"status": "ready", "bus": "ok", "store": "ok"}
    assert body["nodes"]["UP"] == 1 and body["tasks"]["queued"] == 0
    (failure,) = body["failures"]["tasks"]
    assert failure["key"] == "boom" and "status shows this" in failure["error"]
    shown = await asyncio.to_thread(_cli, config, "status", "--api", url, "--token", token)
    assert shown.returncode == 0, shown.stderr
    assert "ready" in shown.stdout and "UP 1" in shown.stdout and "boom" in shown.stdout
    # Without a token: what /healthz and /readyz say.
    bare = await asyncio.to_thread(_cli, config, "status", "--json", "--api", url)
    assert bare.returncode == 0, bare.stderr
    partial = json.loads(bare.stdout)
    assert partial["partial"] and partial["controllers"][0]["controller"] == controller.id
    # Nothing there: a clear error, exit 1.
    gone = await asyncio.to_thread(_cli, config, "status", "--api", "http://127.0.0.1:9")
    assert gone.returncode == 1 and "no controller API answers at" in gone.stderr


async def test_the_grafana_example_uses_only_metrics_the_controller_serves(
    web: httpx.AsyncClient,
) -> None:
    dashboard = json.loads(
        (Path(__file__).parent.parent / "examples" / "grafana" / "corral.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bcorral_[a-z0-9_]+", e)}
    served = {name for name, _ in await scrape(web)}
    assert used and used <= served, sorted(used - served)


async def test_readyz_says_not_ready_while_store_writes_fail(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    import time

    controller.backoff.failed(time.monotonic())  # what a transaction that failed whole does
    reply = await web.get("/readyz")
    assert reply.status_code == 503
    assert reply.json()["store"] == "1 write(s) failed in a row"
    assert value(await scrape(web), "corral_store_failures") == 1
    controller.backoff.succeeded()
    assert (await web.get("/readyz")).status_code == 200
