"""Dashboard users: passwords hashed with scrypt, checked in constant time.

``corral user add NAME --role ROLE`` stores a name, a role (the API's roles) and
``scrypt$<n>$<r>$<p>$<salt>$<key>``. scrypt is deliberately slow and memory-hard (16 MiB per
check with these parameters), so a stolen table is expensive to brute-force; the check runs
in a thread so the controller's event loop keeps serving while it hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from typing import TYPE_CHECKING

import msgspec

from corral.errors import UsageError
from corral.records import UserRow
from corral.tokens import Role

if TYPE_CHECKING:
    from corral.records import AuditEntry
    from corral.store import Store

__all__ = [
    "User",
    "add_user",
    "check_password",
    "get_user",
    "hash_password",
    "list_users",
    "remove_user",
    "verify_password",
]

_N, _R, _P = 2**14, 8, 1
MIN_PASSWORD = 8


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A dashboard user (without the password hash)."""

    name: str
    role: str
    created_at: float


def hash_password(password: str) -> str:
    """The stored form of ``password``: scrypt with a fresh 16-byte salt."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${key.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (compared with :func:`hmac.compare_digest`)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(key) // 2,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got.hex(), key)


def _check_name(name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise UsageError(f"bad user name {name!r}: use 1 to 64 letters, digits and - _ . @")


async def add_user(
    store: Store, name: str, role: Role | str, password: str, audit: AuditEntry | None = None
) -> User:
    """Add user ``name`` with ``role`` and ``password`` (hashed before it is stored).

    ``audit`` (its target and detail filled in here) is written in the same transaction.

    Raises:
        UsageError: a bad name, role or short password, or the user exists already.
        StoreError: it could not be stored.
    """
    _check_name(name)
    try:
        role = Role(role)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise UsageError(f"unknown role {role!r}: use one of {roles}") from None
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    hashed = await asyncio.to_thread(hash_password, password)
    user = User(name=name, role=role.value, created_at=time.time())
    if audit is not None:
        audit = msgspec.structs.replace(audit, target=name, detail={"role": user.role})
    row = UserRow(name=name, role=user.role, hash=hashed, created_at=user.created_at)
    if not await store.auth.add_user(row, audit):
        raise UsageError(
            f"user {name!r} exists already: `corral user remove {name}` first to replace it"
        )
    return user


async def _row(store: Store, name: str) -> tuple[User, str] | None:
    row = await store.auth.user(name)
    if row is None:
        return None
    return User(name=row.name, role=row.role, created_at=row.created_at), row.hash


async def get_user(store: Store, name: str) -> User | None:
    """User ``name``, or None.

    Raises:
        StoreError: the query failed.
    """
    found = await _row(store, name)
    return found[0] if found else None


async def check_password(store: Store, name: str, password: str) -> User | None:
    """The user if ``password`` is theirs, else None (also for unknown names, as slowly).

    Raises:
        StoreError: the query failed.
    """
    found = await _row(store, name)
    # Hash even for an unknown name, so timing does not tell which names exist.
    stored = found[1] if found else f"scrypt${_N}${_R}${_P}${'00' * 16}${'00' * 32}"
    ok = await asyncio.to_thread(verify_password, password, stored)
    return found[0] if found and ok else None


async def list_users(store: Store) -> list[User]:
    """Every user, by name.

    Raises:
        StoreError: the query failed.
    """
    return [
        User(name=row.name, role=row.role, created_at=row.created_at)
        for row in await store.auth.users()
    ]


async def remove_user(store: Store, name: str, audit: AuditEntry | None = None) -> bool:
    """Remove user ``name``; False if there was none.

    ``audit`` is written in the same transaction, if a user was removed.

    Raises:
        StoreError: the statement failed.
    """
    if audit is not None:
        audit = msgspec.structs.replace(audit, target=name)
    return await store.auth.remove_user(name, audit)
