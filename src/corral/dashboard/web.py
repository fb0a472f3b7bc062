"""Shared plumbing of the dashboard's routes: templates, security headers, errors.

Every page is rendered by Jinja2 with autoescaping on for everything (a node label such as
``<script>`` is shown, never run), and served with a Content-Security-Policy that allows only
the package's own scripts and styles, so even a missed escape could not run inline script.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from corral.core.limits import json_depth_error
from corral.dashboard.auth import Session
from corral.errors import CorralError, Forbidden, NoKey, UsageError, http_error

__all__ = [
    "HEADERS",
    "flash",
    "guarded",
    "json_object",
    "redirect",
    "render",
    "safe_leader",
    "safe_next",
]

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("corral.dashboard", "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(at: float | None) -> str:
    if not at:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _ago(at: float | None) -> str:
    if not at:
        return "-"
    s = max(0.0, time.time() - at)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=repr)


_env.filters.update(when=_when, ago=_ago, tojson_pretty=_json)


def render(name: str, session: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
    """Render template ``name`` (autoescaped) with the session's user, role and CSRF token."""
    flash = session.__dict__.pop("flash", None) if session is not None else None
    html = _env.get_template(name).render(
        session=session,
        user=session.user if session else "",
        role=session.role.value if session else "",
        csrf=session.csrf if session else "",
        flash=flash,
        **context,
    )
    return HTMLResponse(html, status, headers=HEADERS)


def flash(session: Session, message: str, kind: str = "error") -> None:
    """Show ``message`` once, on the session's next page."""
    session.__dict__["flash"] = (kind, message)


def redirect(url: str) -> RedirectResponse:
    """A 303 redirect (after a form: the browser GETs ``url``)."""
    return RedirectResponse(url, 303, headers=HEADERS)


Page = Callable[..., Awaitable[Response]]


def _json_error(exc: CorralError) -> tuple[dict[str, Any], int]:
    status, body = http_error(exc)
    return body, status


def guarded(page: Page, *, json_errors: bool = False) -> Page:
    """Turn ``page``'s auth errors into a sign-in redirect (or 401/403 for SSE and JSON)."""

    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await page(request, *args, **kwargs)
        except NoKey as exc:
            if json_errors or request.method != "GET":
                return JSONResponse(*_json_error(exc), headers=HEADERS)
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            return redirect(f"/ui/login?next={target}")
        except Forbidden as exc:
            if json_errors:
                return JSONResponse(*_json_error(exc), headers=HEADERS)
            return render("error.html", None, 403, title="Forbidden", message=str(exc))
        except CorralError as exc:
            if json_errors:
                return JSONResponse(*_json_error(exc), headers=HEADERS)
            return render("error.html", None, 400, title="Refused", message=str(exc))

    wrapper.__name__ = page.__name__
    wrapper.__doc__ = page.__doc__
    wrapper.__signature__ = inspect.signature(page)  # type: ignore[attr-defined]
    return wrapper


def json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object (empty: ``{}``).

    Raises:
        UsageError: it is not JSON, or not an object.
    """
    text = text.strip()
    if not text:
        return {}
    deep = json_depth_error(text.encode())
    if deep is not None:  # json.loads recurses: thousands of '[' exhaust the stack
        raise UsageError(f"{what}: {deep}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f'{what} is not JSON: {exc}; write an object like {{"n": 3}}') from None
    if not isinstance(value, dict):
        raise UsageError(
            f'{what} must be a JSON object like {{"n": 3}}, not {type(value).__name__}'
        )
    return value


def safe_next(target: str) -> str:
    """Only a path of this dashboard (no open redirect to another site)."""
    target = unquote(target or "")
    if not target.startswith("/ui/") or target.startswith("//") or "\\" in target:
        return "/ui/fleet"
    return target


def safe_leader(address: str) -> str:
    """The leader's API address if it is a plain ``http(s)://`` URL, else "" (it is read from
    the store and shown as a link: never a ``javascript:`` one)."""
    parts = urlsplit(address.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
