"""Text at the edges: names with control characters are refused, node text is escaped.

Every edge that takes a name from outside (the HTTP API, the bus requests the controller
receives, the CLI through them) calls :func:`check_name` and its friends, so a NUL or a
newline in a node name, label, interface, attribute key, task key, command kind or target,
or argument key is refused with a message naming the field, before anything is stored.
Free text (a shell command, a task's error or traceback, a command's output) may hold
newlines and tabs; it is not checked here. What the store cannot hold (PostgreSQL refuses
NUL in text) is written through :func:`escape` instead (docs/operations.md, "Poison-proof
writes").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from corral.errors import UsageError

__all__ = ["NUL_ESCAPE", "check_keys", "check_name", "check_names", "escape", "has_nul"]

#: What a NUL becomes in text the store cannot hold as is: visible, and never a NUL again.
NUL_ESCAPE = "\\x00"

# C0 controls (NUL, tab, newline...), DEL and the C1 controls: never part of a name.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_name(value: str, field: str) -> str:
    """Refuse a name that holds a control character.

    Args:
        value: The name as received.
        field: What it is, for the message (``"label"``, ``"task key"``...).

    Returns:
        ``value`` unchanged.

    Raises:
        UsageError: ``value`` holds NUL, a newline, a tab or another control character.
    """
    found = _CONTROL.search(value)
    if found is not None:
        raise UsageError(
            f"{field} {value!r} holds the control character {found.group()!r} at position "
            f"{found.start()}: names may not contain NUL, newlines, tabs or other control "
            "characters; remove it and send again"
        )
    return value


def check_names(values: Iterable[str], field: str) -> None:
    """:func:`check_name` on each of ``values``.

    Args:
        values: The names.
        field: What each is, for the message.

    Raises:
        UsageError: One of them holds a control character.
    """
    for value in values:
        check_name(value, field)


def check_keys(mapping: Mapping[str, Any], field: str) -> None:
    """:func:`check_name` on each key of ``mapping`` (argument names, attribute names).

    Args:
        mapping: The mapping whose keys are names.
        field: What each key is, for the message (``"argument name"``).

    Raises:
        UsageError: A key holds a control character.
    """
    for key in mapping:
        if isinstance(key, str):
            check_name(key, field)


def has_nul(value: Any) -> bool:
    """Whether ``value`` (a str, or JSON-like data of dicts and lists) holds a NUL anywhere.

    Args:
        value: Any value.

    Returns:
        ``True`` if a string in it, key or value, contains ``"\\x00"``.
    """
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


def escape(value: Any) -> Any:
    """``value`` with every NUL in its strings (keys and values, nested) made visible.

    A NUL becomes the four characters of :data:`NUL_ESCAPE`; bytes and other values are
    kept as they are. A backslash is not itself escaped: the result reads well, but a
    stored ``\\x00`` may have been a NUL or those four characters.

    Args:
        value: A str, or JSON-like data of dicts, lists and tuples.

    Returns:
        The escaped copy (``value`` itself when it holds no NUL).
    """
    if isinstance(value, str):
        return value.replace("\x00", NUL_ESCAPE) if "\x00" in value else value
    if isinstance(value, Mapping):
        return {escape(k): escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape(v) for v in value]
    if isinstance(value, tuple):
        return tuple(escape(v) for v in value)
    return value
