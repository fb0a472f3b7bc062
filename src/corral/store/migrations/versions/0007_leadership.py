"""Several controllers: the leader's lease (with its fencing epoch) and every controller's row.

Revision ID: 0007_leadership
Revises: 0006_task_logs
Create Date: 2026-12-04

A frozen snapshot: it spells the tables out instead of importing ``corral.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_leadership"
down_revision: str | Sequence[str] | None = "0006_task_logs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``controller_lease`` (one row, nobody holding it, epoch 0) and ``controllers``."""
    lease = op.create_table(
        "controller_lease",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.Double(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_controller_lease"),
    )
    op.bulk_insert(lease, [{"id": 1, "holder": "", "epoch": 0, "expires": 0.0, "address": ""}])
    op.create_table(
        "controllers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_controllers"),
    )


def downgrade() -> None:
    """Drop ``controllers`` and ``controller_lease``."""
    op.drop_table("controllers")
    op.drop_table("controller_lease")
