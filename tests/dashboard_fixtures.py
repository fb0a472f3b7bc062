"""Helpers shared by the dashboard tests: signing in over plain HTTP, the first event of a live
stream (the ``web`` client fixture is in conftest.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from corral.dashboard.auth import COOKIE


async def first_event(web: httpx.AsyncClient, path: str) -> Any:
    """The first ``data:`` event of the live stream at ``path``."""
    async with web.stream("GET", path) as events:
        assert events.status_code == 200
        async for line in events.aiter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])
    raise AssertionError("the stream ended without data")


def csrf_of(html: str) -> str:
    """The CSRF token a page carries (its ``<meta name="csrf">``)."""
    found = re.search(r'<meta name="csrf" content="([^"]*)"', html)
    assert found is not None, "the page has no CSRF meta tag"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, **fields: str) -> str:
    """Sign ``client`` in (``token=...`` or ``name=..., password=...``); its CSRF token."""
    page = await client.get("/ui/login")
    assert page.status_code == 200
    nonce = re.search(r'name="nonce" value="([^"]*)"', page.text)
    assert nonce is not None
    reply = await client.post(
        "/ui/login", data={"nonce": nonce.group(1), "next": "/ui/fleet", **fields}
    )
    assert reply.status_code == 303, reply.text
    assert COOKIE in client.cookies
    fleet = await client.get("/ui/fleet")
    assert fleet.status_code == 200
    return csrf_of(fleet.text)
