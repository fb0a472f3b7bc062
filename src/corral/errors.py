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
    """The group coordinator refused a request (out of step, declared dead, group full)."""


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
    """A collective did not complete in time; ``missing`` holds the ranks that did not arrive."""

    def __init__(self, message: str, missing: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


class GuardianRefused(Refused):
    """A guardian refused a request: wrong mode, held by another manager, no such state."""


class NoSuchGuardian(Unavailable):
    """No live guardian holds the name a request was addressed to."""


class SystemLoadError(UsageError):
    """A guardian system module failed to import, or defines no usable states and edges."""
