"""Every error corral raises, in one tree, and how each one crosses the wire.

Foreign exceptions (nats-py, sqlite3, psycopg, OS errors) are translated at the boundary
where they happen; a user only ever catches corral's own. Each class carries its Pydra
``code`` and its HTTP ``status`` as class attributes (``code status`` below). The edges
read them, and only there: :func:`http_error` makes an HTTP error reply, :func:`to_wire`
a bus ``ErrorReply``, and :func:`from_wire` rebuilds the same class on the client side, so
a failure raises the same class over HTTP and over the bus. The tree::

    CorralError                 -5 500  root; anything not more precise (``ControllerError``)
    ├── UsageError              -3 400  the caller asked for something malformed or impossible
    │   ├── ConfigError         -3 400  a configuration value is missing or wrong
    │   │   └── ShadowsBuiltin  -3 400  a handler takes the name of a built-in
    │   ├── InvalidName         -3 400  a node name is not a valid subject token
    │   ├── InvalidText         -3 400  a name holds NUL or a control character (a ValueError)
    │   ├── NotInitialized      -3 400  no data directory / authority yet: run `corral init`
    │   ├── SystemLoadError     -3 400  a guardian system module failed to import
    │   ├── IllegalTransition   -3 409  a task instance asked to move where its table forbids
    │   ├── NotSerializable     -3 422  task arguments or a result msgpack cannot carry
    │   ├── BadTarget           -3 400  a target that is no name, glob or ``kind:value``
    │   ├── Refusal             -3 400  the node will not do this (disabled kind, bad path)
    │   └── FunctionNotFound    -6 404  the controller API has no such function
    ├── ProtocolError           -3 422  a peer sent something we cannot accept
    │   ├── MalformedMessage    -3 422  bytes that do not decode to the expected message
    │   ├── OversizedMessage    -3 413  a payload larger than the limit for its subject
    │   └── VersionMismatch     -3 422  the peer speaks another major protocol version
    ├── Refused                 -3 400  a peer understood and said no (``RemoteError``)
    │   ├── NotFound            -3 404  no task instance, node or command with that id
    │   │   └── UnknownTask     -3 404  no node offers that task key
    │   ├── InvalidArguments    -3 422  arguments that do not fit the function or task (``fields``)
    │   ├── Conflict            -3 409  the request does not fit the current state of its object
    │   ├── DuplicateName       -3 409  a live node (or agent) already holds that name
    │   ├── RetryLater          -3 503  not now; ask again after ``retry_after`` seconds
    │   ├── UnknownMessage      -3 404  the agent has no handler for that message
    │   ├── AgentError          -3 500  the agent's handler raised (type and message attached)
    │   ├── Overloaded          -3 429  an inbox is full, or a token made too many calls
    │   ├── GroupRefused        -3 409  the group coordinator refused (``step``)
    │   ├── GuardianRefused     -3 409  a guardian refused (mode, holder, no such state)
    │   ├── RecordRefused       -3 422  the store refused one record for its data
    │   └── IdempotencyKeyReused -3 422  a key sent again with another request
    ├── AuthError               -1 401  a credential or token was refused (``AuthenticationFailed``)
    │   ├── Forbidden           -1 403  the token's role may not make this call
    │   └── NoKey               -4 401  no API token was given
    ├── Unavailable             -2 503  something we need is not there (bus, controller, store)
    │   ├── BusUnavailable      -2 503  cannot reach NATS
    │   ├── ControllerUnavailable -2 503  no controller answers (``Disconnected``)
    │   │   └── NotLeader       -2 503  a standby controller: writes go to ``leader``
    │   ├── NoSuchAgent         -2 503  no agent holds that name
    │   ├── NoSuchGuardian      -2 503  no live guardian holds that name
    │   └── StoreError          -2 503  the SQL store failed
    │       └── TransientStoreError -2 503  a failure a retry may cure
    ├── Timeout                 -3 504  a bounded wait ran out
    │   └── GroupTimeout        -3 504  a collective timed out (``missing`` names the ranks)
    ├── TaskFailed              -3 500  the awaited task failed or was cancelled (``instance``)
    ├── TaskStopped             -3 500  raised inside a task by ``ctx.check_stop()``
    └── UnknownError            -5 500  a failure the controller did not expect (a bug)

Old names are aliases of the same class: ``ControllerError`` is :class:`CorralError`,
``RemoteError`` :class:`Refused`, ``AuthenticationFailed`` :class:`AuthError`,
``Disconnected`` :class:`ControllerUnavailable`. Every message says what to do next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "AgentError",
    "AuthError",
    "AuthenticationFailed",
    "BadTarget",
    "BusUnavailable",
    "ConfigError",
    "Conflict",
    "ControllerError",
    "ControllerUnavailable",
    "CorralError",
    "Disconnected",
    "DuplicateName",
    "Forbidden",
    "FunctionNotFound",
    "GroupRefused",
    "GroupTimeout",
    "GuardianRefused",
    "IdempotencyKeyReused",
    "IllegalTransition",
    "InvalidArguments",
    "InvalidName",
    "InvalidText",
    "MalformedMessage",
    "NoKey",
    "NoSuchAgent",
    "NoSuchGuardian",
    "NotFound",
    "NotInitialized",
    "NotLeader",
    "NotSerializable",
    "Overloaded",
    "OversizedMessage",
    "ProtocolError",
    "RecordRefused",
    "Refusal",
    "Refused",
    "RemoteError",
    "RetryLater",
    "ShadowsBuiltin",
    "StoreError",
    "SystemLoadError",
    "TaskFailed",
    "TaskStopped",
    "Timeout",
    "TransientStoreError",
    "Unavailable",
    "UnknownError",
    "UnknownMessage",
    "UnknownTask",
    "UsageError",
    "VersionMismatch",
    "WireError",
    "from_wire",
    "http_error",
    "to_wire",
]


class CorralError(Exception):
    """Root of every error corral raises.

    ``code`` is Pydra's error code and ``status`` the HTTP status the API answers with (both
    class attributes; an error rebuilt from an HTTP reply carries the status it came with).
    ``reply_code`` is the bus ``ErrorReply.code`` that peers without ``kind`` understand.
    """

    code: ClassVar[int] = -5
    status: int = 500
    reply_code: ClassVar[str] = "error"

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


ControllerError = CorralError


class UsageError(CorralError):
    """The caller asked for something malformed or impossible."""

    code, status, reply_code = -3, 400, "usage"


class ConfigError(UsageError):
    """A configuration value is missing or has the wrong type."""


class ShadowsBuiltin(ConfigError):
    """A handler module registers a handler under a name corral's built-ins already use."""


