"""API tokens: roles, creation, hashed storage and constant-time checks.

A token reads ``crl_<id>_<secret>``. The store keeps the id, a name, the role and the SHA-256
of the secret — never the secret, which is printed once by ``corral token create``. Checking
a token looks its id up (cached for a few seconds, so a revocation takes effect within them)
and compares the hashes with :func:`hmac.compare_digest`. The secret has 256 bits of entropy,
so a plain hash is enough: there is nothing to brute-force.

Roles are ordered, each allowing what the ones before it allow::

    read < operate < execute < admin

``read`` lists and looks up; ``operate`` queues and cancels tasks, edits nodes; ``execute``
may also run uploaded code (EXECUTE commands); ``admin`` may do everything.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
import string
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from corral.config import Config
from corral.errors import AuthenticationFailed, Forbidden, NoKey, UsageError
from corral.records import TokenRow
from corral.security import write_secret

if TYPE_CHECKING:  # the store pulls in SQLAlchemy; API clients never need it
    from corral.records import AuditEntry
    from corral.store import Store

__all__ = [
    "Role",
    "Token",
    "TokenChecker",
    "admin_token_path",
    "create_token",
    "ensure_admin_token",
    "list_tokens",
    "load_token",
    "read_token",
    "revoke_token",
    "token_problem",
]

PREFIX = "crl_"


class Role(enum.StrEnum):
    """What a token may do; each role allows everything the lower ones allow."""

    READ = "read"
    OPERATE = "operate"
    EXECUTE = "execute"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the order read < operate < execute < admin."""
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """True if a holder of this role may make a call that needs ``needed``."""
        return self.rank >= needed.rank


class Token(msgspec.Struct, frozen=True, kw_only=True):
    """A stored token (without its secret)."""

    id: str
    name: str
    role: str
    created_at: float
    revoked_at: float | None = None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# What create_token issues: crl_ + 12 hex digits + _ + 43 URL-safe base64 characters.
_ID_LENGTH = 12
_SECRET_LENGTH = 43
_LEGAL = frozenset(string.ascii_letters + string.digits + "-_")
_SHAPE = "a corral API token reads crl_<12 hex digits>_<43-character secret>"


def token_problem(text: str) -> str | None:
    """What is wrong with the text of an API token, before any request is made with it.

    Args:
        text: The token as given (surrounding whitespace already stripped).

    Returns:
        ``None`` if it has the shape of a token ``corral token create`` prints, else what is
        wrong, e.g. ``"illegal character '\\n' at position 30"`` (positions count from 1).
    """
    if not text:
        return "it is empty"
    if not text.startswith(PREFIX):
        return f"it does not start with {PREFIX!r}"
    for position, char in enumerate(text, start=1):
        if char not in _LEGAL:
            return f"illegal character {char!r} at position {position}"
    ident, sep, secret = text[len(PREFIX) :].partition("_")
    if not sep or len(ident) != _ID_LENGTH or any(c not in string.hexdigits for c in ident):
        return f"the id after {PREFIX!r} is not {_ID_LENGTH} hex digits followed by '_'"
    if len(secret) < _SECRET_LENGTH:
        return (
            f"it is too short: {len(text)} characters, a token has "
            f"{len(PREFIX) + _ID_LENGTH + 1 + _SECRET_LENGTH}"
        )
    return None


def _malformed(problem: str, where: str) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"malformed API token{where}: {problem}; {_SHAPE}, as `corral token create` prints it",
        401,
    )


def _parse(text: str) -> tuple[str, str]:
    problem = token_problem(text)
    if problem is not None:
        raise _malformed(problem, "")
    ident, _, secret = text[len(PREFIX) :].partition("_")
    return ident, secret


def load_token(value: str, source: str = "token") -> str:
    """The API token that ``value`` gives: the token itself or the path of a file holding it.

    Surrounding whitespace (the newline of a file, or of ``$(cat file)``) is stripped.

    Args:
        value: A token (``crl_…``), or a file path (``~`` expanded).
        source: Where ``value`` came from, for the message (``"CORRAL_API_TOKEN"``).

    Returns:
        The token text, checked with :func:`token_problem`.

    Raises:
        AuthenticationFailed: The token (or the file's content) is malformed, or ``value``
            is neither a token nor a readable file; the message says what is wrong.
    """
    text = value.strip()
    if not text or text.startswith(PREFIX):
        problem = token_problem(text)
        if problem is not None:
            raise _malformed(problem, f" in {source}")
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        # Echo only what looks like a path: anything else may be a mistyped secret.
        shown = f" {str(path)!r}" if os.sep in text or text.startswith("~") else ""
        raise _malformed(
            f"it is neither a token (it does not start with {PREFIX!r}) nor the path of a file "
            f"that exists{shown}",
            f" in {source}",
        )
    try:
        content = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthenticationFailed(
            f"cannot read the API token file {path} (from {source}): {exc}; check the path "
            "and that it is readable by this user",
            401,
        ) from exc
    problem = token_problem(content)
    if problem is not None:
        raise _malformed(problem, f" in the file {path} (from {source})")
    return content


