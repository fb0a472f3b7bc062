"""Store URLs: what a user may write, what SQLAlchemy gets, and what a log may show."""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from corral.errors import StoreError

__all__ = ["mask_password", "normalize_url", "sync_url"]

ACCEPTED = (
    "a SQLite file path, sqlite:///PATH, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB "
    "(postgres:// also works), or a driver-qualified sqlite+DRIVER:// or "
    "postgresql+DRIVER:// URL"
)

# The async driver used when a URL names none, and the sync one used for migrations.
_ASYNC_DRIVER = {"sqlite": "aiosqlite", "postgresql": "psycopg"}
_SYNC_DRIVER = {"sqlite": "pysqlite", "postgresql": "psycopg"}

_PASSWORD = re.compile(r"(://[^:/@]*:)[^/]*@")


def mask_password(url: str) -> str:
    """Replace the password in ``url`` (if any) with ``***``.

    Args:
        url: A URL, well-formed or not.

    Returns:
        The URL, safe to print or log.
    """
    return _PASSWORD.sub(r"\1***@", url)


def normalize_url(url_or_path: str) -> str:
    """Turn what a user wrote into an async SQLAlchemy URL.

    A plain filesystem path or ``sqlite:///…`` becomes ``sqlite+aiosqlite:///…``;
    ``postgresql://…`` or ``postgres://…`` becomes ``postgresql+psycopg://…``; a URL that
    already names a driver (``sqlite+aiosqlite://``, ``postgresql+psycopg://``) is kept.

    Args:
        url_or_path: A filesystem path (``~`` is expanded) or a database URL.

    Returns:
        The URL to hand to ``create_async_engine``.

    Raises:
        StoreError: It is empty, names a database other than SQLite or PostgreSQL, or does
            not parse as a URL.
    """
    text = url_or_path.strip()
    if not text:
        raise StoreError(f"the store URL is empty: give {ACCEPTED}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        if "\x00" in text:
            raise StoreError(f"the store path {text!r} holds a NUL character: give {ACCEPTED}")
        return f"sqlite+aiosqlite:///{os.path.expanduser(text)}"
    base, _, driver = scheme.lower().partition("+")
    base = "postgresql" if base == "postgres" else base
    if base not in _ASYNC_DRIVER:
        raise StoreError(
            f"unsupported store URL {mask_password(text)!r}: corral stores its state in "
            f"SQLite or PostgreSQL only; give {ACCEPTED}"
        )
    url = f"{base}+{driver or _ASYNC_DRIVER[base]}://{rest}"
    try:
        make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(
            f"malformed store URL {mask_password(text)!r}: {exc}. Give {ACCEPTED}"
        ) from None
    return url


def sync_url(url: str) -> URL:
    """The same database as ``url`` through the sync driver migrations run on.

    Args:
        url: A URL returned by :func:`normalize_url`.

    Returns:
        ``url`` with its driver replaced by ``pysqlite`` or ``psycopg``.
    """
    parsed = make_url(url)
    return parsed.set(
        drivername=f"{parsed.get_backend_name()}+{_SYNC_DRIVER[parsed.get_backend_name()]}"
    )
