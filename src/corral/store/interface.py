"""What the rest of corral may ask of the store: :class:`Store` and its two groups.

Callers type against these Protocols; :class:`~corral.store.store.SqlStore` (SQLite or
PostgreSQL) is the implementation, and :func:`open_store` opens it. Every write a method makes
goes through the store's one writer (:mod:`corral.store.writer`): off the event loop, group
committed with every other pending write, answered after the commit. No SQL lives outside
``corral.store``.

- :class:`Store`: the registry (nodes, transitions), the audit log, commands and their
  outcomes, idempotency keys, ``meta``; with ``store.tasks`` and ``store.auth``.
- :class:`TaskRecords` (``store.tasks``): task instances.
- :class:`AuthRecords` (``store.auth``): API tokens, dashboard users and their sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol

import msgspec

from corral.core.taskstate import TaskInstance
from corral.errors import NotLeader
from corral.records import (
    AuditEntry,
    CommandRow,
    IdempotencyRow,
    NodeRecord,
    OutcomeRow,
    SessionRow,
    TokenRow,
    Transition,
    UserRow,
)

from .lease import LeaseTable
from .writes import Written

__all__ = ["AuthRecords", "NodePage", "Page", "Store", "TaskRecords"]


class Page(msgspec.Struct, kw_only=True):
    """One page of task instances, numbered from 1, with where the neighbours are."""

    items: list[TaskInstance]
    page: int
    pages: int
    per_page: int
    total: int
    prev: int | None = None
    next: int | None = None


class NodePage(msgspec.Struct, kw_only=True):
    """One page of stored nodes, numbered from 1."""

    items: list[NodeRecord]
    page: int
    pages: int
    per_page: int
    total: int


class TaskRecords(Protocol):
    """Task instances (``store.tasks``)."""

    async def commit(
        self, rows: Sequence[dict[str, Any]], extra: Sequence[IdempotencyRow | AuditEntry] = ()
    ) -> Written:
        """Upsert instances (dicts of their fields) with ``extra`` in one transaction."""

    async def load_active(self) -> list[TaskInstance]:
        """Every unfinished instance, oldest first."""

    async def max_id(self) -> int:
        """The highest instance id stored (0 when none)."""

    async def get(self, ident: int) -> TaskInstance | None:
        """One instance by id, or ``None``."""

    async def children(self, parent: int) -> list[TaskInstance]:
        """The instances ``parent``'s maps created, by id."""

    async def get_many(self, ids: Iterable[int]) -> list[TaskInstance]:
        """The instances with these ids that exist, by id."""

    async def page(
        self,
        *,
        page: int = 1,
        per_page: int = 10,
        key: str | None = None,
        statuses: Sequence[str] = (),
        toplevel: bool = False,
        newest_first: bool = True,
    ) -> Page:
        """One page of instances, filtered in SQL."""

    async def keys(self) -> list[str]:
        """Every task key that has instances."""


class AuthRecords(Protocol):
    """API tokens, dashboard users and sessions (``store.auth``); each write of a token or a
    user takes its audit entry."""

    async def add_token(self, row: TokenRow, audit: AuditEntry | None = None) -> None:
        """Store a new token."""

    async def revoke_token(self, ident: str, at: float, audit: AuditEntry | None = None) -> bool:
        """Revoke a live token; whether there was one."""

    async def tokens(self) -> list[TokenRow]:
        """Every token, oldest first."""

    async def token(self, ident: str) -> TokenRow | None:
        """One token by id, or ``None``."""

    async def add_user(self, row: UserRow, audit: AuditEntry | None = None) -> bool:
        """Store a new user; ``False`` if the name is taken."""

    async def remove_user(self, name: str, audit: AuditEntry | None = None) -> bool:
        """Remove a user; whether there was one."""

    async def user(self, name: str) -> UserRow | None:
        """One user by name, or ``None``."""

    async def users(self) -> list[UserRow]:
        """Every user, by name."""

    async def add_session(self, row: SessionRow, purge_before: float | None = None) -> None:
        """Store a dashboard session, purging those expired before ``purge_before``."""

    async def remove_session(self, hash: str) -> bool:
        """End a session by its id's hash; whether there was one."""

    async def purge_sessions(self, before: float) -> int:
        """Delete the sessions expired before ``before``; how many."""

    async def session(self, hash: str) -> SessionRow | None:
        """One session by its id's hash, or ``None``."""

    async def sessions(self) -> list[SessionRow]:
        """Every stored session, oldest first."""


