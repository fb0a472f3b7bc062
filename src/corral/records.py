"""The records corral keeps: nodes, their status transitions, and the audit log.

Plain ``msgspec`` structs shared by the registry core (which decides), the controller (which
moves them) and the store (which persists them, field names matching its columns one to one,
but for a node's live ``stats``),
so a record is never copied field by field between layers.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "AuditEntry",
    "IdempotencyRow",
    "NodeRecord",
    "SessionRow",
    "TokenRow",
    "Transition",
    "UserRow",
]


class NodeRecord(msgspec.Struct, kw_only=True):
    """One node: what it said when it joined, and where the registry stands on it.

    Mutable: the registry updates it in place on every heartbeat.

    Attributes:
        name: The node's unique name (primary key).
        status: ``"UP"``, ``"DOWN"``, ``"LEFT"`` or ``"REVOKED"``; stored as text and not
            validated here (the liveness state machine owns the legal values).
        since: Epoch seconds of the last status change.
        last_seen: Epoch seconds of the last heartbeat.
        joined_at: Epoch seconds when the node first joined.
        labels: Free-form labels used to select nodes.
        interfaces: Names of the interfaces (agents, capabilities) the node serves.
        attributes: Arbitrary JSON-serialisable facts reported by the node.
        host: Host name the node runs on.
        pid: Process id of the node process.
        version: corral version the node runs.
        slots: Number of task slots the node offers.
        instance: Random id of the node process, new on every start.
        last_serial: Highest command serial the node has acknowledged.
        stats: ``cpu_percent``, ``mem_percent``, ``disk_percent`` and ``load1`` of the
            node's host, from its last heartbeat (None until one says); live only: the one
            field the store does not keep.
    """

    name: str
    status: str
    since: float
    last_seen: float
    joined_at: float
    labels: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    host: str = ""
    pid: int = 0
    version: str = ""
    slots: int = 0
    instance: str = ""
    last_serial: int = 0
    stats: dict[str, float] | None = None

    def __repr__(self) -> str:
        return (
            f"<Node {self.name!r} {self.status} host={self.host!r} pid={self.pid} "
            f"serial={self.last_serial}>"
        )


class Transition(msgspec.Struct, frozen=True):
    """One change of a node's status, kept as history.

    Attributes:
        node: Name of the node.
        old: Status before the change.
        new: Status after the change.
        at: Epoch seconds of the change.
        reason: Why it changed (e.g. ``"heartbeat timeout"``).
    """

    node: str
    old: str
    new: str
    at: float
    reason: str = ""


class AuditEntry(msgspec.Struct, frozen=True):
    """One action someone took against the fleet.

    Attributes:
        at: Epoch seconds of the action.
        actor: Who did it (user, service, or node name).
        action: What was done (e.g. ``"revoke"``).
        target: What it was done to (e.g. a node name).
        detail: Extra JSON-serialisable context.
        role: The actor's role, as the controller derived it from the credential, token or
            session that made the call (``admin``, ``operator``, a token's role, ``local``
            for a CLI that wrote the store itself); never a name the client sent.
    """

    at: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = msgspec.field(default_factory=dict)
    role: str = ""


class CommandRow(msgspec.Struct, frozen=True):
    """A command as the store keeps it.

    Attributes:
        serial: Its serial (strictly increasing, never reused).
        created: Epoch seconds when the controller accepted it.
        actor: Who sent it.
        kind: command, shell, get, set, put, execute, or a user's message type.
        name: The handler, parameter or path it names.
        targets: The targets as given (names, globs, ``label:L``, ``has:X``,
            ``attr:K[=V]``, ``sinks``, ``*``).
        nodes: The nodes they resolved to at send time.
        unknown: Exact targets that matched no node.
        retire_after: Seconds after which it is expired for a node that has not received it.
        body: The message the nodes receive (msgpack), kept to re-publish after a crash.
    """

    serial: int
    created: float
    actor: str
    kind: str
    name: str
    targets: list[str]
    nodes: list[str]
    unknown: list[str]
    retire_after: float
    body: bytes = b""


class OutcomeRow(msgspec.Struct, frozen=True):
    """One node's outcome of one command, as the store keeps it."""

    serial: int
    node: str
    state: str
    at: float
    result: Any = None
    error: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""


class IdempotencyRow(msgspec.Struct, frozen=True):
    """The first answer to a submission that carried an idempotency key.

    Written in the same transaction as the submission it answers, so a repeat of the key
    finds either both or neither.

    Attributes:
        caller: Who sent the key (``token:<id>``, ``bus:<credential>``, ``ui:<user>``).
        key: The key as the client sent it.
        function: The function called (``queue_task``, ``send_command`` ...).
        request_hash: SHA-256 of the request as decoded, without the key.
        answer: The reply, JSON-encoded.
        created: Epoch seconds of the first call.
    """

    caller: str
    key: str
    function: str
    request_hash: str
    answer: bytes
    created: float


class TokenRow(msgspec.Struct, frozen=True, kw_only=True):
    """An API token as stored: never its secret, only the secret's SHA-256.

    Attributes:
        id: The token's public id (the part after ``crl_``).
        name: A name for people.
        role: ``read``, ``operate``, ``execute`` or ``admin``.
        hash: SHA-256 of the secret, hex.
        created_at: Epoch seconds of its creation.
        revoked_at: Epoch seconds of its revocation, if revoked.
    """

    id: str
    name: str
    role: str
    hash: str
    created_at: float
    revoked_at: float | None = None


class UserRow(msgspec.Struct, frozen=True, kw_only=True):
    """A dashboard user as stored.

    Attributes:
        name: The user's name (primary key).
        role: Their role, one of the API's roles.
        hash: ``scrypt$<n>$<r>$<p>$<salt>$<key>``, never the password.
        created_at: Epoch seconds of the user's creation.
    """

    name: str
    role: str
    hash: str
    created_at: float


class SessionRow(msgspec.Struct, frozen=True, kw_only=True):
    """A dashboard sign-in session as stored: never the session id (the cookie's value),
    only its SHA-256, so a reader of the table cannot use a session.

    Attributes:
        hash: SHA-256 of the session id, hex (primary key).
        user_name: Who signed in (a user name, or ``token:<id>:<name>``).
        role: Their role when they signed in (re-checked on every request).
        token: The id of the API token signed in with (never the token), or ``""``.
        created_at: Epoch seconds of the sign-in.
        expires_at: Epoch seconds after which the session is refused and purged.
    """

    hash: str
    user_name: str
    role: str
    token: str
    created_at: float
    expires_at: float
