"""Every error corral raises, under one root.

Foreign exceptions (nats-py, sqlite3, psycopg, OS errors) are translated at the boundary
where they happen; a user only ever catches corral's own. The tree::

    CorralError
    ├── UsageError                  the caller asked for something malformed or impossible
    │   ├── ConfigError             a configuration value is missing or wrong
    │   ├── InvalidName             a node name is not a valid subject token
    │   ├── NotInitialized          no data directory / authority yet: run `corral init`
    │   └── SystemLoadError         a guardian system module failed to import or is malformed
    ├── ProtocolError               a peer sent something we cannot accept
    │   ├── MalformedMessage        bytes that do not decode to the expected message
    │   ├── OversizedMessage        a payload larger than the limit for its subject
    │   └── VersionMismatch         the peer speaks another major protocol version
    ├── Refused                     a peer understood and said no (its reason attached)
    │   ├── DuplicateName           a live node (or agent) already holds that name
    │   ├── UnknownMessage          the agent has no handler for that message
    │   ├── AgentError              the agent's handler raised (type and message attached)
    │   ├── Overloaded              the agent's inbox is full
    │   └── GroupRefused            the group coordinator refused (out of step, dead, full)
    │   └── RetryLater              not now; ask again after ``retry_after`` seconds
    │   └── GuardianRefused         a guardian refused a request (mode, holder, no such state)
    ├── AuthError                   the bus refused our credential (unenrolled, revoked, wrong CA)
    ├── Unavailable                 something we need is not there (bus, controller, store)
    │   ├── BusUnavailable          cannot reach NATS
    │   ├── ControllerUnavailable   no controller answers on the bus
    │   ├── NoSuchAgent             no agent holds that name
    │   ├── NoSuchGuardian          no live guardian holds that name
    │   └── StoreError              the SQL store failed
    └── Timeout                     a bounded wait ran out
        └── GroupTimeout            a collective timed out (``missing`` names the ranks)

Every message says what to do next.
"""

from __future__ import annotations

__all__ = [
    "GroupTimeout",
    "IdempotencyKeyReused",
    "GuardianRefused",
    "NoSuchGuardian",
    "SystemLoadError",
    "GroupRefused",
    "UnknownMessage",
    "Overloaded",
    "NoSuchAgent",
    "AgentError",
    "AuthError",
    "BusUnavailable",
    "ConfigError",
    "ControllerUnavailable",
    "CorralError",
    "DuplicateName",
    "InvalidName",
    "MalformedMessage",
    "NotInitialized",
    "OversizedMessage",
    "ProtocolError",
    "Refused",
    "RetryLater",
    "StoreError",
    "Timeout",
    "Unavailable",
    "UsageError",
    "VersionMismatch",
    "RecordRefused",
    "TransientStoreError",
    "InvalidText",
    "InvalidArguments",
]


class CorralError(Exception):
    """Root of every error corral raises."""


class UsageError(CorralError):
    """The caller asked for something malformed or impossible."""


class ConfigError(UsageError):
    """A configuration value is missing or has the wrong type."""


class InvalidName(UsageError):
    """A node, agent or group name cannot be used as a bus subject token."""


class NotInitialized(UsageError):
    """The data directory has no authority (keys, credentials) yet."""


class ProtocolError(CorralError):
    """A peer sent a message we cannot accept."""


class MalformedMessage(ProtocolError):
    """Bytes that do not decode to the message type expected on a subject."""


class OversizedMessage(ProtocolError):
    """A payload larger than the limit for its subject."""


class VersionMismatch(ProtocolError):
    """The peer speaks another major version of the corral protocol."""


class Refused(CorralError):
    """The controller understood a request and refused it; the reason is the message."""


class DuplicateName(Refused):
    """A live node already holds the requested name."""


class RetryLater(Refused):
    """The controller cannot decide yet; ask again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UnknownMessage(Refused):
    """The agent has no handler for the message; the error names those it has."""


class AgentError(Refused):
    """An agent's handler raised; the error carries the exception's type and message."""


class Overloaded(Refused):
    """The agent's inbox is full: retry later."""


class GroupRefused(Refused):
    """The group coordinator refused a request (out of step, declared dead, group full).

    A refused collective was not counted and the member stays in the group; ``step`` is the
    group's current collective number (0 when it does not apply), where the member's next
    collective call will be made.
    """

    def __init__(self, message: str, step: int = 0) -> None:
        super().__init__(message)
        self.step = step


class AuthError(CorralError):
    """The bus refused our credential: not enrolled, revoked, or signed by another authority."""


class Unavailable(CorralError):
    """Something corral needs is not reachable."""


class BusUnavailable(Unavailable):
    """The NATS server cannot be reached."""


class ControllerUnavailable(Unavailable):
    """No controller answers on the bus."""


class NoSuchAgent(Unavailable):
    """No live agent holds the name a message was addressed to."""


class StoreError(Unavailable):
    """The SQL store failed (connection, migration, or a statement)."""


class Timeout(CorralError):
    """A bounded wait ran out before the awaited event happened."""


