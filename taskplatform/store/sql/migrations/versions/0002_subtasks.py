"""sub-tasks: awaiting parents, last event id, the roll-up ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("last_event_id", sa.String(64), nullable=True))
    op.add_column(
        "tasks",
        sa.Column("awaiting_children", sa.Boolean, nullable=False, server_default=sa.text("false")),
    )
    op.create_table(
        "task_rollups",
        sa.Column("child_id", sa.String(64), primary_key=True),
        sa.Column("parent_id", sa.String(64), nullable=False),
        sa.Column("bucket", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_task_rollups_parent", "task_rollups", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_task_rollups_parent", table_name="task_rollups")
    op.drop_table("task_rollups")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("awaiting_children")
        batch.drop_column("last_event_id")
