"""The dashboard's sign-in and sign-out pages, with the throttle on wrong passwords.

A sign-in stores a session (:class:`~corral.dashboard.auth.Gate`), which only the leading
controller may do: a standby says so on its sign-in page and links the leader, whose sessions
it takes for its read pages. Signing out on a standby ends the session there and in the
browser; the store keeps it until it expires (the leader's sign-out deletes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response

from corral.dashboard.auth import COOKIE, LOGIN_COOKIE, Gate, check_origin, read_form
from corral.dashboard.lockout import Lockout, SignInThrottle, Verdict
from corral.dashboard.users import check_password
from corral.dashboard.web import redirect, render, safe_leader, safe_next
from corral.errors import CorralError, NotLeader
from corral.records import AuditEntry
from corral.tokens import Role

if TYPE_CHECKING:
    from corral.controller.parts import ControllerParts

__all__ = ["SignInPages"]

log = logging.getLogger("corral.dashboard")


class SignInPages:
    """The dashboard's sign-in form, sign-in and sign-out.

    Args:
        ctl: the started controller's services (its leadership, its audit log).
        gate: the sessions.
        audit: records a dashboard action (``audit(session, action, target, **detail)``).
    """

    def __init__(self, *, ctl: ControllerParts, gate: Gate, audit: Callable[..., None]) -> None:
        self.ctl = ctl
        self.gate = gate
        self.audit = audit
        #: scrypt takes 16 MiB and tens of milliseconds: at most two checks at a time, so a
        #: flood of sign-ins can neither exhaust memory nor starve the controller's loop
        self.password_checks = asyncio.Semaphore(2)
        #: slows down, then locks out, repeated wrong passwords per name and per address
        self.throttle = SignInThrottle()
        #: the throttle's clock (monotonic seconds); tests replace it
        self.clock: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return "<SignInPages>"

    async def login_page(self, request: Request) -> Response:
        """The sign-in form (with a one-time login CSRF cookie)."""
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = render(
            "login.html",
            None,
            next=safe_next(request.query_params.get("next", "")),
            nonce=nonce,
            error="",
            **self._standby(),
        )
        response.set_cookie(
            LOGIN_COOKIE, nonce, httponly=True, samesite="strict", path="/ui", max_age=3600
        )
        return response

    async def login(self, request: Request) -> Response:
        """Sign in with an API token, or a user name and password."""
        check_origin(request)
        fields = await read_form(request)
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        target = safe_next(fields.get("next", ""))
        if not nonce or not hmac.compare_digest(fields.get("nonce", "").encode(), nonce.encode()):
            return render(
                "login.html",
                None,
                403,
                next=target,
                nonce=nonce,
                error="the sign-in form expired: reload the page and try again",
            )
        try:
            if self.ctl.leadership is not None:
                self.ctl.leadership.check_write("sign-ins")
        except CorralError as exc:  # a standby, or a leader still taking over
            return self._cannot_sign_in(exc, target, nonce)
        who = await self._credentials(request, fields, target, nonce)
        if isinstance(who, Response):
            return who
        try:
            session = await self.gate.open(*who)
        except NotLeader as exc:  # deposed meanwhile: the store's fence refused it
            return self._cannot_sign_in(exc, target, nonce)
        with contextlib.suppress(CorralError):  # the browser's previous session, if any
            await self.gate.close(request.cookies.get(COOKIE))
        self.audit(session, "signin", session.user, role=session.role.value)
        response = redirect(target)
        secure = request.url.scheme == "https"
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            samesite="strict",
            path="/ui",
            secure=secure,
            max_age=int(self.gate.max_age),
        )
        response.delete_cookie(LOGIN_COOKIE, path="/ui")
        return response

    async def _credentials(
        self, request: Request, fields: dict[str, str], target: str, nonce: str
    ) -> tuple[str, Role, str | None] | Response:
        """Who the form's token or name and password stand for (their name, role and token
        id), or the page refusing them."""
        token_text = fields.get("token", "").strip()
        if token_text:
            try:
                token = await self.gate.checker.check(token_text, Role.READ)
            except CorralError as exc:
                return render("login.html", None, 401, next=target, nonce=nonce, error=str(exc))
            return f"token:{token.id}:{token.name}", Role(token.role), token.id
        name = fields.get("name", "").strip()
        address = request.client.host if request.client else ""
        async with self.password_checks:  # checked in turn: a flood is counted in full
            verdict = self.throttle.check(name, address, self.clock())
            if not verdict.allowed:
                return self._slow_down(verdict, target, nonce)
            user = await check_password(self.gate.store, name, fields.get("password", ""))
            if user is not None:
                self.throttle.succeeded(name, self.clock())
            else:
                for lock in self.throttle.failed(name, address, self.clock()):
                    self._locked(lock, address)
        if user is None:
            error = "unknown user or wrong password"
            return render("login.html", None, 401, next=target, nonce=nonce, error=error)
        return user.name, Role(user.role), None

    def _standby(self) -> dict[str, Any]:
        """The login page's notice on a standby: that it is one, and the leader's address."""
        lead = self.ctl.leadership
        if lead is None or lead.leading:
            return {"standby": "", "leader": ""}
        return {"standby": "yes", "leader": safe_leader(lead.leader)}

    def _cannot_sign_in(self, exc: CorralError, target: str, nonce: str) -> Response:
        """503: this controller cannot store a session now (a standby, or taking over)."""
        if isinstance(exc, NotLeader):
            leader = safe_leader(exc.leader)
            error = "this controller is a standby and cannot sign you in: sign in on the leader"
            error += f" ({leader})" if leader else " (none leads right now: try again shortly)"
        else:
            error = str(exc)
        response = render(
            "login.html", None, 503, next=target, nonce=nonce, error=error, **self._standby()
        )
        response.headers["Retry-After"] = "1"
        return response

    def _slow_down(self, verdict: Verdict, target: str, nonce: str) -> Response:
        """429 with ``Retry-After``: the password was not even looked at."""
        response = render("login.html", None, 429, next=target, nonce=nonce, error=verdict.reason)
        response.headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after)))
        return response

    def _locked(self, lock: Lockout, address: str) -> None:
        """Log and audit a name or address that was just locked out."""
        seconds = round(lock.until - self.clock())
        log.warning(
            "dashboard sign-in locked",
            extra={"kind": lock.kind, "key": lock.key, "failures": lock.failures, "for": seconds},
        )
        self.ctl.audit(
            AuditEntry(
                at=self.ctl.clock(),
                actor=f"address:{address}",
                action="dashboard.lockout",
                target=f"{lock.kind}:{lock.key}",
                detail={"failures": lock.failures, "seconds": seconds},
            )
        )

    async def logout(self, request: Request) -> Response:
        """Sign out (a form with the CSRF token)."""
        session, _ = await self.gate.form(request, Role.READ)
        try:
            await self.gate.close(session.id)
        except CorralError as exc:  # ended here and in this browser; the store keeps it
            log.warning("dashboard sign-out not stored (it ends with its expiry): %s", exc)
        response = redirect("/ui/login")
        response.delete_cookie(COOKIE, path="/ui")
        return response
