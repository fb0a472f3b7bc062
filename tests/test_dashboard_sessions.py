"""Dashboard sessions kept in the store (issue #13): they survive a restart and a takeover, a
standby recognises the leader's, and the store holds nothing a reader could sign in with.

Real controllers (in this process, or ``corral controller`` processes on PostgreSQL for the
leader and the standby, skipped without CORRAL_TEST_POSTGRES_DSN), a real nats-server, real
SQLite and PostgreSQL; nothing is mocked.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from sqlalchemy import create_engine, text

from conftest import eventually, scaled
from corral.app import ControllerService
from corral.broker import EmbeddedBroker
from corral.config import Config
from corral.controller import Controller
from corral.dashboard.auth import COOKIE, Gate, session_hash
from corral.dashboard.users import add_user
from corral.errors import NotLeader
from corral.records import SessionRow
from corral.store import normalize_url, open_store
from corral.store._url import sync_url
from corral.tokens import Role, create_token
from dashboard_fixtures import csrf_of, sign_in
from ha_fixtures import Controllers
from ha_fixtures import controllers as controllers  # noqa: F401 - fixture

PASSWORD = "correct horse battery"


def gate_of(controller: Controller) -> Gate:
    """The in-process controller's dashboard gate."""
    assert controller.api is not None
    return controller.api.dashboard.gate  # type: ignore[attr-defined, no-any-return]


def client(url: str, sid: str | None = None) -> httpx.AsyncClient:
    """A browser-like client of ``url``, presenting session cookie ``sid`` if given."""
    cookies = {COOKIE: sid} if sid else None
    return httpx.AsyncClient(base_url=url, timeout=scaled(20), cookies=cookies)


async def signed_in(url: str, sid: str) -> bool:
    """Whether the dashboard at ``url`` takes cookie ``sid`` (the fleet page, not a redirect)."""
    async with client(url, sid) as web:
        reply = await web.get("/ui/fleet")
    assert reply.status_code in (200, 303), reply.text
    return reply.status_code == 200


def table(url: str) -> list[dict[str, object]]:
    """The ``dashboard_sessions`` table as an attacker with the database would read it."""
    engine = create_engine(sync_url(normalize_url(url)))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM dashboard_sessions")).mappings().all()
            return [dict(row) for row in rows]
    finally:
        engine.dispose()


async def test_a_session_survives_a_restart_on_the_same_sqlite_file(
    config: Config, broker: EmbeddedBroker
) -> None:
    first = ControllerService(config)
    await first.start()
    try:
        assert first.api is not None and first.store is not None
        await add_user(first.store, "ann", Role.OPERATE, PASSWORD)
        async with client(first.api.url) as web:
            csrf = await sign_in(web, name="ann", password=PASSWORD)
            sid = web.cookies[COOKIE]
    finally:
        await first.stop()
    second = ControllerService(config)
    await second.start()
    try:
        assert second.api is not None
        async with client(second.api.url, sid) as web:
            fleet = await web.get("/ui/fleet")
            assert fleet.status_code == 200 and "ann" in fleet.text
            # The same CSRF token: it is derived from the cookie, not kept in memory.
            assert csrf_of(fleet.text) == csrf
            out = await web.post("/ui/logout", data={"csrf": csrf})
            assert out.status_code == 303
    finally:
        await second.stop()
    assert table(config.store_url) == []


async def test_sign_out_revokes_at_once_and_the_old_cookie_is_refused(
    controller: Controller,
) -> None:
    assert controller.api is not None and controller.store is not None
    _, token = await create_token(controller.store, Role.READ, "sessions")
    async with client(controller.api.url) as web:
        csrf = await sign_in(web, token=token)
        sid = web.cookies[COOKIE]
        assert len(await controller.store.auth.sessions()) == 1
        assert (await web.post("/ui/logout", data={"csrf": csrf})).status_code == 303
    # Not "within the cache's seconds": at once, from another browser holding the cookie.
    assert not await signed_in(controller.api.url, sid)
    assert await controller.store.auth.sessions() == []
    assert session_hash(sid) not in gate_of(controller).sessions


async def test_the_store_holds_no_session_id_nor_token_and_its_hash_is_no_cookie(
    controller: Controller,
) -> None:
    assert controller.api is not None and controller.store is not None
    ident_token, token = await create_token(controller.store, Role.OPERATE, "attacked")
    async with client(controller.api.url) as web:
        csrf = await sign_in(web, token=token)
        sid = web.cookies[COOKIE]
    (row,) = table(controller.config.store_url)
    dump = repr(row)
    for secret in (sid, token, token.split("_")[-1], csrf):
        assert secret not in dump
    assert row["hash"] == session_hash(sid) and row["token"] == ident_token.id
    assert row["user_name"] == f"token:{ident_token.id}:attacked" and row["role"] == "operate"
    # The attacker presents what the table holds: refused, and nothing is created.
    assert not await signed_in(controller.api.url, str(row["hash"]))
    assert await signed_in(controller.api.url, sid)
    assert len(table(controller.config.store_url)) == 1


