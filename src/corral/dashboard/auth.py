"""Dashboard sign-in: opaque sessions kept in the store, CSRF tokens and the role gate.

A session is a random 256-bit id in an ``HttpOnly; SameSite=Strict`` cookie. The store keeps
only its SHA-256 (table ``dashboard_sessions``), with who signed in, their role, the id of the
API token they signed in with (never the token) and when it expires: a session survives a
controller's restart and a takeover, and a standby recognises a session made on the leader. A
reader of the table cannot use what it holds: the cookie is the only copy of the id. The CSRF
token is derived from the id (an HMAC keyed with it), so it is not stored either.

Opening, ending and purging sessions are writes: they go through the store's one writer, which
refuses them on a standby (:class:`~corral.errors.NotLeader`). Each controller caches the
sessions it has read for ``ttl`` seconds; ending one drops it from that controller's cache at
once (another controller sees it gone within ``ttl``). Every request re-checks the credential
the session was opened with (cached for two seconds, like API tokens): a revoked token or a
removed user loses the dashboard within seconds. State-changing forms carry the session's CSRF
token, compared with :func:`hmac.compare_digest`; a cross-site ``Origin`` is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from fastapi import Request

from corral.dashboard.users import get_user
from corral.errors import (
    AuthenticationFailed,
    CorralError,
    Forbidden,
    NoKey,
    StoreError,
    UsageError,
)
from corral.records import SessionRow
from corral.tokens import Role, TokenChecker

if TYPE_CHECKING:
    from corral.store import Store

__all__ = ["COOKIE", "LOGIN_COOKIE", "Gate", "Session", "read_form", "session_hash"]

COOKIE = "corral_session"
LOGIN_COOKIE = "corral_login"
MAX_FORM = 1 << 20
_CACHED = 10_000  # sessions (and standby sign-outs) remembered at most per controller

log = logging.getLogger("corral.dashboard")


def session_hash(sid: str) -> str:
    """What the store keeps of session id ``sid``: its SHA-256, hex."""
    return hashlib.sha256(sid.encode()).hexdigest()


def _csrf(sid: str) -> str:
    # Keyed with the id: it can be derived only by whoever holds the cookie, not from the hash.
    return hmac.new(sid.encode(), b"corral dashboard csrf", hashlib.sha256).hexdigest()


@dataclass
class Session:
    """One signed-in browser.

    Attributes:
        id: the cookie's value (known to this controller from the request; never stored).
        user: who (a user name, or ``token:<id>:<name>`` for a token sign-in).
        role: what they may do (re-checked on every request).
        csrf: the token every state-changing form must carry.
        token: the id of the API token signed in with (re-checked on every request), if any.
        created: epoch seconds of the sign-in.
        expires: epoch seconds after which the session is refused.
        checked: monotonic time the credential was last re-checked.
        loaded: monotonic time the session was last read from the store.
    """

    id: str
    user: str
    role: Role
    csrf: str
    token: str | None = None
    created: float = 0.0
    expires: float = math.inf
    checked: float = -math.inf
    loaded: float = -math.inf

    @classmethod
    def of(cls, sid: str, row: SessionRow) -> Session:
        """The session of cookie ``sid`` as stored in ``row``."""
        return cls(
            id=sid,
            user=row.user_name,
            role=Role(row.role),
            csrf=_csrf(sid),
            token=row.token or None,
            created=row.created_at,
            expires=row.expires_at,
        )


class Gate:
    """Sessions of the dashboard and the checks every dashboard request passes.

    Args:
        store: where users and sessions are kept.
        checker: the API's token checker (the same tokens, roles and revocation).
        max_age: seconds a session lives at most.
        recheck: seconds between re-checks of a session's token or user.
        ttl: seconds a session read from the store is trusted before it is read again.
    """

    def __init__(
        self,
        store: Store,
        checker: TokenChecker,
        max_age: float = 12 * 3600,
        recheck: float = 2.0,
        ttl: float = 2.0,
    ) -> None:
        self.store = store
        self.checker = checker
        self.max_age = max_age
        self.recheck = recheck
        self.ttl = ttl
        #: the wall clock sessions are created and expire by (tests replace it)
        self.clock: Callable[[], float] = time.time
        #: sessions read from the store recently, by the hash of their id
        self.sessions: dict[str, Session] = {}
        #: sessions ended here whose end the store did not take (a standby): hash -> expiry
        self._ended: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<Gate cached={len(self.sessions)}>"

    async def open(self, user: str, role: Role, token: str | None = None) -> Session:
        """A new session, stored (expired sessions are purged in the same transaction).

        Args:
            user: who signed in.
            role: their role.
            token: the id of the API token they signed in with (never the token itself).

        Raises:
            NotLeader: this controller is a standby: sign in on the leader (``leader``).
            StoreError: the session could not be stored.
        """
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        row = SessionRow(
            hash=session_hash(sid),
            user_name=user,
            role=role.value,
            token=token or "",
            created_at=now,
            expires_at=now + self.max_age,
        )
        await self.store.auth.add_session(row, purge_before=now)
        session = Session.of(sid, row)
        session.checked = session.loaded = time.monotonic()
        self._cache(row.hash, session)
        return session

    async def close(self, sid: str | None) -> None:
        """End the session ``sid`` (no error if there is none), on this controller at once.

        Raises:
            NotLeader: a standby cannot delete it from the store: it is refused here for the
                rest of its life, and elsewhere once it expires or is ended on the leader.
            StoreError: the store failed (it is refused here all the same).
        """
        if not sid:
            return
        key = session_hash(sid)
        ended = self.sessions.pop(key, None)
        try:
            await self.store.auth.remove_session(key)
        except CorralError:
            if len(self._ended) >= _CACHED:
                now = self.clock()
                self._ended = {k: t for k, t in self._ended.items() if t > now}
            self._ended[key] = ended.expires if ended else self.clock() + self.max_age
            raise

    async def _drop(self, key: str) -> None:
        """Forget an expired or no longer valid session; delete it if this controller may."""
        self.sessions.pop(key, None)
        try:
            await self.store.auth.remove_session(key)
        except CorralError as exc:  # a standby: the leader purges it
            log.debug("dashboard session not deleted: %s", exc)

    def _cache(self, key: str, session: Session) -> None:
        if len(self.sessions) >= _CACHED:
            self.sessions.clear()
        self.sessions[key] = session

    async def session(self, request: Request) -> Session | None:
        """The request's live session, re-checking its credential when due.

        Raises:
            StoreError: the store could not be read.
        """
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        # Looked up by the hash of the random id: there is no secret to compare byte by byte.
        key = session_hash(sid)
        if key in self._ended:
            return None
        now = time.monotonic()
        session = self.sessions.get(key)
        due = session is None or now - session.checked > self.recheck
        # A re-check reads the session again too: a user removed and added again under the
        # same name must not find their old session still cached here.
        if session is None or due or now - session.loaded > self.ttl:
            row = await self.store.auth.session(key)
            if row is None:
                self.sessions.pop(key, None)
                return None
            if session is None:
                session = Session.of(sid, row)
                self._cache(key, session)
            session.loaded = now
        if self.clock() >= session.expires:
            await self._drop(key)
            return None
        if due:
            try:
                await self._recheck(session)
            except StoreError:
                raise
            except CorralError:
                await self._drop(key)
                return None
            session.checked = now
        return session

    async def _recheck(self, session: Session) -> None:
        if session.token is not None:
            token = await self.checker.check_id(session.token, Role.READ)
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
