"""Who a command is for: parsing addresses and resolving them against the registry (SEER).

A command is addressed with one or more *targets*, each a string:

- ``web1``: the node named web1; an unknown name is reported, not ignored (SEER ``sendToNode``).
- ``web*``, ``?db``, ``rack[1-3]-*``: every node whose name matches the shell glob (fnmatch,
  case-sensitive); matching nothing is fine; a malformed glob is an error.
- ``has:eth1``: the node named eth1, or the node that controls interface eth1
  (``sendToNodeThatHas``).
- ``label:gpu``: every node carrying the label gpu.
- ``attr:role``: every node that announced the attribute ``role``, whatever its value; and
  ``attr:role=db``: every node whose ``role`` is ``db`` (SEER's ``DAttrib``). A value is
  compared as text: ``true``/``false`` for booleans, digits for numbers.
- ``sinks``: every node with the sink attribute (``sendToSinks``).
- ``*``: every node, as one publish the bus fans out (``sendToExperiment``).

A node that left on purpose (LEFT: it stopped cleanly and said so) is not part of the fleet
until it joins again: only its exact name (or ``has:NAME``) reaches it; ``*``, globs,
labels, attributes and sinks pass it over, so a command to them does not wait on it.

A list of targets is their union (SEER ``sendToNodes``). Nothing here does I/O: the controller
resolves at send time and records the resolved node list with the command.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.errors import BadTarget

__all__ = ["NodeFacts", "Resolution", "Target", "attribute_text", "parse_target", "resolve"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_GLOB_CHARS = re.compile(r"[A-Za-z0-9_\-*?\[\]!]+")
_ATTR_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# A value: printable, no space or comma (a comma separates targets), at most 200 characters.
_ATTR_VALUE = re.compile(r"[^\s,\x00-\x1f\x7f]{1,200}")
_KINDS_HELP = "use label:NAME, has:NAME, attr:KEY or attr:KEY=VALUE"


@dataclass(frozen=True)
class Target:
    """One parsed target: ``kind`` is name, glob, has, label, attr, sinks or all.

    For ``attr`` the value is ``KEY`` or ``KEY=VALUE``.
    """

    kind: str
    value: str = ""

    def __str__(self) -> str:
        if self.kind in ("name", "glob"):
            return self.value
        if self.kind == "all":
            return "*"
        if self.kind == "sinks":
            return "sinks"
        return f"{self.kind}:{self.value}"


def _check_glob(pattern: str) -> None:
    if not _GLOB_CHARS.fullmatch(pattern):
        raise BadTarget(
            f"bad target {pattern!r}: names and globs use letters, digits, '-', '_' and the "
            "glob characters * ? [ ] !"
        )
    depth = 0
    for char in pattern:
        if char == "[":
            if depth:
                raise BadTarget(f"bad glob {pattern!r}: '[' inside a [...] set")
            depth = 1
        elif char == "]" and depth:
            depth = 0
    if depth:
        raise BadTarget(f"bad glob {pattern!r}: '[' without its closing ']'")
    if "[]" in pattern or "[!]" in pattern:
        raise BadTarget(f"bad glob {pattern!r}: an empty [...] set matches nothing")


def parse_target(spec: str) -> Target:
    """Parse one target string.

    Raises:
        BadTarget: empty, malformed glob, unknown ``kind:``, or a bad name after it.
    """
    spec = spec.strip()
    if not spec:
        raise BadTarget(
            "empty target: give a node name, a glob, label:L, has:X, attr:K[=V], sinks or *"
        )
    if spec == "*":
        return Target("all")
    if spec == "sinks":
        return Target("sinks")
    kind, sep, value = spec.partition(":")
    if sep:
        if kind == "attr":
            return _parse_attr(spec, value)
        if kind not in ("label", "has"):
            raise BadTarget(f"unknown target kind {kind!r} in {spec!r}: {_KINDS_HELP}")
        if not _NAME.fullmatch(value):
            raise BadTarget(f"bad {kind} {value!r} in {spec!r}: use letters, digits, '-', '_'")
        return Target(kind, value)
    if _NAME.fullmatch(spec):
        return Target("name", spec)
    _check_glob(spec)
    return Target("glob", spec)


def _parse_attr(spec: str, value: str) -> Target:
    key, eq, wanted = value.partition("=")
    if not _ATTR_KEY.fullmatch(key):
        raise BadTarget(
            f"bad attribute name {key!r} in {spec!r}: write attr:KEY or attr:KEY=VALUE, KEY "
            "being 1-64 letters, digits, '_', '-' or '.' (e.g. attr:role=db)"
        )
    if eq and not _ATTR_VALUE.fullmatch(wanted):
        raise BadTarget(
            f"bad attribute value {wanted!r} in {spec!r}: give 1-200 characters without "
            f"spaces or commas after '=' (attr:{key}=db), or drop the '=' (attr:{key}) to "
            "match any value"
        )
    return Target("attr", value)


def attribute_text(value: Any) -> str:
    """How an announced attribute value compares with the VALUE of ``attr:KEY=VALUE``.

    Args:
        value: The value the node announced (any JSON value).

    Returns:
        A string as is; ``true``/``false`` for booleans; JSON for anything else (``3``, ``2.5``).
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class NodeFacts:
    """What addressing needs to know of a node.

    ``attributes`` maps each attribute the node announced to its value as text
    (:func:`attribute_text`); ``left`` says it left on purpose (only its name reaches it).
    """

    labels: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    sink: bool = False
    attributes: Mapping[str, str] = field(default_factory=dict)
    left: bool = False


