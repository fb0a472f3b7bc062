"""Dashboard users: a name, a role and a scrypt hash of the password.

Revision ID: 0004_users
Revises: 0003_commands
Create Date: 2026-11-23

A frozen snapshot: it spells the table out instead of importing ``corral.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_users"
down_revision: str | Sequence[str] | None = "0003_commands"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``users``."""
    op.create_table(
        "users",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
    )


def downgrade() -> None:
    """Drop ``users``."""
    op.drop_table("users")