class Store(Protocol):
    """The controller's persistent state (see the module's documentation).

    Every method raises :class:`~corral.errors.StoreError` and nothing else on failure;
    :class:`~corral.errors.TransientStoreError` when a retry may cure it.
    """

    @property
    def tasks(self) -> TaskRecords:
        """Task instances."""

    @property
    def auth(self) -> AuthRecords:
        """API tokens and dashboard users."""

    @property
    def lease(self) -> LeaseTable:
        """The leader's lease and the controllers' rows (several controllers)."""

    @property
    def url(self) -> str:
        """The normalized URL (with its password, if any)."""

    @property
    def masked_url(self) -> str:
        """The URL with any password hidden, for messages."""

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""

    async def close(self) -> None:
        """Write what is pending and close. Closing twice is harmless."""

    async def __aenter__(self) -> Store:
        """The store itself."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""

    # writes
    async def commit(
        self,
        nodes: Sequence[NodeRecord] = (),
        transitions: Sequence[Transition] = (),
        audit: Sequence[AuditEntry] = (),
        commands: Sequence[CommandRow] = (),
        outcomes: Sequence[OutcomeRow] = (),
        idempotency: Sequence[IdempotencyRow] = (),
        prune_keys_before: float | None = None,
    ) -> Written:
        """Write the registry's batch in one transaction; bad records isolated."""

    async def delete_node(self, name: str) -> bool:
        """Forget a node (its history stays); whether there was one."""

    async def set_meta(self, key: str, value: str) -> None:
        """Set a ``meta`` value."""

    def set_fence(
        self, holder: str, epoch: int, on_fenced: Callable[[NotLeader], None] | None
    ) -> None:
        """Make every later write conditional on ``holder`` holding the lease at ``epoch``
        (``epoch`` -1: refuse every write, a standby); ``on_fenced`` is called on the event
        loop when the fence refused a write."""

    # reads
    async def load_nodes(self) -> list[NodeRecord]:
        """Every stored node, by name."""

    async def node_page(self, page: int = 1, per_page: int = 25) -> NodePage:
        """One page of the stored nodes, by name."""

    async def get_node(self, name: str) -> NodeRecord | None:
        """One node by name, or ``None``."""

    async def transitions(self, node: str | None = None, limit: int = 100) -> list[Transition]:
        """Recent status transitions, newest first."""

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        """Recent audit entries, newest first."""

    async def get_meta(self, key: str) -> str | None:
        """A ``meta`` value, or ``None``."""

    async def last_command_serial(self) -> int:
        """The highest command serial ever issued (0 if none)."""

    async def recent_commands(
        self, limit: int = 50, before: int | None = None
    ) -> list[tuple[CommandRow, dict[str, int]]]:
        """Commands newest first, each with how many of its nodes are in each state."""

    async def get_command(self, serial: int) -> tuple[CommandRow, list[OutcomeRow]] | None:
        """One command and every node's outcome, or ``None``."""

    async def open_commands(self, since: float) -> list[tuple[CommandRow, list[OutcomeRow]]]:
        """Commands created after ``since`` with a node that has not finished."""

    async def commands_between(self, after: int, upto: int, limit: int) -> list[CommandRow]:
        """Commands with serials in ``(after, upto]``, with bodies, oldest first, at most
        ``limit``."""

    async def find_key(self, caller: str, key: str, since: float) -> IdempotencyRow | None:
        """The stored answer to an idempotency key written at ``since`` or later."""

    async def recent_keys(self, since: float, limit: int) -> list[tuple[str, str]] | None:
        """Every idempotency key written at ``since`` or later, if at most ``limit``."""