@dataclass
class Resolution:
    """The nodes a list of targets resolved to.

    ``broadcast`` is True when every node is addressed (one publish to all); ``unknown`` lists
    exact names and ``has:`` targets that matched no node.
    """

    nodes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    broadcast: bool = False


def resolve(targets: Sequence[str | Target], registry: Mapping[str, NodeFacts]) -> Resolution:
    """Resolve ``targets`` against the nodes in ``registry`` (name -> facts).

    Returns:
        The union of the matched node names (sorted), the unknown exact targets, and whether
        the whole fleet is addressed.

    Raises:
        BadTarget: a target string is malformed (nothing is resolved then).
    """
    parsed = [t if isinstance(t, Target) else parse_target(t) for t in targets]
    if not parsed:
        raise BadTarget(
            "no target given: name at least one node, glob, label:L, has:X, attr:K[=V] or *"
        )
    out = Resolution()
    chosen: set[str] = set()
    # Patterns pass over the nodes that left on purpose; exact names still reach them.
    members = registry
    if any(f.left for f in registry.values()):
        members = {n: f for n, f in registry.items() if not f.left}
    for target in parsed:
        exact = target.kind == "name" or (target.kind == "has" and target.value in registry)
        matched = list(_match(target, registry if exact else members))
        if not matched and target.kind in ("name", "has"):
            out.unknown.append(str(target))
        chosen.update(matched)
        if target.kind == "all":
            out.broadcast = True
    out.nodes = sorted(chosen)
    return out


def _match(target: Target, registry: Mapping[str, NodeFacts]) -> Iterable[str]:
    kind, value = target.kind, target.value
    if kind == "all":
        return registry.keys()
    if kind == "name":
        return [value] if value in registry else []
    if kind == "glob":
        return [n for n in registry if fnmatch.fnmatchcase(n, value)]
    if kind == "label":
        return [n for n, f in registry.items() if value in f.labels]
    if kind == "sinks":
        return [n for n, f in registry.items() if f.sink]
    if kind == "attr":
        key, eq, wanted = value.partition("=")
        if not eq:
            return [n for n, f in registry.items() if key in f.attributes]
        return [n for n, f in registry.items() if f.attributes.get(key) == wanted]
    # has: the node so named, else the node(s) controlling that interface
    if value in registry:
        return [value]
    return [n for n, f in registry.items() if value in f.interfaces]
