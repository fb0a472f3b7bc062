"""Wire messages, subjects and their parsers: each input parses or raises a documented error."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import subjects, wire
from corral.errors import (
    DuplicateName,
    InvalidName,
    MalformedMessage,
    OversizedMessage,
    Refused,
    RetryLater,
    VersionMismatch,
    to_wire,
)
from corral.states import CommandState


def test_round_trip_with_version_header() -> None:
    msg = wire.Join(instance="x", labels=("a",), attributes={"sink": True}, slots=3)
    assert wire.decode(wire.encode(msg), wire.Join, wire.HEADERS) == msg


@pytest.mark.parametrize(
    ("headers", "match"),
    [(None, "no Corral-Proto header"), ({"Corral-Proto": "2.0"}, "speaks corral protocol 2.0")],
)
def test_version_is_checked_and_both_versions_named(
    headers: dict[str, str] | None, match: str
) -> None:
    with pytest.raises(VersionMismatch, match=match) as err:
        wire.decode(wire.encode(wire.Ok()), wire.Ok, headers)
    assert wire.PROTOCOL_VERSION in str(err.value)


def test_minor_version_difference_is_accepted() -> None:
    assert wire.decode(wire.encode(wire.Ok()), wire.Ok, {"Corral-Proto": "1.7"}) == wire.Ok()


def test_hot_path_messages_carry_their_version_in_the_payload_instead_of_a_header() -> None:
    """Live commands, their acknowledgements and the nodes' reports go without NATS headers
    (a header block per message and per node was measurable CPU at 1,000 nodes)."""
    report = wire.CommandReport(serial=7, state=CommandState.DONE, result=1)
    assert wire.decode(wire.encode(report), wire.CommandReport, None) == report
    live = wire.LiveCommand(serial=3, epoch=2, body=b"x")
    assert wire.decode(wire.encode(live), wire.LiveCommand, {}) == live
    newer = msgspec.structs.replace(report, proto="2.0")
    with pytest.raises(VersionMismatch, match="speaks corral protocol 2.0"):
        wire.decode(wire.encode(newer), wire.CommandReport, None)
    # the header, when there is one, is what counts
    assert wire.decode(wire.encode(newer), wire.CommandReport, wire.HEADERS) == newer
    with pytest.raises(VersionMismatch, match="no Corral-Proto header"):
        wire.decode(wire.encode(msgspec.structs.replace(report, proto="")), wire.CommandReport)


def test_oversized_is_refused_before_decoding() -> None:
    with pytest.raises(OversizedMessage, match="max_message_bytes"):
        wire.decode(b"\x00" * 11, wire.Ok, wire.HEADERS, limit=10)


def test_wrong_type_is_malformed_and_names_the_expected_message() -> None:
    with pytest.raises(MalformedMessage, match="Heartbeat"):
        wire.decode(wire.encode(wire.Ok()), wire.Heartbeat, wire.HEADERS)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_malformed(data: bytes) -> None:
    try:
        wire.decode(data, wire.Heartbeat, wire.HEADERS)
    except MalformedMessage:
        pass


@pytest.mark.parametrize(
    ("code", "kind"),
    [("duplicate-name", DuplicateName), ("whatever", Refused), ("version", VersionMismatch)],
)
def test_error_replies_raise_the_matching_error(code: str, kind: type[Exception]) -> None:
    reply = wire.encode(wire.ErrorReply(code=code, error="why"))
    with pytest.raises(kind, match="why"):
        wire.decode_reply(reply, wire.Ok, wire.HEADERS)


def test_retry_reply_carries_retry_after() -> None:
    reply = wire.encode(wire.ErrorReply(code="retry", error="wait", retry_after=1.5))
    with pytest.raises(RetryLater) as err:
        wire.decode_reply(reply, wire.Ok, wire.HEADERS)
    assert err.value.retry_after == 1.5


def test_reply_code_inverts_raise_for_error() -> None:
    for exc in (DuplicateName("x"), MalformedMessage("x"), OversizedMessage("x")):
        with pytest.raises(type(exc)):
            wire.raise_for_error(wire.ErrorReply(code=to_wire(exc).reply_code, error="x"))


@pytest.mark.parametrize("name", ["web1", "rack-3_a", "A", "9" * 64])
def test_valid_names(name: str) -> None:
    assert subjects.check_name(name) == name
    assert subjects.parse_node_in(subjects.node_in(name, "hb")) == (name, "hb")


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "-a", "_a", "a b", "é", "9" * 65])
def test_invalid_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidName, match="letters, digits"):
        subjects.check_name(name)


@given(st.text(max_size=80))
def test_any_subject_parses_or_raises_invalid_name(subject: str) -> None:
    try:
        name, verb = subjects.parse_node_in(subject)
    except InvalidName:
        return
    assert subject == subjects.node_in(name, verb)


@pytest.mark.parametrize(
    ("kind", "message", "valid"),
    [
        (wire.CommandReport, {"serial": 1, "state": "exploded"}, "pending, delivered, running"),
        (
            wire.CommandUpdate,
            {"serial": 1, "outcomes": [{"node": "a", "state": "zz", "at": 1.0}]},
            "done, failed, expired",
        ),
        (wire.TaskReport, {"results": [["lease", "weird"]]}, "complete, failed, stopped"),
        (
            wire.NodesReply,
            {
                "nodes": [
                    {"name": "a", "status": "GONE", "since": 0, "last_seen": 0, "joined_at": 0}
                ]
            },
            "UP, DOWN, LEFT, REVOKED",
        ),
        (wire.GuardianMode, {"mode": "SLEEPY", "by": "me"}, "AUTO, MANAGED, MANUAL"),
    ],
)
def test_a_state_that_does_not_exist_is_refused_naming_those_that_do(
    kind: type, message: dict[str, object], valid: str
) -> None:
    data = msgspec.msgpack.encode({"type": kind.__name__, **message})
    with pytest.raises(MalformedMessage, match="Invalid enum value") as caught:
        wire.decode(data, kind, wire.HEADERS)
    assert "(use one of: " in str(caught.value) and valid in str(caught.value)


def test_states_travel_as_the_strings_they_always_were() -> None:
    report = wire.CommandReport(serial=3, state=CommandState.DONE)
    assert msgspec.msgpack.decode(wire.encode(report))["state"] == "done"
    back = wire.decode(wire.encode(report), wire.CommandReport, wire.HEADERS)
    assert back.state is CommandState.DONE and back.state == "done"


@given(st.one_of(st.sampled_from([s.value for s in CommandState]), st.text(max_size=12)))
def test_any_state_word_decodes_to_its_member_or_is_refused(word: str) -> None:
    data = msgspec.msgpack.encode({"type": "CommandReport", "serial": 1, "state": word})
    try:
        report = wire.decode(data, wire.CommandReport, wire.HEADERS)
    except MalformedMessage as exc:
        assert word not in {s.value for s in CommandState} and "use one of" in str(exc)
    else:
        assert report.state is CommandState(word)
