"""Addressing commands (SEER): each target parses or raises BadTarget; resolution by calls."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.core.addressing import (
    BadTarget,
    NodeFacts,
    Target,
    attribute_text,
    parse_target,
    resolve,
)

FLEET = {
    "web1": NodeFacts(labels=("gpu",), attributes={"role": "web"}),
    "web2": NodeFacts(labels=("gpu", "rack1"), attributes={"role": "web", "zone": "a=1"}),
    "Web3": NodeFacts(attributes={"Role": "db"}),  # attribute names are case-sensitive
    "rack1-a": NodeFacts(
        interfaces=("eth1",), sink=True, attributes={"role": "db", "sink": "true"}
    ),
    "rack2-b": NodeFacts(interfaces=("eth2",)),
    "rack4-c": NodeFacts(sink=True),
    "adb": NodeFacts(),
    "eth2": NodeFacts(),
}


@pytest.mark.parametrize(
    ("targets", "nodes", "unknown"),
    [
        (["web1"], ["web1"], []),
        (["web*"], ["web1", "web2"], []),  # case-sensitive: not Web3
        (["rack[1-3]-*"], ["rack1-a", "rack2-b"], []),
        (["?db"], ["adb"], []),
        (["label:gpu"], ["web1", "web2"], []),
        (["has:eth1"], ["rack1-a"], []),
        (["has:eth2"], ["eth2"], []),  # the node so named comes first (SEER's order)
        (["sinks"], ["rack1-a", "rack4-c"], []),
        (
            ["web1", "ghost", "rack*", "has:eth9"],
            ["rack1-a", "rack2-b", "rack4-c", "web1"],
            ["ghost", "has:eth9"],
        ),
        (["zzz*"], [], []),  # a glob that matches nothing is not an error
        (["attr:role"], ["rack1-a", "web1", "web2"], []),  # any value
        (["attr:role=db"], ["rack1-a"], []),
        (["attr:role=web", "attr:role=db"], ["rack1-a", "web1", "web2"], []),
        (["attr:role=DB"], [], []),  # values compare exactly: a miss is not an error
        (["attr:zone=a=1"], ["web2"], []),  # the first '=' splits name from value
        (["attr:sink=true"], ["rack1-a"], []),
        (["attr:nosuch"], [], []),
    ],
)
def test_resolution(targets: list[str], nodes: list[str], unknown: list[str]) -> None:
    result = resolve(targets, FLEET)
    assert result.nodes == nodes and result.unknown == unknown and not result.broadcast


def test_everyone_is_a_broadcast() -> None:
    result = resolve(["*"], FLEET)
    assert result.broadcast and result.nodes == sorted(FLEET)


def test_nodes_that_left_are_reached_by_their_name_only() -> None:
    fleet = {
        **FLEET,
        "web9": NodeFacts(labels=("gpu",), attributes={"role": "web"}, sink=True, left=True),
    }
    everyone = resolve(["*"], fleet)
    assert everyone.broadcast and everyone.nodes == sorted(FLEET)
    for targets in (["web*"], ["label:gpu"], ["attr:role=web"], ["sinks"], ["?eb9"]):
        assert "web9" not in resolve(targets, fleet).nodes
    assert resolve(["web9"], fleet).nodes == ["web9"]
    assert resolve(["has:web9"], fleet).nodes == ["web9"]
    assert resolve(["web*", "web9"], fleet).nodes == ["web1", "web2", "web9"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty target"),
        ("web[1", "without its closing"),
        ("a[b[c]]", "inside a"),
        ("web[]", "empty"),
        ("node.1", "letters, digits"),
        ("color:red", "unknown target kind 'color'"),
        ("label:", "bad label"),
        ("has:a b", "bad has"),
        ("attr:", "bad attribute name '' in 'attr:': write attr:KEY or attr:KEY=VALUE"),
        ("attr:=db", "bad attribute name ''.*e.g. attr:role=db"),
        ("attr:ro le=db", "bad attribute name 'ro le'"),
        ("attr:role=", r"bad attribute value ''.*or drop the '=' \(attr:role\)"),
        ("attr:role=a b", "without spaces or commas"),
        ("attr:role=a\x00", "bad attribute value"),
        ("attrib:role", "unknown target kind 'attrib'.*attr:KEY=VALUE"),
    ],
)
def test_malformed_targets_say_what_is_wrong(spec: str, match: str) -> None:
    with pytest.raises(BadTarget, match=match):
        parse_target(spec)


def test_nothing_to_resolve_is_an_error() -> None:
    with pytest.raises(BadTarget, match="no target given"):
        resolve([], FLEET)


@given(st.text(max_size=20))
def test_any_string_parses_or_raises_bad_target(spec: str) -> None:
    try:
        target = parse_target(spec)
    except BadTarget:
        return
    assert isinstance(target, Target)
    assert parse_target(str(target)) == target  # printing a target gives it back


@given(st.from_regex(r"[a-c?*]{1,4}", fullmatch=True))
def test_globs_agree_with_fnmatchcase(pattern: str) -> None:
    names = ["a", "ab", "abc", "b", "ca", "cab"]
    registry = {n: NodeFacts() for n in names}
    expected = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
    assert resolve([pattern], registry).nodes == expected


@pytest.mark.parametrize(
    ("value", "text"), [("db", "db"), (True, "true"), (False, "false"), (3, "3"), (2.5, "2.5")]
)
def test_announced_values_compare_as_text(value: object, text: str) -> None:
    assert attribute_text(value) == text


ATTR_NAMES = st.sampled_from(["role", "zone", "rack"])
ATTR_VALUES = st.sampled_from(["db", "web", "a=b", "x"])


@given(
    st.dictionaries(
        st.sampled_from(["n1", "n2", "n3", "n4"]), st.dictionaries(ATTR_NAMES, ATTR_VALUES)
    ),
    ATTR_NAMES,
    st.none() | ATTR_VALUES,
)
def test_attr_targets_pick_exactly_the_announcing_nodes(
    announced: dict[str, dict[str, str]], key: str, value: str | None
) -> None:
    registry = {n: NodeFacts(attributes=a) for n, a in announced.items()}
    spec = f"attr:{key}" if value is None else f"attr:{key}={value}"
    expected = sorted(
        n for n, a in announced.items() if key in a and (value is None or a[key] == value)
    )
    result = resolve([spec], registry)
    assert result.nodes == expected and not result.unknown and not result.broadcast
    assert str(parse_target(spec)) == spec


def test_the_controllers_facts_follow_joins_edits_and_status() -> None:
    """The command service keeps each node's facts between commands; a join (new objects),
    an edit or a status change must still be seen by the next resolution."""
    from corral.config import Config
    from corral.controller.commands import CommandService
    from corral.core.registry import Registry
    from corral.records import NodeRecord

    registry = Registry(3.0)
    for name in ("a", "b"):
        registry.nodes[name] = NodeRecord(
            name=name, status="UP", since=0, last_seen=0, joined_at=0, labels=("gpu",)
        )
    service = CommandService(Config(), registry)
    assert resolve(["label:gpu"], service.facts()).nodes == ["a", "b"]
    registry.nodes["a"].labels = ("cpu",)  # a join or an edit assigns new values
    assert resolve(["label:gpu"], service.facts()).nodes == ["b"]
    registry.nodes["b"].attributes = {"sink": True}
    assert resolve(["sinks"], service.facts()).nodes == ["b"]
    registry.nodes["b"].status = "LEFT"
    assert resolve(["*"], service.facts()).nodes == ["a"]
    registry.nodes["a"].status = "REVOKED"
    del registry.nodes["b"]
    assert service.facts() == {}
