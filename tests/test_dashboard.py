"""The dashboard over plain HTTP: sign-in, the session cookie, CSRF, escaping and roles."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from conftest import child_env, corral_argv, scaled
from corral import Agent, Message, on
from corral.config import Config
from corral.controller import Controller
from corral.dashboard.auth import COOKIE
from corral.dashboard.users import add_user, check_password, hash_password, verify_password
from corral.errors import UsageError
from corral.group import Group
from corral.guardian import Guardian
from corral.node import Node
from corral.tokens import Role, revoke_token
from dashboard_fixtures import first_event, sign_in
from tasks_fixtures import node, token_for  # noqa: F401 - fixtures


async def queued(controller: Controller) -> int:
    assert controller.tasks is not None and controller.tasks.store is not None
    page = await controller.tasks.store.page(page=1, per_page=100)
    return page.total


def test_passwords_are_salted_scrypt_and_checked() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert stored != hash_password("correct horse")  # a fresh salt each time
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsf", stored)
    assert not verify_password("x", "garbage")


async def test_unauthenticated_pages_redirect_and_streams_are_401(
    web: httpx.AsyncClient,
) -> None:
    root = await web.get("/")
    assert root.status_code == 303 and root.headers["location"] == "/ui/fleet"
    page = await web.get("/ui/tasks")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/ui/login?next=")
    assert (await web.get("/ui/events/fleet")).status_code == 401
    post = await web.post("/ui/tasks", data={"task_key": "x", "csrf": "x"})
    assert post.status_code == 401


async def test_token_sign_in_sets_a_strict_httponly_cookie(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    token = await token_for(controller, Role.READ)
    page = await web.get("/ui/login")
    nonce = page.text.split('name="nonce" value="')[1].split('"')[0]
    reply = await web.post("/ui/login", data={"nonce": nonce, "token": token, "next": "/ui/tasks"})
    assert reply.status_code == 303 and reply.headers["location"] == "/ui/tasks"
    cookie = next(h for h in reply.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    fleet = await web.get("/ui/fleet")
    assert fleet.status_code == 200
    assert "script-src 'self'" in fleet.headers["content-security-policy"]
    # A revoked token loses its session within the re-check interval.
    assert controller.store is not None
    await revoke_token(controller.store, token.split("_")[1])
    async with asyncio.timeout(scaled(10)):
        while (await web.get("/ui/fleet")).status_code == 200:
            await asyncio.sleep(0.2)


async def test_login_refuses_bad_credentials_a_missing_nonce_and_open_redirects(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    assert controller.store is not None
    await add_user(controller.store, "alice", Role.OPERATE, "s3cret-password")
    page = await web.get("/ui/login")
    nonce = page.text.split('name="nonce" value="')[1].split('"')[0]
    wrong = await web.post(
        "/ui/login", data={"nonce": nonce, "name": "alice", "password": "nope-nope"}
    )
    assert wrong.status_code == 401 and COOKIE not in web.cookies
    assert "wrong password" in wrong.text
    forged = await web.post(
        "/ui/login", data={"nonce": "forged", "name": "alice", "password": "s3cret-password"}
    )
    assert forged.status_code == 403 and COOKIE not in web.cookies
    ok = await web.post(
        "/ui/login",
        data={
            "nonce": nonce,
            "name": "alice",
            "password": "s3cret-password",
            "next": "//evil.example/",
        },
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/fleet"


async def test_users_are_unique_and_need_a_real_password(controller: Controller) -> None:
    assert controller.store is not None
    await add_user(controller.store, "bob", "read", "long-enough")
    with pytest.raises(UsageError, match="exists already"):
        await add_user(controller.store, "bob", "read", "long-enough")
    with pytest.raises(UsageError, match="too short"):
        await add_user(controller.store, "carol", "read", "short")
    with pytest.raises(UsageError, match="unknown role"):
        await add_user(controller.store, "carol", "root", "long-enough")
    assert await check_password(controller.store, "bob", "long-enough") is not None
    assert await check_password(controller.store, "nobody", "long-enough") is None


async def test_forms_without_or_with_a_wrong_csrf_token_change_nothing(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    before = await queued(controller)
    form = {"task_key": "add", "args": '{"a": 1, "b": 2}'}
    missing = await web.post("/ui/tasks", data=form)
    assert missing.status_code == 403 and "CSRF" in missing.text
    wrong = await web.post("/ui/tasks", data={**form, "csrf": csrf[:-2] + "xx"})
    assert wrong.status_code == 403
    cross = await web.post(
        "/ui/tasks", data={**form, "csrf": csrf}, headers={"Origin": "http://evil.example"}
    )
    assert cross.status_code == 403
    assert await queued(controller) == before
    good = await web.post("/ui/tasks", data={**form, "csrf": csrf})
    assert good.status_code == 303
    assert await queued(controller) == before + 1


async def test_labels_and_attributes_are_escaped(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    evil = "<script>alert(1)</script>"
    edit = await web.post(
        "/ui/nodes/w1/edit",
        data={"csrf": csrf, "labels": evil, "attributes": json.dumps({"x": "<img src=x>"})},
    )
    assert edit.status_code == 303
    assert controller.registry.nodes["w1"].labels == (evil,)
    for path in ("/ui/fleet", "/ui/nodes/w1"):
        html = (await web.get(path)).text
        assert evil not in html and "<img src=x>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # The live stream carries the raw value as JSON data; app.js shows it with textContent.
    async with web.stream("GET", "/ui/events/fleet") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        async for line in events.aiter_lines():
            if line.startswith("data: "):
                (row,) = json.loads(line[6:])
                assert row["labels"] == [evil] and row["status"] == "UP"
                break


async def test_roles_read_cannot_change_and_only_execute_sees_execute(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    csrf = await sign_in(web, token=await token_for(controller, Role.READ))
    page = (await web.get("/ui/commands")).text
    assert 'id="command-form"' not in page
    refused = await web.post(
        "/ui/commands", data={"csrf": csrf, "targets": "w1", "kind": "get", "name": "x"}
    )
    assert refused.status_code == 403
    assert controller.commands.book.last_serial == 0

    web.cookies.clear()
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    page = (await web.get("/ui/commands")).text
    assert 'id="command-form"' in page and 'value="execute"' not in page
    sent = await web.post(
        "/ui/commands",
        data={"csrf": csrf, "targets": "w1", "kind": "execute", "code": "print(1)"},
    )
    assert sent.status_code == 303 and sent.headers["location"] == "/ui/commands"
    assert "execute role" in (await web.get("/ui/commands")).text
    assert controller.commands.book.last_serial == 0

    web.cookies.clear()
    await sign_in(web, token=await token_for(controller, Role.EXECUTE))
    assert 'value="execute"' in (await web.get("/ui/commands")).text


async def test_a_command_from_the_dashboard_is_audited_with_the_user(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    assert controller.store is not None
    await add_user(controller.store, "dana", Role.OPERATE, "dana-password")
    csrf = await sign_in(web, name="dana", password="dana-password")
    sent = await web.post(
        "/ui/commands", data={"csrf": csrf, "targets": "w*", "kind": "shell", "cmd": "echo hi"}
    )
    assert sent.status_code == 303
    serial = int(sent.headers["location"].rsplit("/", 1)[1])
    async with asyncio.timeout(scaled(20)):
        while True:
            found = await controller.store.get_command(serial)
            if found is not None and found[1] and found[1][0].state in ("done", "failed"):
                break
            await asyncio.sleep(0.1)
    row, outcomes = found
    # The in-process node runs no shell commands: refused there, recorded here.
    assert row.actor == "dana" and row.targets == ["w*"] and outcomes[0].node == "w1"
    audit = await controller.store.audit_log(50)
    assert any((e.actor, e.action, e.role) == ("dana", "shell", "operate") for e in audit)
    detail = await web.get(f"/ui/commands/{serial}")
    assert outcomes[0].state in detail.text and outcomes[0].error in detail.text


async def test_corral_user_add_from_the_cli(config: Config, controller: Controller) -> None:
    argv = corral_argv(config, "user", "add", "erin", "--role", "read")
    env = {**child_env(config), "CORRAL_USER_PASSWORD": "erin-password"}
    done = await asyncio.to_thread(
        __import__("subprocess").run, argv, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert controller.store is not None
    user = await check_password(controller.store, "erin", "erin-password")
    assert user is not None and user.role == "read"


async def test_fleet_filters_by_glob_and_label_and_read_cannot_edit(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    controller.registry.nodes["w1"].labels = ("gpu",)
    csrf = await sign_in(web, token=await token_for(controller, Role.READ))
    assert 'data-node="w1"' in (await web.get("/ui/fleet?filter=w*")).text
    assert 'data-node="w1"' in (await web.get("/ui/fleet?filter=label:gpu")).text
    assert 'data-node="w1"' not in (await web.get("/ui/fleet?filter=db-*")).text
    assert await first_event(web, "/ui/events/fleet?filter=db-*") == []
    detail = (await web.get("/ui/nodes/w1")).text
    assert 'id="edit-form"' not in detail
    refused = await web.post("/ui/nodes/w1/edit", data={"csrf": csrf, "labels": "x"})
    assert refused.status_code == 403
    assert controller.registry.nodes["w1"].labels == ("gpu",)
    assert (await web.get("/ui/nodes/nope")).status_code == 404
    assert (await web.get("/ui/events/nope")).status_code == 400


async def test_reports_arrive_on_the_reports_stream(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    await sign_in(web, token=await token_for(controller, Role.READ))
    await node.report("load", 0.5)
    async with asyncio.timeout(scaled(10)):
        while ("w1", "load") not in controller.reports.latest:
            await asyncio.sleep(0.05)
    snap = await first_event(web, "/ui/events/reports")
    assert isinstance(snap, dict)
    assert [(r["node"], r["topic"], r["value"]) for r in snap["reports"]] == [("w1", "load", 0.5)]
    assert "load" in (await web.get("/ui/reports")).text


async def test_task_pages_show_result_and_history(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    bad = await web.post("/ui/tasks", data={"csrf": csrf, "task_key": "add", "args": "[1]"})
    assert bad.status_code == 303
    assert "must be a JSON object" in (await web.get("/ui/tasks")).text
    await web.post("/ui/tasks", data={"csrf": csrf, "task_key": "boom", "args": "{}"})
    assert controller.tasks is not None and controller.tasks.store is not None
    async with asyncio.timeout(scaled(30)):
        while True:
            page = await controller.tasks.store.page(page=1, per_page=10, key="boom")
            if page.items and page.items[0].status == "failed":
                break
            await asyncio.sleep(0.1)
    ident = page.items[0].id
    detail = (await web.get(f"/ui/tasks/{ident}")).text
    assert 'id="traceback"' in detail and "kaboom" in detail
    history = (await web.get("/ui/history/boom")).text
    assert f"/ui/tasks/{ident}" in history and "Page 1 of 1" in history
    live = await first_event(web, "/ui/events/tasks")
    assert isinstance(live, dict) and live["running"] == [] and live["queued"] == 0


def test_the_assets_ship_inside_the_package() -> None:
    from importlib.resources import files

    root = files("corral.dashboard")
    for name in ("static/app.js", "static/style.css", "templates/base.html"):
        assert root.joinpath(name).is_file(), name
    script = root.joinpath("static/app.js").read_text()
    # Server data goes in with textContent only, and nothing is fetched from another site.
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "http" not in script.replace("http://www.w3.org/2000/svg", "")


class Pinger(Agent):
    name = "pinger"

    @on("ping")
    async def ping(self, msg: Message) -> str:
        return "pong"


async def test_groups_show_the_barrier_and_who_is_missing_and_agents_their_handlers(
    controller: Controller, config: Config, web: httpx.AsyncClient
) -> None:
    await sign_in(web, token=await token_for(controller, Role.READ))
    pair = sorted(
        await asyncio.gather(
            *(Group.join("pair", 2, config=config, startup_timeout=scaled(10)) for _ in range(2))
        ),
        key=lambda g: g.rank,
    )
    agent = Pinger(config=config)
    running = asyncio.create_task(agent.run())
    waiting = asyncio.create_task(pair[0].barrier(timeout=scaled(30)))
    try:
        await asyncio.wait_for(agent.serving(), scaled(10))
        async with asyncio.timeout(scaled(15)):
            while True:
                seen = await first_event(web, "/ui/events/groups")
                assert isinstance(seen, dict)
                (group,) = seen["groups"]
                agents = {a["name"]: a for a in seen["agents"]}
                if group["barrier"] and "pinger" in agents:
                    break
                await asyncio.sleep(0.1)
        assert group["name"] == "pair" and group["size"] == 2
        assert group["barrier"]["kind"] == "barrier" and group["barrier"]["arrived"] == 1
        assert group["missing"] == [m["id"] for m in group["members"] if m["rank"] == 1]
        assert agents["pinger"]["handlers"] == ["ping"]
        assert "pair" in (await web.get("/ui/groups")).text
        await pair[1].barrier(timeout=scaled(10))
        await waiting
    finally:
        waiting.cancel()
        agent.stop()
        await asyncio.wait_for(running, scaled(5))
        await asyncio.gather(*(g.leave() for g in pair), return_exceptions=True)


async def test_sign_out_ends_the_session(controller: Controller, web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, token=await token_for(controller, Role.READ))
    assert (await web.post("/ui/logout", data={"x": "1"})).status_code == 403  # no CSRF token
    out = await web.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert (await web.get("/ui/fleet")).status_code == 303
    assert len(controller.api.dashboard.gate.sessions) == 0  # type: ignore[union-attr]
    assert controller.store is not None and await controller.store.auth.sessions() == []


async def test_a_live_stream_ends_when_its_session_does(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    csrf = await sign_in(web, token=await token_for(controller, Role.READ))
    async with web.stream("GET", "/ui/events/fleet") as events:
        lines = events.aiter_lines()
        async with asyncio.timeout(scaled(10)):
            async for line in lines:
                if line.startswith("data: "):
                    break
            assert (await web.post("/ui/logout", data={"csrf": csrf})).status_code == 303
            rest = [line async for line in lines]
    assert "event: signout" in rest


async def test_the_task_page_shows_the_instance_logs(
    controller: Controller,
    web: httpx.AsyncClient,
    node: Node,  # noqa: F811
) -> None:
    """Pydra's task logs (issue #17) on the dashboard's task page."""
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    await web.post("/ui/tasks", data={"csrf": csrf, "task_key": "chatty", "args": '{"lines": 2}'})
    assert controller.tasks is not None and controller.tasks.store is not None
    async with asyncio.timeout(scaled(30)):
        while True:
            page = await controller.tasks.store.page(page=1, per_page=10, key="chatty")
            if page.items and page.items[0].status == "complete":
                break
            await asyncio.sleep(0.1)
    detail = (await web.get(f"/ui/tasks/{page.items[0].id}")).text
    assert 'id="logs"' in detail
    assert "out 1 xxxxxxxxxx\nstep 1 of 2\nto stderr" in detail


async def test_guardian_pages_show_a_guardian_and_audit_a_request(
    controller: Controller,
    web: httpx.AsyncClient,
    config: Config,
    hosted: list[Guardian],
    tmp_path: Path,
) -> None:
    """The guardian pages over plain HTTP (the browser tests need chromium)."""
    path = tmp_path / "two.py"
    path.write_text(
        "from corral.guardian import GuardState\n"
        "class DOWN(GuardState):\n    goto = True\n"
        "class UP(GuardState):\n    pass\n"
        'edges = [("DOWN", "UP")]\n'
    )
    guardian = Guardian(path, "G1", config=config, cycle=0.01)
    await guardian.start()
    hosted.append(guardian)
    csrf = await sign_in(web, token=await token_for(controller, Role.OPERATE))
    async with asyncio.timeout(scaled(20)):
        while 'data-guardian="G1"' not in (listing := (await web.get("/ui/guardians")).text):
            await asyncio.sleep(0.1)
    assert listing.count('data-guardian="G1"') == 1
    asked = await web.post("/ui/guardians/G1/request", data={"csrf": csrf, "state": "UP"})
    assert asked.status_code == 303 and asked.headers["location"] == "/ui/guardians/G1"
    assert "asked G1 for UP" in (await web.get("/ui/guardians/G1")).text
    assert controller.store is not None
    async with asyncio.timeout(scaled(20)):  # written with the controller's next commit
        while True:
            audit = await controller.store.audit_log(50)
            entries = [e for e in audit if e.action == "dashboard.guardian_request"]
            if entries:
                break
            await asyncio.sleep(0.1)
    assert entries[0].target == "G1" and entries[0].detail == {"state": "UP"}
    missing = await web.get("/ui/guardians/NOPE")
    assert missing.status_code == 404
