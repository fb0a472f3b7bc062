"""Dashboard sign-in sessions in the store, so they survive a restart or a takeover.

Revision ID: 0008_dashboard_sessions
Revises: 0007_leadership
Create Date: 2026-12-04

A frozen snapshot: it spells the table out instead of importing ``corral.store.schema``.
Only a SHA-256 of each session id is stored, never the id (the cookie's value).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_dashboard_sessions"
down_revision: str | Sequence[str] | None = "0007_leadership"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``dashboard_sessions``."""
    op.create_table(
        "dashboard_sessions",
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("user_name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_dashboard_sessions"),
    )
    op.create_index(
        "ix_dashboard_sessions_expires_at", "dashboard_sessions", ["expires_at"], unique=False
    )


def downgrade() -> None:
    """Drop ``dashboard_sessions``."""
    op.drop_index("ix_dashboard_sessions_expires_at", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