async def test_an_expired_session_is_refused_and_purged(controller: Controller) -> None:
    assert controller.api is not None and controller.store is not None
    gate = gate_of(controller)
    await add_user(controller.store, "bea", Role.READ, PASSWORD)
    async with client(controller.api.url) as web:
        await sign_in(web, name="bea", password=PASSWORD)
        old = web.cookies[COOKIE]
    # Twelve hours and a second later (the gate's wall clock, not a sleep).
    later = time.time() + gate.max_age + 1
    gate.clock = lambda: later
    assert not await signed_in(controller.api.url, old)
    assert await controller.store.auth.sessions() == []
    # An expired session nobody presents again is purged by the next sign-in.
    async with client(controller.api.url) as web:
        await sign_in(web, name="bea", password=PASSWORD)
        stale = web.cookies[COOKIE]
    gate.clock = lambda: later + gate.max_age + 1
    async with client(controller.api.url) as web:
        await sign_in(web, name="bea", password=PASSWORD)
        fresh = web.cookies[COOKIE]
    hashes = [row.hash for row in await controller.store.auth.sessions()]
    assert hashes == [session_hash(fresh)] and session_hash(stale) not in hashes


async def test_a_removed_user_loses_a_stored_session_after_a_restart(
    config: Config, broker: EmbeddedBroker
) -> None:
    """The re-check of the user runs on a session read back from the store, too."""
    first = ControllerService(config)
    await first.start()
    try:
        assert first.api is not None and first.store is not None
        await add_user(first.store, "cid", Role.OPERATE, PASSWORD)
        async with client(first.api.url) as web:
            await sign_in(web, name="cid", password=PASSWORD)
            sid = web.cookies[COOKIE]
        assert await first.store.auth.remove_user("cid")
    finally:
        await first.stop()
    second = ControllerService(config)
    await second.start()
    try:
        assert second.api is not None
        assert not await signed_in(second.api.url, sid)
    finally:
        await second.stop()
    assert table(config.store_url) == []


# --- a leader and a standby on PostgreSQL ---------------------------------------------------


#: A leader and a standby share a PostgreSQL store only (SQLite: one controller per file).
ON_POSTGRES = pytest.mark.parametrize("store_url", ["postgres"], indirect=True)


@pytest.fixture
async def user(store_url: str) -> AsyncIterator[str]:
    """A user in the shared store."""
    async with await open_store(store_url) as store:
        await add_user(store, "dee", Role.OPERATE, PASSWORD)
    yield "dee"


async def answers(url: str) -> bool:
    """Whether the controller at ``url`` serves its API."""
    async with httpx.AsyncClient(timeout=1.0) as http:
        return (await http.get(f"{url}/healthz")).status_code in (200, 503)


@ON_POSTGRES
async def test_a_leader_session_is_taken_by_the_standby_and_survives_a_takeover(
    controllers: Controllers, user: str, store_url: str
) -> None:
    lead = await controllers.leader(scaled(30))
    standby = 1 - lead
    leader_url, standby_url = controllers.urls[lead], controllers.urls[standby]
    await eventually(lambda: answers(standby_url), scaled(30), ignoring=(httpx.HTTPError,))
    async with client(leader_url) as web:
        await sign_in(web, name=user, password=PASSWORD)
        sid = web.cookies[COOKIE]

    # The standby takes the leader's session for read pages.
    async with client(standby_url, sid) as web:
        fleet = await web.get("/ui/fleet")
        assert fleet.status_code == 200 and user in fleet.text

    # Signing in on the standby cannot write: the page says so and links the leader.
    async with client(standby_url) as web:
        page = await web.get("/ui/login")
        assert 'id="standby"' in page.text and f'href="{leader_url}/ui/login"' in page.text
        nonce = re.search(r'name="nonce" value="([^"]*)"', page.text)
        assert nonce is not None
        reply = await web.post(
            "/ui/login", data={"nonce": nonce.group(1), "name": user, "password": PASSWORD}
        )
        assert reply.status_code == 503 and leader_url in reply.text
        assert COOKIE not in web.cookies
    assert len(table(store_url)) == 1

    # The leader dies: the new leader keeps the session, and signing out there ends it.
    controllers.kill(lead)
    assert await controllers.leader(scaled(30), other_than=lead) == standby
    assert await signed_in(standby_url, sid)
    async with client(standby_url, sid) as web:
        csrf = csrf_of((await web.get("/ui/fleet")).text)
        assert (await web.post("/ui/logout", data={"csrf": csrf})).status_code == 303
    assert not await signed_in(standby_url, sid)
    assert table(store_url) == []