class InvalidName(UsageError):
    """A node, agent or group name cannot be used as a bus subject token."""


class InvalidText(UsageError, ValueError):
    """A name (node, label, key, target...) holds NUL or another control character.

    The message names the field and the character. Also a :class:`ValueError`, so that a
    msgspec request struct whose ``__post_init__`` checks its names fails validation.
    """


class NotInitialized(UsageError):
    """The data directory has no authority (keys, credentials) yet."""


class SystemLoadError(UsageError):
    """A guardian system module failed to import, or defines no usable states and edges."""


class IllegalTransition(UsageError):
    """A state machine was asked to move where its transition table forbids.

    The one such error for every machine: a node's status (:mod:`corral.core.registry`), a
    task instance's (:mod:`corral.core.taskstate`), a command's outcome at a node
    (:mod:`corral.core.commands`) and a guardian's phase (:mod:`corral.guardian.machine`).
    """

    status = 409


class NotSerializable(UsageError):
    """Task arguments or a task result that msgpack cannot carry (say which and why)."""

    status = 422


class BadTarget(UsageError):
    """A target string that is neither a name, a glob, nor a known ``kind:value`` form."""


class Refusal(UsageError):
    """The node will not do this (disabled kind, path outside the work directory, ...)."""


class FunctionNotFound(UsageError):
    """-6: the controller API has no function of that name."""

    code, status = -6, 404


class ProtocolError(CorralError):
    """A peer sent a message we cannot accept."""

    code, status, reply_code = -3, 422, "protocol"


class MalformedMessage(ProtocolError):
    """Bytes that do not decode to the message type expected on a subject."""

    reply_code = "malformed"


class OversizedMessage(ProtocolError):
    """A payload larger than the limit for its subject (or an HTTP body over its limit)."""

    status, reply_code = 413, "oversized"


class VersionMismatch(ProtocolError):
    """The peer speaks another major version of the corral protocol."""

    reply_code = "version"


class Refused(CorralError):
    """A peer understood a request and refused it; the reason is the message."""

    code, status, reply_code = -3, 400, "refused"


RemoteError = Refused


class NotFound(Refused):
    """No task instance, node or command with that id (HTTP 404)."""

    status, reply_code = 404, "not-found"


class UnknownTask(NotFound):
    """No node offers the task key asked for."""

    reply_code = "unknown-task"


class InvalidArguments(Refused):
    """Arguments that do not fit an API function, or a task function's signature (HTTP 422).

    Nothing was done. For a task it is raised when the task is queued (nothing is stored
    then), and ``fields`` maps each argument at fault to what is wrong with it (Pydra's
    per-field errors), e.g. ``{"count": "expected int, got str"}``; in ``queue_tasks`` the
    names are ``args[<i>].<name>``.
    """

    status = 422

    def __init__(
        self, message: str = "", status: int | None = None, fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, status)
        self.fields: dict[str, str] = dict(fields or {})


