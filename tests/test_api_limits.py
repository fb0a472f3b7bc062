"""Limits at every entry, tried as an attacker would, on a real controller, node and HTTP:
a body over the limit (413, not read), JSON nested 5,000 deep (422), task arguments larger
than the bus carries (refused, nothing stored, no slot held), a run that cannot be sent,
a forced cancel on a node that was killed, and per-token overload (429, Retry-After)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Procs, scaled
from corral import AsyncController
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.controller import Controller
from corral.core.taskstate import TaskInstance
from corral.errors import OversizedMessage
from corral.node import Node
from corral.security import Authority
from corral.tokens import Role
from dashboard_fixtures import sign_in
from tasks_fixtures import api, node, offered, token_for  # noqa: F401 - fixtures

MiB = 1024 * 1024


@pytest.fixture
def config(config: Config, request: pytest.FixtureRequest) -> Config:
    """The test's settings (``indirect`` parameters) over the shared fast ones."""
    for name, value in getattr(request, "param", {}).items():
        setattr(config, name, value)
    return config


def url(controller: Controller) -> str:
    assert controller.api is not None
    return controller.api.url


async def raw_exchange(
    controller: Controller, head: bytes, body_parts: AsyncIterator[bytes]
) -> tuple[bytes, int]:
    """Send a request head, then body parts until the answer arrives; returns the answer's
    head and how many body bytes were sent by then."""
    host, port = url(controller).removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answered = asyncio.Event()
    sent = 0

    async def write() -> None:
        nonlocal sent
        writer.write(head)
        async for part in body_parts:
            if answered.is_set():
                return
            writer.write(part)
            sent += len(part)
            await writer.drain()

    writing = asyncio.create_task(write())
    try:
        async with asyncio.timeout(scaled(20)):
            answer = await reader.readuntil(b"\r\n\r\n")
            answered.set()
            length = int(
                next(
                    line.split(b":")[1]
                    for line in answer.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            answer += await reader.readexactly(length)
    finally:
        answered.set()
        writing.cancel()
        with pytest.raises((asyncio.CancelledError, ConnectionError)):
            await writing
            raise asyncio.CancelledError  # it ended on its own (the answer came first)
        writer.close()
    return answer, sent


async def zeros(total: int, chunk: int = 64 * 1024, chunked: bool = False) -> AsyncIterator[bytes]:
    for _ in range(total // chunk):
        yield (b"%x\r\n" % chunk + b"0" * chunk + b"\r\n") if chunked else b"0" * chunk
        await asyncio.sleep(0)
    if chunked:
        yield b"0\r\n\r\n"


# --- body size ---------------------------------------------------------------------------


async def test_a_64_mib_body_is_refused_413_before_it_is_read(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    token = await token_for(controller, Role.OPERATE)
    limit = controller.config.request_limit
    assert limit == controller.config.max_command_bytes  # the default follows it
    for path, extra in (
        (b"/queue_tasks", b"authorization: Bearer %s\r\n" % token.encode()),
        (b"/ui/tasks", b"content-type: application/x-www-form-urlencoded\r\n"),
    ):
        head = (
            b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n%s"
            b"content-length: %d\r\n\r\n" % (path, extra, 64 * MiB)
        )
        answer, sent = await raw_exchange(controller, head, zeros(64 * MiB))
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"code":-3' in answer and b"max_request_bytes" in answer
        assert b"limit of %d bytes" % limit in answer
        assert sent < 64 * MiB  # answered while most of the body was still unsent
    # Chunked (no Content-Length): counted as it arrives, refused once past the limit.
    head = (
        b"POST /queue_tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
        b"transfer-encoding: chunked\r\n\r\n" % token.encode()
    )
    answer, sent = await raw_exchange(controller, head, zeros(64 * MiB, chunked=True))
    assert answer.startswith(b"HTTP/1.1 413") and b"(chunked)" in answer
    assert sent < 64 * MiB
    assert (await api.task_history("echo")).total == 0
    # The Python client gets the 413 as an error that says what to do.
    for size in (2 * MiB, 16 * MiB):
        with pytest.raises(OversizedMessage, match="raise max_request_bytes") as caught:
            await api.queue_tasks("echo", [{"value": "z" * size}])
        assert caught.value.status == 413
    assert (await api.task_history("echo")).total == 0
    # A chunked body within the limit is served as usual.
    body = b'{"task_key": "echo", "args": [{"value": 1}]}'
    head = (
        b"POST /queue_tasks HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n"
        b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (token.encode(), len(body), body)
    )
    answer, _ = await raw_exchange(controller, head, zeros(0))
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert (await api.task_history("echo")).total == 1


async def test_json_nested_5000_deep_is_422_naming_the_limit(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    token = await token_for(controller, Role.OPERATE)
    deep = b"[" * 5000 + b"]" * 5000
    body = b'{"task_key": "echo", "args": {"value": %s}}' % deep
    async with httpx.AsyncClient(base_url=url(controller)) as raw:
        reply = await raw.post(
            "/queue_task", content=body, headers={"authorization": f"Bearer {token}"}
        )
    assert reply.status_code == 422, reply.text
    assert reply.json()["code"] == -3 and "limit is 64 levels" in reply.json()["error"]
    assert (await api.task_history("echo")).total == 0
    # Nesting within the limit is served.
    value: Any = 1
    for _ in range(60):
        value = [value]
    assert (await api.run("echo", value=value))["value"] == value


async def test_the_dashboards_json_fields_are_depth_checked_too(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    async with httpx.AsyncClient(base_url=url(controller), timeout=scaled(20)) as web:
        csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
        deep = '{"value": ' + "[" * 5000 + "]" * 5000 + "}"
        reply = await web.post("/ui/tasks", data={"csrf": csrf, "task_key": "echo", "args": deep})
        assert reply.status_code == 303  # back to the form, with the reason shown
        assert "limit is 64 levels" in (await web.get("/ui/tasks")).text
    assert (await api.task_history("echo")).total == 0


# --- task arguments and the bus -----------------------------------------------------------


@pytest.mark.parametrize("config", [{"max_request_bytes": 40 * MiB}], indirect=True)
async def test_arguments_over_max_payload_are_refused_and_nothing_is_stored(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    assert controller.nc is not None
    max_payload = controller.nc.max_payload
    with pytest.raises(
        OversizedMessage, match=r"argument mapping #1 encode to \d+ bytes"
    ) as caught:
        await api.queue_tasks("echo", [{"value": 1}, {"value": "x" * max_payload}])
    assert caught.value.status == 413 and "Nothing was queued" in str(caught.value)
    assert f"at most {max_payload - 300}" not in str(caught.value)  # a real limit, said
    assert (await api.task_history("echo")).total == 0
    assert all(v.held == 0 for v in await api.node_status())
    # Arguments that fit, but not all in one message to the node: split, and all run.
    big = [{"value": "y" * (MiB + n)} for n in range(12)]  # 2 slots x prefetch 4 = 8 at once
    done = await api.wait_many(await api.queue_tasks("echo", big), scaled(60))
    assert [len(v.result["value"]) for v in done] == [MiB + n for n in range(12)]
    assert all(v.status == "complete" and v.attempts == 1 for v in done)


async def test_a_run_that_cannot_be_sent_fails_clearly_and_the_rest_of_the_pump_runs(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    """Bypass the check at queue time (an instance stored before a smaller max_payload):
    the run is never recorded as running, holds no slot, and its neighbour still runs."""
    tasks = controller.tasks
    assert tasks is not None and controller.nc is not None
    first = tasks._next_id
    tasks._next_id += 2
    huge = TaskInstance(id=first, key="echo", args=b"\xc4" + b"\0" * controller.nc.max_payload)
    fine = TaskInstance(id=first + 1, key="echo", args=b"\x80")
    tasks.core.queue([huge, fine], tasks.clock())
    await tasks._pump()
    failed = await api.wait(first, scaled(10))
    assert failed.status == "failed" and failed.attempts == 0, failed
    assert "could not be sent to a node" in failed.error and "max_payload" in failed.error
    assert (await api.wait(first + 1, scaled(10))).status == "complete"
    assert all(v.held == 0 for v in await api.node_status())


# --- forced cancel --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [{"cancel_grace": 0.3, "down_after": 120.0}], indirect=True
)  # the node is not declared DOWN within the test: only the forced cancel can end it
async def test_a_forced_cancel_on_a_killed_node_ends_cancelled(
    controller: Controller,
    api: AsyncController,  # noqa: F811
    config: Config,
    procs: Procs,
    tmp_path: Path,
) -> None:
    creds = config.data_path / "k1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("k1"))
    proc = procs.start(
        "node", "--name", "k1", "--nats", config.bus_url, "--creds", str(creds),
        "--slots", "1", "--tasks", "taskmods.basic", log="k1",
    )  # fmt: skip
    await offered(controller, "k1", timeout=30)
    started = tmp_path / "started"
    ident = await api.queue_task("stubborn", started=str(started))
    async with asyncio.timeout(scaled(20)):
        while not started.exists() or not started.read_text():
            await asyncio.sleep(0.02)
    proc.kill()  # SIGKILL: the node never answers the stop nor the kill
    proc.wait()
    try:
        asked = await api.cancel_task(ident, force=True)
        assert asked.status == "cancel-requested"
        final = await api.wait(ident, scaled(10))
        assert final.status == "cancelled" and "did not confirm the kill" in final.error
    finally:
        with pytest.raises(ProcessLookupError):  # the worker died with its node
            os.kill(int(started.read_text()), signal.SIGKILL)
            raise ProcessLookupError


# --- overload -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", [{"api_rate": 0.5, "api_burst": 3, "api_max_in_flight": 1}], indirect=True
)
async def test_a_token_over_its_rate_or_in_flight_limit_gets_429_with_retry_after(
    controller: Controller,
    tmp_path: Path,
    node: Node,  # noqa: F811
) -> None:
    fast, slow, other = [await token_for(controller, Role.OPERATE) for _ in range(3)]
    assert controller.api is not None and controller.api.limiter is not None
    async with httpx.AsyncClient(base_url=url(controller), timeout=scaled(30)) as raw:

        def call(token: str, function: str, **body: Any) -> Any:
            return raw.post(f"/{function}", json=body, headers={"authorization": f"Bearer {token}"})

        # Rate: a burst of 3, then one call every 2 seconds.
        replies = [await call(fast, "node_status") for _ in range(4)]
        assert [r.status_code for r in replies] == [200, 200, 200, 429]
        assert replies[3].headers["retry-after"] == "2"
        assert replies[3].json()["code"] == -3 and "api_rate" in replies[3].json()["error"]
        assert (await call(other, "node_status")).status_code == 200  # its own bucket
        # In flight: one call waiting holds the token's only place.
        queued = await call(slow, "queue_task", task_key="wait_for_file", args={"path": "/nope"})
        ident = queued.json()["instance_id"]
        waiting = asyncio.create_task(
            call(slow, "wait", task_instance_ids=[ident], timeout=scaled(20))
        )
        async with asyncio.timeout(scaled(10)):
            while controller.api.limiter.in_flight(slow) < 1:
                await asyncio.sleep(0.01)
        refused = await call(slow, "node_status")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "calls in flight" in refused.json()["error"]
        assert (await call(other, "cancel_task", task_instance_id=ident, force=True)).is_success
        assert (await waiting).status_code == 200
        assert controller.api.limiter.in_flight(slow) == 0


@pytest.mark.parametrize(
    "config", [{"down_after": 120.0, "max_request_bytes": 8 * MiB}], indirect=True
)  # the node stays UP while the bus is away: only the publish fails
async def test_a_run_whose_publish_fails_goes_back_to_the_queue_and_runs_later(
    controller: Controller,
    broker: EmbeddedBroker,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    assert controller.nc is not None
    broker.stop()  # the bus goes away: publishes are buffered, up to the client's 2 MiB
    async with asyncio.timeout(scaled(10)):
        while controller.nc.is_connected:
            await asyncio.sleep(0.02)
    value = "v" * (3 * MiB)  # more than the reconnect buffer holds: the publish raises
    ident = await api.queue_task("echo", value=value)
    waiting = await api.task_history_detail(ident)
    assert (waiting.status, waiting.attempts, waiting.node, waiting.history) == (
        "queued", 0, "", []
    )  # fmt: skip
    assert all(v.held == 0 for v in await api.node_status())
    await broker.start(timeout=scaled(15))
    done = await api.wait(ident, scaled(30))
    assert (done.status, done.attempts) == ("complete", 1) and done.result["value"] == value
