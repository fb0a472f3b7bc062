"""Helpers shared by the dashboard tests: signing in over plain HTTP."""

from __future__ import annotations

import re

import httpx

from corral.dashboard.auth import COOKIE


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
