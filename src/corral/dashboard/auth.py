"""Dashboard sign-in: opaque server-side sessions, CSRF tokens and the role gate.

A session is a random 256-bit id in an ``HttpOnly; SameSite=Strict`` cookie; everything else
(who, which role, the CSRF token, the API token it was opened with) stays in the controller's
memory, so a restart signs everyone out. Every request re-checks the credential the session
was opened with (cached for two seconds, like API tokens): a revoked token or a removed user
loses the dashboard within seconds. State-changing forms carry the session's CSRF token,
compared with :func:`hmac.compare_digest`; a cross-site ``Origin`` is refused as well.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from fastapi import Request

from corral.dashboard.users import get_user
from corral.errors import AuthenticationFailed, CorralError, Forbidden, NoKey, UsageError
from corral.tokens import Role, TokenChecker

if TYPE_CHECKING:
    from corral.store import Store

__all__ = ["COOKIE", "LOGIN_COOKIE", "Gate", "Session", "read_form"]

COOKIE = "corral_session"
LOGIN_COOKIE = "corral_login"
MAX_FORM = 1 << 20


@dataclass
class Session:
    """One signed-in browser.

    Attributes:
        id: the cookie's value.
        user: who (a user name, or ``token:<id>`` for a token sign-in).
        role: what they may do.
        csrf: the token every state-changing form must carry.
        token: the API token signed in with (re-checked on every request), if any.
    """

    id: str
    user: str
    role: Role
    csrf: str
    token: str | None = None
    created: float = field(default_factory=time.monotonic)
    checked: float = field(default_factory=time.monotonic)


class Gate:
    """Sessions of one controller and the checks every dashboard request passes.

    Args:
        store: where users are kept.
        checker: the API's token checker (the same tokens, roles and revocation).
        max_age: seconds a session lives at most.
        recheck: seconds between re-checks of a session's token or user.
    """

    def __init__(
        self, store: Store, checker: TokenChecker, max_age: float = 12 * 3600, recheck: float = 2.0
    ) -> None:
        self.store = store
        self.checker = checker
        self.max_age = max_age
        self.recheck = recheck
        self.sessions: dict[str, Session] = {}

    def __repr__(self) -> str:
        return f"<Gate sessions={len(self.sessions)}>"

    async def open(self, user: str, role: Role, token: str | None = None) -> Session:
        """A new session (the old ones of the same browser are dropped by the caller)."""
        self._expire()
        session = Session(
            id=secrets.token_urlsafe(32),
            user=user,
            role=role,
            csrf=secrets.token_urlsafe(32),
            token=token,
        )
        self.sessions[session.id] = session
        return session

    def close(self, sid: str | None) -> None:
        """End the session ``sid`` (no error if there is none)."""
        if sid:
            self.sessions.pop(sid, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.created > self.max_age:
                del self.sessions[sid]

    async def session(self, request: Request) -> Session | None:
        """The request's live session, re-checking its credential when due."""
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        # A dict lookup by the random id: there is no secret to compare byte by byte.
        session = self.sessions.get(sid)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.created > self.max_age:
            self.close(sid)
            return None
        if now - session.checked > self.recheck:
            try:
                await self._recheck(session)
            except CorralError:
                self.close(sid)
                return None
            session.checked = now
        return session

    async def _recheck(self, session: Session) -> None:
        if session.token is not None:
            token = await self.checker.check(session.token, Role.READ)
            session.role = Role(token.role)
            return
        user = await get_user(self.store, session.user)
        if user is None:
            raise AuthenticationFailed(f"user {session.user!r} was removed", 401)
        session.role = Role(user.role)

    async def require(self, request: Request, needed: Role) -> Session:
        """The session, if its role allows ``needed``.

        Raises:
            NoKey: not signed in.
            Forbidden: signed in, but the role is too low.
        """
        session = await self.session(request)
        if session is None:
            raise NoKey("not signed in: sign in at /ui/login", 401)
        if not session.role.allows(needed):
            raise Forbidden(
                f"{session.user} has role {session.role.value!r}; this needs {needed.value!r}",
                403,
            )
        return session

    async def form(self, request: Request, needed: Role) -> tuple[Session, dict[str, str]]:
        """Check a state-changing form: session, role, same origin and CSRF token.

        Returns:
            The session and the form's fields (the last value of each).

        Raises:
            NoKey, Forbidden: as :meth:`require`; Forbidden too for a missing or wrong CSRF
                token or a cross-site origin.
            UsageError: the form is too large or not a form.
        """
        session = await self.require(request, needed)
        check_origin(request)
        fields = await read_form(request)
        if not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
            raise Forbidden("CSRF token missing or wrong: reload the page and try again", 403)
        return session, fields


def check_origin(request: Request) -> None:
    """Refuse a request whose ``Origin`` is another site (browsers send it on POST).

    Raises:
        Forbidden: a cross-site origin.
    """
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != own:
        raise Forbidden(f"cross-site request from {origin} refused", 403)


async def read_form(request: Request) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (last value wins).

    Raises:
        UsageError: the body is larger than 1 MiB or is not such a form.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        raise UsageError(f"expected a form (application/x-www-form-urlencoded), got {kind!r}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise UsageError("the form is larger than 1 MiB")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"unreadable form: {exc}") from None
    return {k: v[-1] for k, v in parsed.items()}
