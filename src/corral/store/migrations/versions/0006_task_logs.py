"""What each task instance printed and logged (stdout, stderr, ``ctx.log``), bounded.

Revision ID: 0006_task_logs
Revises: 0005_idempotency
Create Date: 2026-12-04

A frozen snapshot: it spells the column out instead of importing ``corral.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_task_logs"
down_revision: str | Sequence[str] | None = "0005_idempotency"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``task_instances.logs`` (empty for the instances already stored)."""
    with op.batch_alter_table("task_instances") as batch:
        batch.add_column(sa.Column("logs", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    """Drop ``task_instances.logs``."""
    with op.batch_alter_table("task_instances") as batch:
        batch.drop_column("logs")
