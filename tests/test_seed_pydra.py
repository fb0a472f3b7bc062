"""From the Pydra seed (../shared/seeds/002_*.txt, "Controller API"): code written as a user
migrating from Pydra writes it, against a real controller and a real node with worker
processes.

Pydra's wire form (``POST /<function>`` with ``{"args": [...], "kwargs": {...}}``), its client
calls by keyword and by position (``queue_task(task_key, args={})``), its per-field errors at
queue time, and its ``WebController(host, port)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import msgspec
import pytest

from conftest import scaled
from corral import AsyncController, Controller, ControllerError, WebController, wire
from corral.config import Config
from corral.controller import Controller as ControllerService
from corral.core.signatures import ArgsCheck, Signatures, describe
from corral.errors import InvalidArguments, NoKey
from corral.node import Node
from corral.security import Authority
from corral.tokens import Role
from tasks_fixtures import api, offered, token_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("node")


@pytest.fixture
async def node(controller: ControllerService, config: Config) -> AsyncIterator[Node]:
    """Node ``p1`` whose workers load the test tasks and the seed's ``MyTask``."""
    creds = config.data_path / "p1.creds"
    creds.write_text(Authority.load(config.data_path).enroll("p1"))
    n = Node(config, "p1", slots=2, creds=creds, tasks=("taskmods.basic", "taskmods.seed_pydra"))
    await n.start()
    try:
        await offered(controller, "p1")
        yield n
    finally:
        await n.stop()


def url(controller: ControllerService) -> str:
    assert controller.api is not None
    return controller.api.url


async def raw_client(controller: ControllerService) -> httpx.AsyncClient:
    token = await token_for(controller, Role.OPERATE)
    return httpx.AsyncClient(base_url=url(controller), headers={"authorization": f"Bearer {token}"})


async def nothing_stored(controller: ControllerService, api: AsyncController) -> None:  # noqa: F811
    assert (await api.task_history("MyTask")).total == 0
    assert (await api.list_queue()).total == 0
    assert controller.tasks is not None and not controller.tasks.core.active


# --- the wire: Pydra's {"args": [...], "kwargs": {...}} ---------------------------------------


async def test_args_and_kwargs_body_over_raw_http(
    controller: ControllerService,
    api: AsyncController,  # noqa: F811
) -> None:
    async with await raw_client(controller) as http:
        # positional args fill task_key, args, priority ... in order; kwargs the rest
        reply = await http.post(
            "/queue_task", json={"args": ["MyTask", {"foo": "ab", "count": 2}], "kwargs": {}}
        )
        assert reply.status_code == 200, reply.text
        first = reply.json()
        assert set(first) == {"task_key", "instance_id", "time"}  # Pydra's reply
        reply = await http.post(
            "/queue_task",
            json={"args": ["MyTask"], "kwargs": {"args": {"foo": "z"}, "priority": 2}},
        )
        assert reply.status_code == 200, reply.text
        second = reply.json()["instance_id"]
        # today's keyword form still works beside it
        reply = await http.post("/queue_task", json={"task_key": "MyTask", "args": {"foo": "k"}})
        assert reply.status_code == 200, reply.text
        third = reply.json()["instance_id"]
        # a read in Pydra's form: list_tasks(toplevel=True, keys=["MyTask"])
        reply = await http.post("/list_tasks", json={"args": [True, ["MyTask"]], "kwargs": {}})
        assert [t["key"] for t in reply.json()] == ["MyTask"]
        # Pydra's form that does not fit: too many positional, a field given twice
        too_many = await http.post("/task_history_detail", json={"args": [first["instance_id"], 2]})
        assert too_many.status_code == 422 and too_many.json()["code"] == -3
        assert "at most 1" in too_many.json()["error"]
        twice = await http.post(
            "/task_history_detail", json={"args": [1], "kwargs": {"task_instance_id": 1}}
        )
        assert twice.status_code == 422 and "given twice" in twice.json()["error"]
    done = await api.wait_many([first["instance_id"], second, third], scaled(20))
    assert [v.result for v in done] == ["abab", "z", "k"]
    assert done[1].priority == 2


async def test_the_openapi_schema_keeps_the_keyword_form(controller: ControllerService) -> None:
    async with httpx.AsyncClient(base_url=url(controller)) as http:
        schema = (await http.get("/openapi.json")).json()
    body = schema["components"]["schemas"]["QueueTask"]
    assert "task_key" in body["properties"] and "kwargs" not in body["properties"]


# --- the client: keyword and positional calls --------------------------------------------


