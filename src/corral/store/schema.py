"""The SQL schema of the store, as SQLAlchemy Core tables.

This module describes the schema at the *head* migration; the migrations under
``corral/store/migrations/versions`` are what actually create it, and each one is a frozen
snapshot that never imports this module. Change both together: add a new migration, then
update the tables here to match.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)

__all__ = [
    "api_tokens",
    "audit_log",
    "command_outcomes",
    "commands",
    "controller_lease",
    "controllers",
    "dashboard_sessions",
    "idempotency_keys",
    "meta",
    "metadata",
    "node_transitions",
    "nodes",
    "task_instances",
    "users",
]

# Explicit constraint/index names so migrations and metadata agree on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an ``INTEGER PRIMARY KEY``, never a ``BIGINT`` one.
_ID = BigInteger().with_variant(Integer(), "sqlite")

nodes = Table(
    "nodes",
    metadata,
    Column("name", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("since", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("joined_at", Double, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("interfaces", JSON, nullable=False),
    Column("attributes", JSON, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", Text, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("instance", Text, nullable=False),
    Column("last_serial", BigInteger, nullable=False),
)

node_transitions = Table(
    "node_transitions",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("node", Text, nullable=False),
    Column("old", Text, nullable=False),
    Column("new", Text, nullable=False),
    Column("at", Double, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_node_transitions_node", "node"),
    Index("ix_node_transitions_at", "at"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", JSON, nullable=False),
    # the actor's role as the controller derived it (migration 0005_idempotency)
    Column("role", Text, nullable=False, server_default=""),
)

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

commands = Table(
    "commands",
    metadata,
    Column("serial", BigInteger, primary_key=True, autoincrement=False),
    Column("created", Double, nullable=False),
    Column("actor", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("targets", JSON, nullable=False),
    Column("nodes", JSON, nullable=False),
    Column("unknown", JSON, nullable=False),
    Column("retire_after", Double, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("ix_commands_created", "created"),
)

command_outcomes = Table(
    "command_outcomes",
    metadata,
    Column("serial", BigInteger, nullable=False),
    Column("node", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("at", Double, nullable=False),
    Column("result", JSON, nullable=True),
    Column("error", Text, nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("stdout", Text, nullable=False),
    Column("stderr", Text, nullable=False),
    PrimaryKeyConstraint("serial", "node", name="pk_command_outcomes"),
    Index("ix_command_outcomes_node", "node"),
)


# --- tasks and API tokens (issue #4; migration 0002_tasks) ----------------------------------

task_instances = Table(
    "task_instances",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("key", Text, nullable=False),
    Column("args", LargeBinary, nullable=False),
    Column("priority", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("parent", BigInteger, nullable=True),
    Column("item", Integer, nullable=True),
    Column("labels", JSON, nullable=False),
    Column("node", Text, nullable=False),
    Column("worker", Integer, nullable=False),
    Column("lease", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("queued_at", Double, nullable=False),
    Column("started_at", Double, nullable=True),
    Column("finished_at", Double, nullable=True),
    Column("progress", Double, nullable=False),
    Column("message", Text, nullable=False),
    Column("result", LargeBinary, nullable=True),
    Column("error", Text, nullable=False),
    Column("traceback", Text, nullable=False),
    Column("force", Boolean, nullable=False),
    Column("cancel_at", Double, nullable=True),
    Column("history", JSON, nullable=False),
    # what the task printed and logged, bounded (migration 0006_task_logs)
    Column("logs", Text, nullable=False, server_default=""),
    Index("ix_task_instances_key", "key", "id"),
    Index("ix_task_instances_status", "status", "id"),
    Index("ix_task_instances_parent", "parent"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("hash", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("name", Text, primary_key=True),
    Column("role", Text, nullable=False),
    # scrypt$<n>$<r>$<p>$<salt hex>$<key hex>: never the password itself
    Column("hash", Text, nullable=False),
    Column("created_at", Double, nullable=False),
)

#: Dashboard sign-ins (migration 0008_dashboard_sessions): SHA-256 of the cookie's value,
#: never the value itself; ``token`` is a token's id, never the token.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("hash", Text, primary_key=True),
    Column("user_name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token", Text, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Index("ix_dashboard_sessions_expires_at", "expires_at"),
)


# --- idempotent submissions (issue #12; migration 0005_idempotency) -------------------------

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # who sent the key (a token id, a bus credential): keys of different callers never meet
    Column("caller", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("function", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    # the first answer, as JSON, returned again for a repeat within the window
    Column("answer", LargeBinary, nullable=False),
    Column("created", Double, nullable=False),
    PrimaryKeyConstraint("caller", "key", name="pk_idempotency_keys"),
    Index("ix_idempotency_keys_created", "created"),
)

#: The leader's lease: one row (``id`` 1). ``expires`` is judged by the database's clock;
#: ``epoch`` grows at every takeover and fences the leader's writes (corral.store.lease).
controller_lease = Table(
    "controller_lease",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires", Double, nullable=False),
    Column("address", Text, nullable=False),
)

#: Every controller, leader or standby, as it last said (``corral status``).
controllers = Table(
    "controllers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("address", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
)