@ON_POSTGRES
async def test_a_sign_out_on_the_leader_reaches_the_standby(
    controllers: Controllers, user: str, store_url: str
) -> None:
    lead = await controllers.leader(scaled(30))
    standby_url = controllers.urls[1 - lead]
    await eventually(lambda: answers(standby_url), scaled(30), ignoring=(httpx.HTTPError,))
    async with client(controllers.urls[lead]) as web:
        csrf = await sign_in(web, name=user, password=PASSWORD)
        sid = web.cookies[COOKIE]
        assert await signed_in(standby_url, sid)  # now cached on the standby
        assert (await web.post("/ui/logout", data={"csrf": csrf})).status_code == 303
    assert table(store_url) == []
    # The standby reads the store again within its cache's two seconds.

    async def refused() -> bool:
        return not await signed_in(standby_url, sid)

    await eventually(refused, scaled(10))


@ON_POSTGRES
async def test_a_sign_out_on_the_standby_ends_the_session_there_at_once(
    controllers: Controllers, user: str
) -> None:
    lead = await controllers.leader(scaled(30))
    standby_url = controllers.urls[1 - lead]
    await eventually(lambda: answers(standby_url), scaled(30), ignoring=(httpx.HTTPError,))
    async with client(controllers.urls[lead]) as web:
        await sign_in(web, name=user, password=PASSWORD)
        sid = web.cookies[COOKIE]
    async with client(standby_url, sid) as web:
        csrf = csrf_of((await web.get("/ui/fleet")).text)
        out = await web.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        dropped = [h for h in out.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}=")]
        assert dropped and "Max-Age=0" in dropped[0]  # the browser forgets it
    assert not await signed_in(standby_url, sid)


async def test_the_store_refuses_a_standby_s_session_writes(store_url: str) -> None:
    """A standby's store is fenced: opening or ending a session raises NotLeader."""
    async with await open_store(store_url) as store:
        now = time.time()
        row = SessionRow(
            hash=session_hash("s1"),
            user_name="eve",
            role="read",
            token="",
            created_at=now - 10,
            expires_at=now - 1,
        )
        await store.auth.add_session(row)
        assert await store.auth.session(row.hash) == row
        store.set_fence("standby", -1, None)
        fresh = msgspec.structs.replace(row, hash=session_hash("s2"), expires_at=now + 60)
        with pytest.raises(NotLeader):
            await store.auth.add_session(fresh, purge_before=now)
        with pytest.raises(NotLeader):
            await store.auth.remove_session(row.hash)
        assert await store.auth.sessions() == [row]  # nothing written, nothing purged
    async with await open_store(store_url) as store:
        await store.auth.add_session(fresh, purge_before=now)
        assert await store.auth.sessions() == [fresh]  # the expired one purged with it
        assert await store.auth.remove_session(fresh.hash)
        assert not await store.auth.remove_session(fresh.hash)


async def test_removing_a_user_or_revoking_a_token_deletes_their_sessions(
    controller: Controller,
) -> None:
    """A user added again under a removed name does not inherit the old sessions."""
    assert controller.api is not None and controller.store is not None
    await add_user(controller.store, "fay", Role.READ, PASSWORD)
    ident, token = await create_token(controller.store, Role.READ, "gone")
    async with client(controller.api.url) as web:
        await sign_in(web, name="fay", password=PASSWORD)
        by_user = web.cookies[COOKIE]
    async with client(controller.api.url) as web:
        await sign_in(web, token=token)
        by_token = web.cookies[COOKIE]
    assert len(await controller.store.auth.sessions()) == 2
    assert await controller.store.auth.remove_user("fay")
    assert await controller.store.auth.revoke_token(ident.id, time.time())
    assert await controller.store.auth.sessions() == []
    await add_user(controller.store, "fay", Role.ADMIN, PASSWORD)

    async def both_refused() -> bool:  # at once in the store, within the cache's seconds here
        return not await signed_in(controller.api.url, by_user) and not await signed_in(
            controller.api.url, by_token
        )

    await eventually(both_refused, scaled(10))
    assert await controller.store.auth.sessions() == []