async def test_keyword_and_positional_client_calls(
    api: AsyncController,  # noqa: F811
) -> None:
    ids = [
        await api.queue_task("MyTask", {"foo": "a"}),  # Pydra: queue_task(task_key, args)
        await api.queue_task(task_key="MyTask", args={"foo": "b"}),
        await api.queue_task("MyTask", foo="c", count=2),
        await api.queue_task("MyTask", {"foo": "d"}, 1),  # priority by position
        await api.run_tasks("MyTask", foo="e"),  # the seed's own line
        await api.run_tasks(task_key="MyTask", foo="f"),
    ]
    views = await api.wait_many(ids, scaled(20))
    assert [v.result for v in views] == ["a", "b", "cc", "d", "e", "f"]
    assert views[3].priority == 1
    assert await api.run("MyTask", {"foo": "g"}) == "g"
    assert await api.run(task_key="MyTask", args={"foo": "h"}, count=3) == "hhh"
    assert (await api.run_task(task_key="MyTask", args={"foo": "i"})).result == "i"
    batch = await api.queue_tasks("MyTask", [{"foo": "j"}], 3)
    assert (await api.wait(batch[0])).priority == 3
    assert (await api.cancel_task(task_instance_id=batch[0])).key == "MyTask"
    assert (await api.task_history(key="MyTask", page=1)).total == 10
    assert (await api.task_history_detail(task_instance_id=ids[0])).result == "a"
    # every function is a typed method, positionally or by keyword; Pydra's own body
    # (positional args in field order) goes through call()
    assert await api.list_commands(5) == [] and await api.list_commands(limit=5) == []
    assert await api.call("list_commands", args=[5], kwargs={}) == []
    with pytest.raises(TypeError):  # checked here, before anything is sent
        await api.list_commands(5, 1, 2)  # type: ignore[call-arg]
    with pytest.raises(ControllerError) as caught:
        await api.call("list_commands", args=[5, 1, 2], kwargs={})
    assert caught.value.code == -3 and "at most 2" in str(caught.value)


async def test_the_blocking_client_takes_both_and_names_itself_in_errors(
    controller: ControllerService,
) -> None:
    token = await token_for(controller, Role.OPERATE)

    def script() -> tuple[list[Any], list[str]]:
        results, errors = [], []
        with Controller(url(controller), token=token) as c:
            results.append(c.wait(c.queue_task(task_key="MyTask", args={"foo": "x"})).result)
            results.append(c.wait(c.queue_task("MyTask", {"foo": "y"})).result)
            results.append(c.run("MyTask", foo="z"))
            for bad in (lambda: c.queue_task(), lambda: c.wait(1, 2, 3)):
                try:
                    bad()
                except TypeError as exc:
                    errors.append(str(exc))
        return results, errors

    results, errors = await asyncio.to_thread(script)
    assert results == ["x", "y", "z"]
    assert len(errors) == 2
    for error in errors:
        assert "AsyncController" not in error and error.startswith("Controller."), error


# --- arguments checked at queue time ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fields"),
    [
        ({}, {"foo": "missing required argument"}),
        ({"foo": "a", "colour": "red"}, {"colour": "unknown argument; task 'MyTask' takes"}),
        ({"foo": "a", "count": "x"}, {"count": "expected int, got str"}),
    ],
    ids=["missing", "unknown", "wrong-type"],
)
async def test_bad_arguments_are_422_per_field_and_nothing_is_stored(
    controller: ControllerService,
    api: AsyncController,  # noqa: F811
    args: dict[str, Any],
    fields: dict[str, str],
) -> None:
    async with await raw_client(controller) as http:
        for function in ("queue_task", "run_task"):
            reply = await http.post(f"/{function}", json={"task_key": "MyTask", "args": args})
            assert reply.status_code == 422, reply.text
            body = reply.json()
            assert body["code"] == -3 and "invalid arguments for task 'MyTask'" in body["error"]
            assert set(body["fields"]) == set(fields)
            for name, said in fields.items():
                assert body["fields"][name].startswith(said), body["fields"]
        # Pydra's form is checked the same way
        reply = await http.post("/queue_task", json={"args": ["MyTask", args], "kwargs": {}})
        assert reply.status_code == 422 and set(reply.json()["fields"]) == set(fields)
        # one bad mapping in a batch refuses the batch, naming it
        batch = [{"foo": "fine"}, args]
        reply = await http.post("/queue_tasks", json={"task_key": "MyTask", "args": batch})
        assert reply.status_code == 422
        assert set(reply.json()["fields"]) == {f"args[1].{n}" for n in fields}
    with pytest.raises(InvalidArguments) as caught:
        await api.queue_task("MyTask", args)
    assert caught.value.code == -3 and caught.value.status == 422
    assert set(caught.value.fields) == set(fields)
    await nothing_stored(controller, api)