async def create_token(
    store: Store, role: Role | str, name: str = "", audit: AuditEntry | None = None
) -> tuple[Token, str]:
    """Create a token with ``role``; returns it and its text (shown once, never stored).

    ``audit`` (its target and detail filled in here) is written in the same transaction.

    Raises:
        UsageError: ``role`` is not a role.
        StoreError: it could not be stored.
    """
    try:
        role = Role(role)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise UsageError(f"unknown role {role!r}: use one of {roles}") from None
    ident, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    token = Token(
        id=ident, name=name or f"{role.value}-token", role=role.value, created_at=time.time()
    )
    row = TokenRow(**msgspec.structs.asdict(token), hash=_hash(secret))
    if audit is not None:
        audit = msgspec.structs.replace(
            audit, target=ident, detail={"name": token.name, "role": token.role}
        )
    await store.auth.add_token(row, audit)
    return token, f"{PREFIX}{ident}_{secret}"


def _token(row: TokenRow) -> Token:
    return Token(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def list_tokens(store: Store) -> list[Token]:
    """Every token, oldest first (secrets are not stored, so not shown).

    Raises:
        StoreError: the query failed.
    """
    return [_token(row) for row in await store.auth.tokens()]


async def revoke_token(store: Store, ident: str, audit: AuditEntry | None = None) -> bool:
    """Revoke token ``ident``; False if there is no such live token.

    ``audit`` is written in the same transaction, if a token was revoked.

    Raises:
        StoreError: the statement failed.
    """
    if audit is not None:
        audit = msgspec.structs.replace(audit, target=ident)
    return await store.auth.revoke_token(ident, time.time(), audit)


class TokenChecker:
    """Checks presented tokens against the store, caching lookups for ``ttl`` seconds.

    Args:
        store: The store holding the tokens.
        ttl: Seconds a looked-up token is trusted before it is read again.
    """

    def __init__(self, store: Store, ttl: float = 2.0) -> None:
        self.store = store
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Token | None, str]] = {}

    def __repr__(self) -> str:
        return f"<TokenChecker cached={len(self._cache)}>"

    async def check(self, text: str | None, needed: Role) -> Token:
        """The token ``text`` stands for, if it is live and its role allows ``needed``.

        Raises:
            NoKey: no token was presented.
            AuthenticationFailed: unknown, malformed or revoked token.
            Forbidden: the token's role does not allow ``needed``.
        """
        if not text:
            raise NoKey(
                "no API token: send `Authorization: Bearer <token>`; create one with "
                "`corral token create --role read|operate|execute|admin`",
                401,
            )
        ident, secret = _parse(text)
        token, stored = await self._cached(ident)
        # Compare even for an unknown id, so timing does not tell which ids exist.
        valid = hmac.compare_digest(_hash(secret), stored or _hash("-"))
        if token is None or not valid or token.revoked_at is not None:
            raise AuthenticationFailed("API token refused: unknown or revoked", 401)
        if not Role(token.role).allows(needed):
            raise Forbidden(
                f"token {token.id} has role {token.role!r}; this call needs {needed.value!r}", 403
            )
        return token

    async def check_id(self, ident: str, needed: Role) -> Token:
        """Token ``ident``, if it is live and its role allows ``needed``, without its secret.

        For a credential already proven once (a dashboard session opened with the token keeps
        only its id): the same cache, so a revocation takes effect within ``ttl`` seconds.

        Raises:
            AuthenticationFailed: unknown or revoked token.
            Forbidden: the token's role does not allow ``needed``.
        """
        token, _ = await self._cached(ident)
        if token is None or token.revoked_at is not None:
            raise AuthenticationFailed(f"API token {ident} was revoked or removed", 401)
        if not Role(token.role).allows(needed):
            raise Forbidden(
                f"token {token.id} has role {token.role!r}; this call needs {needed.value!r}", 403
            )
        return token

    async def _cached(self, ident: str) -> tuple[Token | None, str]:
        now = time.monotonic()
        cached = self._cache.get(ident)
        if cached is None or now - cached[0] > self.ttl:
            cached = (now, *await self._load(ident))
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[ident] = cached
        return cached[1], cached[2]

    async def _load(self, ident: str) -> tuple[Token | None, str]:
        row = await self.store.auth.token(ident)
        return (None, "") if row is None else (_token(row), row.hash)


def admin_token_path(config: Config) -> Path:
    """Where ``corral up`` keeps the admin token for local CLI use."""
    return config.data_path / "auth" / "api-admin.token"


async def ensure_admin_token(config: Config, store: Store, audit: AuditEntry | None = None) -> Path:
    """Create the local admin token file (mode 0600) unless it exists.

    ``audit`` is written with the token, if one is created.

    Raises:
        StoreError: the token could not be stored.
    """
    path = admin_token_path(config)
    if not path.exists():
        _, text = await create_token(store, Role.ADMIN, "local-admin", audit)
        write_secret(path, text + "\n")
    return path


def read_token(config: Config, explicit: str | None = None) -> str | None:
    """The token the CLI and client use: ``explicit``, ``api_token`` (a token or a file), or
    the local admin token file; ``None`` if there is none.

    Args:
        config: The configuration (its ``api_token`` and data directory).
        explicit: A token or token file given on the command line or in code.

    Returns:
        The checked token text, or ``None`` if no source gives one.

    Raises:
        AuthenticationFailed: A token (or a token file's content) is malformed or a named
            file does not exist; the message says what is wrong.
    """
    if explicit:
        return load_token(explicit, "the token given")
    if config.api_token:
        return load_token(config.api_token, "api_token (CORRAL_API_TOKEN)")
    path = admin_token_path(config)
    return load_token(str(path), str(path)) if path.exists() else None
