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

from corral.errors import InvalidText

__all__ = [
    "NUL_ESCAPE",
    "check_command_text",
    "check_join_text",
    "check_keys",
    "check_name",
    "check_names",
    "escape",
    "has_nul",
]

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
        InvalidText: ``value`` holds NUL, a newline, a tab or another control character.
    """
    found = _CONTROL.search(value)
    if found is not None:
        raise InvalidText(
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
        InvalidText: One of them holds a control character.
    """
    for value in values:
        check_name(value, field)


def check_keys(mapping: Mapping[str, Any], field: str) -> None:
    """:func:`check_name` on each key of ``mapping`` (argument names, attribute names).

    Args:
        mapping: The mapping whose keys are names.
        field: What each key is, for the message (``"argument name"``).

    Raises:
        InvalidText: A key holds a control character.
    """
    for key in mapping:
        if isinstance(key, str):
            check_name(key, field)


def check_command_text(
    targets: Iterable[str], kind: str, name: str, args: Mapping[str, Any]
) -> None:
    """The names in a command: its targets, kind, name and argument names.

    Argument values are free (a shell command may span lines); a ``name`` may be empty.

    Args:
        targets: The targets as given.
        kind: The command's kind.
        name: The handler, parameter or path it names.
        args: Its arguments.

    Raises:
        InvalidText: One of them holds a control character.
    """
    check_names(targets, "target")
    check_name(kind, "kind")
    check_name(name, "name")
    check_keys(args, "argument name")


def check_join_text(
    labels: Iterable[str],
    interfaces: Iterable[str],
    attributes: Mapping[str, Any],
    host: str,
    version: str,
    instance: str,
) -> None:
    """The names a node gives when it joins.

    Args:
        labels: Its labels.
        interfaces: Its interfaces.
        attributes: Its attributes (their names are checked, not their values).
        host: Its host name.
        version: Its corral version.
        instance: Its process instance id.

    Raises:
        InvalidText: One of them holds a control character.
    """
    check_names(labels, "label")
    check_names(interfaces, "interface")
    check_keys(attributes, "attribute name")
    check_name(host, "host")
    check_name(version, "version")
    check_name(instance, "instance")


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
