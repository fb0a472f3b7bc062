"""Wrong dashboard passwords are slowed down, then locked out, through the real dashboard
over HTTP (issue #12, item 8); the decision logic itself is in tests/test_lockout.py."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from conftest import scaled
from corral.controller import Controller
from corral.dashboard.auth import COOKIE
from corral.dashboard.users import add_user
from corral.tokens import Role


async def _nonce(web: httpx.AsyncClient) -> str:
    page = await web.get("/ui/login")
    return page.text.split('name="nonce" value="')[1].split('"')[0]


async def test_a_burst_of_wrong_passwords_is_slowed_with_429(
    controller: Controller, web: httpx.AsyncClient
) -> None:
    assert controller.store is not None
    await add_user(controller.store, "alice", Role.OPERATE, "s3cret-password")
    nonce = await _nonce(web)
    replies = [
        await web.post("/ui/login", data={"nonce": nonce, "name": "alice", "password": "nope"})
        for _ in range(12)
    ]
    statuses = [r.status_code for r in replies]
    assert statuses[:5] == [401] * 5  # the first few mistakes cost nothing
    slowed = [r for r in replies if r.status_code == 429]
    assert slowed and set(statuses) <= {401, 429}
    assert int(slowed[0].headers["retry-after"]) >= 1
    assert "too many wrong passwords" in slowed[0].text


async def test_lockout_refuses_the_right_password_is_audited_and_ends(
    controller: Controller, web: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    assert controller.store is not None and controller.api is not None
    dashboard = controller.api.dashboard
    fake = [1000.0]
    dashboard.clock = lambda: fake[0]
    await add_user(controller.store, "bob", Role.READ, "bob-password")
    nonce = await _nonce(web)

    async def attempt(password: str) -> httpx.Response:
        return await web.post(
            "/ui/login", data={"nonce": nonce, "name": "bob", "password": password}
        )

    for _ in range(5):
        assert (await attempt("wrong")).status_code == 401
    slowed = await attempt("bob-password")  # even the right one, during the wait
    assert slowed.status_code == 429 and slowed.headers["retry-after"] == "1"
    assert COOKIE not in web.cookies

    caplog.set_level(logging.WARNING, logger="corral.dashboard")
    wrong = 5
    while wrong < 10:  # each wait sat out on the fake clock, then one more wrong password
        fake[0] += dashboard.throttle.check("bob", "127.0.0.1", fake[0]).retry_after
        assert (await attempt("wrong")).status_code == 401
        wrong += 1
    fake[0] += 60  # past any delay: only the lockout remains
    locked = await attempt("bob-password")
    assert locked.status_code == 429 and "locked" in locked.text
    assert 800 < int(locked.headers["retry-after"]) <= 900
    assert COOKIE not in web.cookies
    assert any(r.getMessage() == "dashboard sign-in locked" for r in caplog.records)
    async with asyncio.timeout(scaled(10)):
        while not any(
            e.action == "dashboard.lockout" and e.target == "name:bob"
            for e in await controller.store.audit_log(50)
        ):
            await asyncio.sleep(0.05)

    fake[0] += 900  # the lockout is over: the right password signs in and resets the count
    assert (await attempt("bob-password")).status_code == 303
    assert COOKIE in web.cookies
    web.cookies.clear()
    nonce = await _nonce(web)
    assert (await attempt("wrong")).status_code == 401