class Conflict(Refused):
    """The request does not fit the current state of what it names (HTTP 409): e.g. a node
    that is UP cannot be forgotten, one that is not UP has no worker to kill."""

    status, reply_code = 409, "conflict"


class DuplicateName(Refused):
    """A live node already holds the requested name."""

    status, reply_code = 409, "duplicate-name"


class RetryLater(Refused):
    """The controller cannot decide yet; ask again after ``retry_after`` seconds."""

    status, reply_code = 503, "retry"

    def __init__(self, message: str = "", retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownMessage(Refused):
    """The agent has no handler for the message; the error names those it has."""

    status, reply_code = 404, "unknown-message"


class AgentError(Refused):
    """An agent's handler raised; the error carries the exception's type and message."""

    status, reply_code = 500, "handler-error"


class Overloaded(Refused):
    """An agent's inbox is full, or an API token made too many calls: retry later."""

    status, reply_code = 429, "overloaded"


class GroupRefused(Refused):
    """The group coordinator refused a request (out of step, declared dead, group full).

    A refused collective was not counted and the member stays in the group; ``step`` is the
    group's current collective number (0 when it does not apply), where the member's next
    collective call will be made.
    """

    status, reply_code = 409, "group-refused"

    def __init__(self, message: str = "", step: int = 0) -> None:
        super().__init__(message)
        self.step = step


class GuardianRefused(Refused):
    """A guardian refused a request: wrong mode, held by another manager, no such state."""

    status, reply_code = 409, "guardian-refused"


class RecordRefused(Refused):
    """The store refused one record because of its data; the message names it and why.

    Nothing else was lost: the other records of the same batch were written. Sending the
    same data again fails the same way; fix the data (the message says which field).
    """

    status = 422


class IdempotencyKeyReused(Refused):
    """HTTP 422: an idempotency key came back with another request than its first.

    A key names one submission: send a new key for a new request (the Python clients make
    one per call), or the same request again to get the first answer.
    """

    status = 422


class AuthError(CorralError):
    """-1: a credential was refused: the bus's (not enrolled, revoked, another authority) or
    an API token (unknown, malformed, revoked)."""

    code, status, reply_code = -1, 401, "auth"


AuthenticationFailed = AuthError


class Forbidden(AuthError):
    """-1, HTTP 403: the token is valid but its role may not make this call."""

    status = 403


class NoKey(AuthError):
    """-4: no API token was given (``corral token create``, then ``token=`` or
    ``CORRAL_API_TOKEN``)."""

    code = -4


class Unavailable(CorralError):
    """-2: something corral needs is not reachable."""

    code, status, reply_code = -2, 503, "unavailable"


class BusUnavailable(Unavailable):
    """The NATS server cannot be reached."""


class ControllerUnavailable(Unavailable):
    """No controller answers (on the bus, or at the API's URL)."""


Disconnected = ControllerUnavailable


class NotLeader(ControllerUnavailable):
    """This controller is a standby and does not take writes; ``leader`` is the address of the
    one that leads (its API URL, or "" while no controller leads). A client with several
    addresses sends the call there instead (see docs/operations.md, "Several controllers")."""

    reply_code = "not-leader"

    def __init__(self, message: str = "", leader: str = "") -> None:
        super().__init__(message)
        self.leader = leader


class NoSuchAgent(Unavailable):
    """No live agent holds the name a message was addressed to."""

    reply_code = "agent-stopped"


class NoSuchGuardian(Unavailable):
    """No live guardian holds the name a request was addressed to."""

    reply_code = "no-guardian"


class StoreError(Unavailable):
    """The SQL store failed (connection, migration, or a statement)."""


class TransientStoreError(StoreError):
    """The store failed for a reason that is not the data's: a retry may succeed.

    Connection lost, database locked, lock or statement timeout, serialization failure,
    deadlock, disk full, a schema that does not match. Writers retry these with backoff.
    """


class Timeout(CorralError):
    """A bounded wait ran out before the awaited event happened."""

    code, status, reply_code = -3, 504, "timeout"


class GroupTimeout(Timeout):
    """A collective did not complete in time; ``missing`` holds the ranks that did not arrive,
    ``left_out`` why each was left out (dead, departed, out of step, did not arrive)."""

    reply_code = "group-timeout"

    def __init__(
        self,
        message: str = "",
        missing: tuple[int, ...] = (),
        left_out: dict[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.left_out = dict(left_out or {})


class TaskFailed(CorralError):
    """The awaited task failed or was cancelled; ``instance`` holds its record."""

    code, reply_code = -3, "task-failed"

    def __init__(self, message: str = "", instance: object = None) -> None:
        super().__init__(message)
        self.instance = instance


class TaskStopped(CorralError):
    """Raised inside a task by ``ctx.check_stop()`` once a cancel asked it to stop."""

    code, reply_code = -3, "task-stopped"


class UnknownError(CorralError):
    """-5: a failure the controller did not expect (a bug: its log has the traceback)."""


# --- the edges --------------------------------------------------------------------------


class WireError(NamedTuple):
    """An exception as it crosses a transport: what an HTTP body and a bus reply carry."""

    #: the class's name: the receiver rebuilds exactly this class
    kind: str
    #: the message
    error: str
    #: Pydra's code
    code: int
    #: the HTTP status
    status: int
    #: the bus ``ErrorReply.code`` (what peers that do not read ``kind`` go by)
    reply_code: str
    #: per-field errors (:class:`InvalidArguments`)
    fields: dict[str, str]
    #: :class:`RetryLater`'s delay
    retry_after: float
    #: :class:`GroupRefused`'s collective number
    step: int
    #: :class:`NotLeader`'s leader address
    leader: str


def to_wire(exc: BaseException) -> WireError:
    """What crosses the wire for ``exc``: a corral error as itself, anything else as an
    :class:`UnknownError` naming the exception's type."""
    if not isinstance(exc, CorralError):
        exc = UnknownError(f"{type(exc).__name__}: {exc}")
    return WireError(
        kind=type(exc).__name__,
        error=str(exc),
        code=exc.code,
        status=exc.status,
        reply_code=exc.reply_code,
        fields=dict(getattr(exc, "fields", None) or {}),
        retry_after=float(getattr(exc, "retry_after", 0.0)),
        step=int(getattr(exc, "step", 0)),
        leader=str(getattr(exc, "leader", "")),
    )


def http_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body answering ``exc``: ``{"code", "error", "kind"}``, and
    ``"fields"``, ``"retry_after"``, ``"step"``, ``"leader"`` when the error carries them."""
    wire = to_wire(exc)
    body: dict[str, Any] = {"code": wire.code, "error": wire.error, "kind": wire.kind}
    for name in ("fields", "retry_after", "step", "leader"):
        if value := getattr(wire, name):
            body[name] = value
    return wire.status, body


def _classes() -> dict[str, type[CorralError]]:
    found = {}
    for name in __all__:
        value = globals().get(name)
        if isinstance(value, type) and issubclass(value, CorralError):
            found[name] = found[value.__name__] = value
    return found


_BY_KIND = _classes()
_BY_REPLY_CODE = {
    c.__dict__["reply_code"]: c for c in _BY_KIND.values() if "reply_code" in c.__dict__
}


def _by_code(code: int, status: int, message: str, fields: Mapping[str, str]) -> type[CorralError]:
    """The class for an HTTP error from a peer that sent no ``kind`` (or an unknown one)."""
    if status == 504:
        return Timeout
    if code == -3:
        if status == 422 and "idempotency key" in message:
            return IdempotencyKeyReused
        if status == 422 and (fields or message.startswith("invalid arguments")):
            return InvalidArguments
        return {404: NotFound, 413: OversizedMessage, 422: ProtocolError, 429: Overloaded}.get(
            status, Refused
        )
    if code == -1:
        return Forbidden if status == 403 else AuthError
    return {-2: ControllerUnavailable, -4: NoKey, -6: FunctionNotFound}.get(code, UnknownError)


def from_wire(
    kind: str,
    error: str,
    *,
    code: int | str = -5,
    status: int = 0,
    fields: Mapping[str, str] | None = None,
    retry_after: float = 0.0,
    step: int = 0,
    leader: str = "",
) -> CorralError:
    """The exception a peer's error reply stands for (the inverse of :func:`to_wire`).

    Args:
        kind: The class name the peer sent ("" if it sent none).
        error: The message.
        code: Pydra's code (an HTTP reply) or the bus ``ErrorReply.code``: the fallback
            when ``kind`` is empty or names no class known here.
        status: The HTTP status (0 on the bus).
        fields: Per-field errors.
        retry_after: A :class:`RetryLater`'s delay.
        step: A :class:`GroupRefused`'s collective number.
        leader: A :class:`NotLeader`'s leader address.

    Returns:
        An instance of the class named by ``kind``, else the closest one by code.
    """
    cls = _BY_KIND.get(kind)
    if cls is None:
        if isinstance(code, str):
            cls = _BY_REPLY_CODE.get(code, Refused)
        else:
            cls = _by_code(code, status, error, fields or {})
    exc = cls(error)
    if status and status != cls.status:
        exc.status = status
    for name, value in (
        ("fields", dict(fields or {})),
        ("retry_after", retry_after),
        ("step", step),
        ("leader", leader),
    ):
        if value and hasattr(exc, name):
            setattr(exc, name, value)
    return exc
