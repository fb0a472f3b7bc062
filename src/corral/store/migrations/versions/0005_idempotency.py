"""Idempotency keys of submissions, and the role of each audit entry's actor.

Revision ID: 0005_idempotency
Revises: 0004_users
Create Date: 2026-12-04

A frozen snapshot: it spells the table out instead of importing ``corral.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_idempotency"
down_revision: str | Sequence[str] | None = "0004_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``idempotency_keys``; add ``audit_log.role``."""
    op.create_table(
        "idempotency_keys",
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("function", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("answer", sa.LargeBinary(), nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("caller", "key", name="pk_idempotency_keys"),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created"])
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("role", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    """Drop ``idempotency_keys`` and ``audit_log.role``."""
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("role")
    op.drop_index("ix_idempotency_keys_created", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
