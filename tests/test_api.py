"""The controller's HTTP API: the auth gate, Pydra's error codes, pagination bounds, the
node calls, the blocking client, and the OpenAPI schema fuzzed by schemathesis."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import scaled
from corral import AsyncController, Controller
from corral.config import Config
from corral.controller import Controller as ControllerService
from corral.errors import (
    AuthenticationFailed,
    Forbidden,
    FunctionNotFound,
    InvalidArguments,
    NoKey,
    NotFound,
    RemoteError,
)
from corral.node import Node
from corral.store import open_store
from corral.tokens import Role, create_token, revoke_token
from tasks_fixtures import api, node, token_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("node")


def url(controller: ControllerService) -> str:
    assert controller.api is not None
    return controller.api.url


async def test_no_token_is_401_with_code_minus_4_and_changes_nothing(
    controller: ControllerService,
    api: AsyncController,  # noqa: F811
) -> None:
    async with httpx.AsyncClient(base_url=url(controller)) as raw:
        reply = await raw.post("/queue_task", json={"task_key": "echo", "args": {}})
        assert reply.status_code == 401 and reply.json()["code"] == -4
        reply = await raw.post("/queue_task", headers={"authorization": "Bearer crl_x_y"}, json={})
        assert reply.status_code == 401 and reply.json()["code"] == -1
    assert (await api.task_history("echo")).total == 0
    with pytest.raises(NoKey):
        AsyncController(
            url(controller), "", config=Config(data_dir=str(controller.config.data_path / "none"))
        )


async def test_a_refused_or_revoked_token_is_authentication_failure(
    controller: ControllerService,
) -> None:
    assert controller.store is not None
    token, text = await create_token(controller.store, Role.ADMIN)
    async with AsyncController(url(controller), text) as c:
        assert await c.node_status()
        assert await revoke_token(controller.store, token.id)
        forged = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBB")
        async with AsyncController(url(controller), forged) as bad:
            with pytest.raises(AuthenticationFailed) as caught:
                await bad.node_status()
            assert caught.value.code == -1 and caught.value.status == 401
        async with asyncio.timeout(scaled(10)):  # the checker's cache lasts 2 s
            while True:
                try:
                    await c.node_status()
                except AuthenticationFailed:
                    break
                await asyncio.sleep(0.1)


async def test_a_read_token_may_look_but_not_queue(
    controller: ControllerService,
    api: AsyncController,  # noqa: F811
) -> None:
    async with AsyncController(url(controller), await token_for(controller, Role.READ)) as reader:
        assert {v.key for v in await reader.list_tasks()} >= {"echo"}
        with pytest.raises(Forbidden, match="needs 'operate'") as caught:
            await reader.queue_task("echo")
        assert (caught.value.code, caught.value.status) == (-1, 403)
        with pytest.raises(Forbidden):
            await reader.cancel_task(1)
    assert (await api.task_history("echo")).total == 0


async def test_unknown_functions_and_ids_carry_pydra_codes(api: AsyncController) -> None:  # noqa: F811
    with pytest.raises(FunctionNotFound) as caught:
        await api.call("no_such_function", x=1)
    with pytest.raises(AttributeError):  # a typo is not a remote call
        api.no_such_function  # noqa: B018
    assert caught.value.code == -6 and caught.value.status == 404
    with pytest.raises(NotFound) as missing:
        await api.task_history_detail(987654)
    assert (missing.value.code, missing.value.status) == (-3, 404)
    with pytest.raises(InvalidArguments, match="invalid arguments") as invalid:
        await api.call("task_history", key="echo", page=0)
    assert invalid.value.status == 422 and isinstance(invalid.value, RemoteError)
    with pytest.raises(InvalidArguments, match="unknown field"):
        await api.call("list_tasks", toplevel=True, bogus=1)


async def test_history_pages_are_bounded_and_clamped(api: AsyncController) -> None:  # noqa: F811
    ids = await api.queue_tasks("add", [{"a": i, "b": 0} for i in range(25)])
    await api.wait_many(ids, scaled(20))
    first = await api.task_history("add")
    assert (first.page, first.pages, first.total, first.prev, first.next) == (1, 3, 25, None, 2)
    assert [v.id for v in first.items] == ids[::-1][:10]  # newest first, 10 a page (Pydra)
    last = await api.task_history("add", page=3)
    assert len(last.items) == 5 and last.next is None and last.prev == 2
    beyond = await api.task_history("add", page=999)
    assert beyond.page == 3 and [v.id for v in beyond.items] == [v.id for v in last.items]
    assert (await api.task_history("add", per_page=1000)).pages == 1
    with pytest.raises(RemoteError):
        await api.task_history("add", per_page=1001)
    empty = await api.task_history("never-ran")
    assert (empty.page, empty.pages, empty.total, empty.items) == (1, 1, 0, [])


async def test_node_calls(
    controller: ControllerService,
    api: AsyncController,  # noqa: F811
    node: Node,  # noqa: F811
) -> None:
    page = await api.node_list()
    assert [n.name for n in page.items] == ["w1"] and page.per_page == 25
    assert (await api.node_detail("w1")).slots == 2
    edited = await api.node_edit({"id": "w1", "attributes": {"room": "B12"}})
    assert edited.attributes == {"room": "B12"}
    with pytest.raises(RemoteError, match="cannot set status"):
        await api.node_edit({"id": "w1", "status": "DOWN"})  # no mass assignment
    with pytest.raises(RemoteError, match="corral enroll"):
        await api.node_edit({"labels": ["x"]})
    with pytest.raises(NotFound):
        await api.node_detail("ghost")
    assert await api.connect() == {"nodes": 1}
    controller_data = controller.config.data_path
    from corral.security import Authority

    Authority.load(controller_data).enroll("later")
    assert [k.name for k in await api.list_known_nodes()] == ["later"]


async def test_the_blocking_client_reads_like_local_calls(
    controller: ControllerService,
) -> None:
    token = await token_for(controller, Role.OPERATE)

    def script() -> tuple[int, object]:
        with Controller(url(controller), token=token) as c:
            assert c.url == url(controller) and "Controller" in repr(c)
            task_id = c.run_tasks("echo", value="bar")  # the seed's own line
            return task_id, c.wait(task_id).result

    task_id, result = await asyncio.to_thread(script)
    assert task_id >= 1 and result["value"] == "bar"  # type: ignore[index]


async def test_openapi_schema_fuzzed_without_a_server_error(
    controller: ControllerService, tmp_path: Path
) -> None:
    token = await token_for(controller, Role.ADMIN)
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{url(controller)}/openapi.json",
        "--header", f"Authorization: Bearer {token}", "--checks", "not_a_server_error",
        "--max-examples", "10", "--seed", "4", "--request-timeout", "40",
        "--generation-deterministic",
    ]  # fmt: skip
    run = functools.partial(subprocess.run, capture_output=True, text=True, cwd=tmp_path)
    done = await asyncio.to_thread(run, argv)  # its cache goes to tmp_path, not the repo
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    async with httpx.AsyncClient(base_url=url(controller)) as raw:
        schema = (await raw.get("/openapi.json")).json()
    assert len(schema["paths"]) >= 16 and "bearer" in schema["components"]["securitySchemes"]


async def test_tokens_are_stored_hashed(controller: ControllerService) -> None:
    assert controller.store is not None
    _, text = await create_token(controller.store, Role.READ, "hashed")
    async with await open_store(controller.config.store_url) as store:
        async with store.reader() as conn:
            from sqlalchemy import text as sql

            rows = (await conn.execute(sql("SELECT hash, role FROM api_tokens"))).all()
    secret = text.split("_", 2)[2]
    assert all(secret not in row[0] for row in rows) and ("read" in {r[1] for r in rows})