class GroupTimeout(Timeout):
    """A collective did not complete in time; ``missing`` holds the ranks that did not arrive,
    ``left_out`` why each was left out (dead, departed, out of step, did not arrive)."""

    def __init__(
        self,
        message: str,
        missing: tuple[int, ...] = (),
        left_out: dict[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.left_out = dict(left_out or {})


class GuardianRefused(Refused):
    """A guardian refused a request: wrong mode, held by another manager, no such state."""


class NoSuchGuardian(Unavailable):
    """No live guardian holds the name a request was addressed to."""


class SystemLoadError(UsageError):
    """A guardian system module failed to import, or defines no usable states and edges."""


# --- tasks and the controller API (issue #4) ------------------------------------------------
#
#    CorralError
#    ├── UsageError
#    │   ├── IllegalTransition      a state machine (node, task, command outcome, guardian)
#    │   │                          asked to move where its transition table forbids
#    │   └── NotSerializable        task arguments or a result that msgpack cannot carry
#    ├── Refused
#    │   └── UnknownTask            no node offers that task key
#    ├── TaskFailed                 the awaited task failed or was cancelled (``instance``)
#    ├── TaskStopped                raised inside a task by ``ctx.check_stop()``
#    └── ControllerError            an HTTP controller API call failed; ``code`` is Pydra's
#        ├── AuthenticationFailed   -1: the token was refused (401) or lacks the role (403)
#        │   └── Forbidden          -1, HTTP 403: the token's role may not make this call
#        ├── Disconnected           -2: the controller cannot be reached (or it lost its bus)
#        ├── RemoteError            -3: the remote function refused or raised (4xx/500)
#        │   ├── NotFound           -3, HTTP 404: no such task instance or node
#        │   └── IdempotencyKeyReused  -3, HTTP 422: a key sent again with another request
#        │   └── InvalidArguments   -3, HTTP 422: task arguments that do not fit the task's
#        │                              signature (``fields``: one message per argument)
#        ├── NoKey                  -4: no API token was given
#        ├── UnknownError           -5: anything else
#        └── FunctionNotFound       -6: the controller has no such API function


class IllegalTransition(UsageError):
    """A state machine was asked to move where its transition table forbids.

    The one such error for every machine: a node's status (:mod:`corral.core.registry`), a
    task instance's (:mod:`corral.core.taskstate`), a command's outcome at a node
    (:mod:`corral.core.commands`) and a guardian's phase (:mod:`corral.guardian.machine`).
    """


class NotSerializable(UsageError):
    """Task arguments or a task result that msgpack cannot carry (say which and why)."""


class UnknownTask(Refused):
    """No node offers the task key asked for."""


class TaskFailed(CorralError):
    """The awaited task failed or was cancelled; ``instance`` holds its record."""

    def __init__(self, message: str, instance: object = None) -> None:
        super().__init__(message)
        self.instance = instance


class TaskStopped(CorralError):
    """Raised inside a task by ``ctx.check_stop()`` once a cancel asked it to stop."""


class ControllerError(CorralError):
    """A controller API call failed. ``code`` is Pydra's error code, ``status`` the HTTP one."""

    code = -5

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationFailed(ControllerError):
    """-1: the API token was refused (unknown, revoked) or may not make this call."""

    code = -1


class Forbidden(AuthenticationFailed):
    """-1, HTTP 403: the token is valid but its role may not make this call."""


class Disconnected(ControllerError):
    """-2: the controller cannot be reached, or it is cut off from its bus or store."""

    code = -2


class RemoteError(ControllerError):
    """-3: the remote function refused its arguments or raised."""

    code = -3


class NotFound(RemoteError):
    """-3, HTTP 404: no task instance or node with that id."""


class NoKey(ControllerError):
    """-4: no API token was given (``corral token create``, then ``token=`` or
    ``CORRAL_API_TOKEN``)."""

    code = -4


class UnknownError(ControllerError):
    """-5: any other failure."""

    code = -5


class FunctionNotFound(ControllerError):
    """-6: the controller API has no function of that name."""

    code = -6


class InvalidArguments(RemoteError):
    """-3, HTTP 422: task arguments that do not fit the task function's signature.

    Raised when a task is queued (nothing is stored then). ``fields`` maps each argument at
    fault to what is wrong with it (Pydra's per-field errors), e.g. ``{"count": "expected
    int, got str"}``; in ``queue_tasks`` the names are ``args[<i>].<name>``.
    """

    def __init__(self, message: str, status: int = 422, fields: dict[str, str] | None = None):
        super().__init__(message, status)
        self.fields: dict[str, str] = dict(fields or {})


# --- poison-proof writes (issue #12) --------------------------------------------------------
#
#    CorralError
#    ├── UsageError
#    │   └── InvalidText            a name holds NUL or another control character (also a
#    │                              ValueError, so a request struct that checks it is invalid)
#    ├── Refused
#    │   └── RecordRefused          the store refused one record for its data (NUL, constraint,
#    │                              value too large); the rest of its batch was written
#    └── Unavailable
#        └── StoreError
#            └── TransientStoreError  a failure a retry may cure (connection lost, locked,
#                                     serialization failure, deadlock, disk full)


class InvalidText(UsageError, ValueError):
    """A name (node, label, key, target...) holds NUL or another control character.

    The message names the field and the character. Also a :class:`ValueError`, so that a
    msgspec request struct whose ``__post_init__`` checks its names fails validation.
    """


class RecordRefused(Refused):
    """The store refused one record because of its data; the message names it and why.

    Nothing else was lost: the other records of the same batch were written. Sending the
    same data again fails the same way; fix the data (the message says which field).
    """


class TransientStoreError(StoreError):
    """The store failed for a reason that is not the data's: a retry may succeed.

    Connection lost, database locked, lock or statement timeout, serialization failure,
    deadlock, disk full, a schema that does not match. Writers retry these with backoff.
    """


class IdempotencyKeyReused(RemoteError):
    """-3, HTTP 422: an idempotency key came back with another request than its first.

    A key names one submission: send a new key for a new request (the Python clients make
    one per call), or the same request again to get the first answer.
    """