async def test_every_fault_is_reported_at_once(
    controller: ControllerService,
    api: AsyncController,  # noqa: F811
) -> None:
    with pytest.raises(InvalidArguments) as caught:
        await api.run("Weigh", items=[1, "two"], scale="big", ctx="mine", extra=1)
    assert caught.value.fields == {
        "items": "expected float, got str at items[1]",
        "scale": "expected float, got str",
        "ctx": "unknown argument; task 'Weigh' takes items, unit, scale",
        "extra": "unknown argument; task 'Weigh' takes items, unit, scale",
    }
    await nothing_stored(controller, api)
    # what fits runs, with ints where floats are declared and the worker's ctx filled in
    assert (await api.run("Weigh", items=[1, 2.5], scale=2)).startswith("7 kg (task ")


async def test_what_fits_the_signature_still_runs_and_untyped_values_pass(
    api: AsyncController,  # noqa: F811
) -> None:
    assert await api.run("MyTask", foo="ab", count=2) == "abab"
    echoed = await api.run("echo", value={"any": ["thing", 1]})  # `value: object`
    assert echoed["value"] == {"any": ["thing", 1]}
    with pytest.raises(InvalidArguments) as caught:
        await api.run("add", a=1, b=True)  # bool is not an int
    assert caught.value.fields == {"b": "expected int, got bool"}


# --- WebController(host, port) -----------------------------------------------------------


async def test_web_controller_host_and_port(controller: ControllerService) -> None:
    token = await token_for(controller, Role.OPERATE)
    host, port = url(controller).removeprefix("http://").rsplit(":", 1)
    token_file = controller.config.data_path / "master.key"
    token_file.write_text(token)

    def script() -> list[Any]:
        out: list[Any] = []
        with WebController(host, int(port), token) as controller_api:
            out.append(repr(controller_api))
            out.append([t.key for t in controller_api.list_tasks(keys=["MyTask"])])
            task_id = controller_api.run_tasks("MyTask", foo="bar")  # the seed's lines
            out.append(controller_api.wait(task_id).result)
        with WebController(host, int(port), token=str(token_file)) as from_file:
            out.append(from_file.run("MyTask", foo="f"))
        try:
            WebController(host, int(port), config=Config(data_dir=str(token_file) + ".none"))
        except NoKey as exc:
            out.append(exc)
        try:
            with WebController(host, int(port), token) as c:
                c.queue_task("MyTask", count=1)
        except ControllerError as exc:
            out.append(exc)
        return out

    shown, keys, result, from_file, no_key, refused = await asyncio.to_thread(script)
    assert shown.startswith("<WebController http://") and keys == ["MyTask"]
    assert result == "bar" and from_file == "f"
    assert isinstance(no_key, NoKey) and no_key.code == -4
    assert "WebController(" in str(no_key) and "token=" in str(no_key)
    assert "corral token create" in str(no_key)
    assert isinstance(refused, InvalidArguments) and refused.code == -3
    assert refused.fields == {"foo": "missing required argument"}


# --- the signature a node describes, and older nodes -------------------------------------


def test_a_node_describes_hints_msgspec_checks_and_leaves_the_rest_unchecked() -> None:
    class Opaque:
        pass

    def fn(
        ctx: object,
        n: Annotated[int, msgspec.Meta(ge=0)],
        tags: list[str] | None = None,
        thing: Opaque | None = None,
        /,
        *rest: int,
        **more: int,
    ) -> None: ...

    described = describe(fn)
    by_name = {p.name: p for p in described.params}
    assert "ctx" not in by_name and by_name["n"].required and not by_name["tags"].required
    assert by_name["thing"].type is None  # not a type msgspec knows: not checked
    check = ArgsCheck("fn", wire.TaskSignature(params=[*described.params]))
    assert check.errors({"n": -1}) == {
        "n": "the task function takes it positionally only, and tasks are called with keyword "
        "arguments: make it an ordinary parameter"
    }

    def keyed(n: Annotated[int, msgspec.Meta(ge=0)], thing: Opaque, **more: int) -> None: ...

    check = ArgsCheck("keyed", describe(keyed))
    assert check.errors({"n": -1, "thing": object(), "other": "x"}) == {
        "n": "expected int >= 0",
        "other": "expected int, got str",
    }
    assert check.errors({"n": 0, "thing": 1, "other": 2}) == {}


def test_an_older_node_without_signatures_is_not_checked() -> None:
    old_form = msgspec.msgpack.encode(
        {"type": "TaskHello", "instance": "i", "keys": ["MyTask"], "slots": 1}
    )
    hello = wire.decode(old_form, wire.TaskHello, wire.HEADERS)
    assert hello.signatures == {}
    signatures = Signatures()
    signatures.offer("new", ["MyTask"], {"MyTask": describe(lambda foo: None)})
    assert signatures.check("MyTask", {}) == {"foo": "missing required argument"}
    signatures.offer("old", ["MyTask"], hello.signatures)
    assert signatures.check("MyTask", {}) == {}  # one node cannot say: not checked
    assert signatures.check("Unheard", {"x": 1}) == {}
