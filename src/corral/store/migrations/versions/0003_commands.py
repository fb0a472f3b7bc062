"""Commands and their per-node outcomes (SEER's addressed commands).

Revision ID: 0003_commands
Revises: 0002_tasks
Create Date: 2026-11-23

A frozen snapshot: it spells the tables out instead of importing ``corral.store.schema``.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_commands"
down_revision: str | Sequence[str] | None = "0002_tasks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``commands`` and ``command_outcomes``."""
    op.create_table(
        "commands",
        sa.Column("serial", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created", sa.Double(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("nodes", sa.JSON(), nullable=False),
        sa.Column("unknown", sa.JSON(), nullable=False),
        sa.Column("retire_after", sa.Double(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name="pk_commands"),
    )
    op.create_index("ix_commands_created", "commands", ["created"])
    op.create_table(
        "command_outcomes",
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("node", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("stdout", sa.Text(), nullable=False),
        sa.Column("stderr", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("serial", "node", name="pk_command_outcomes"),
    )
    op.create_index("ix_command_outcomes_node", "command_outcomes", ["node"])


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    op.drop_index("ix_command_outcomes_node", table_name="command_outcomes")
    op.drop_table("command_outcomes")
    op.drop_index("ix_commands_created", table_name="commands")
    op.drop_table("commands")
