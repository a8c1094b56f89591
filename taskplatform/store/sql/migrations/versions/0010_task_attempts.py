"""task attempts: the history of every attempt of a task

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Attempts that ended before have no record (a task's ``error_info`` still holds its last error).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from taskplatform.store.sql.schema import UTCDateTime

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "task_attempts",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(255), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error_type", sa.String(255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("retried", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_task_attempts_task", "task_attempts", ["task_id", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_task_attempts_task", table_name="task_attempts")
    op.drop_table("task_attempts")
