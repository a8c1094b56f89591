"""tasks table

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from taskplatform.store.sql.schema import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("task_type", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("parameters", _json(), nullable=False),
        sa.Column("progress", _json(), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error_info", _json(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("execution_node_id", sa.String(255), nullable=True),
        sa.Column("parent_task_id", sa.String(64), nullable=True),
        sa.Column("sub_task_status_summary", _json(), nullable=True),
        sa.Column("version", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("tags", _json(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("outbox_status", sa.String(16), nullable=False),
        sa.Column("outbox_attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("outbox_lease_until", UTCDateTime(), nullable=True),
        sa.Column("outbox_lease_owner", sa.String(255), nullable=True),
        sa.Column("outbox_published_at", UTCDateTime(), nullable=True),
        sa.Column("outbox_last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_tasks_created", "tasks", ["created_at", "id"])
    op.create_index("ix_tasks_status_created", "tasks", ["status", "created_at"])
    op.create_index("ix_tasks_type_created", "tasks", ["task_type", "created_at"])
    op.create_index("ix_tasks_user_created", "tasks", ["user_id", "created_at"])
    op.create_index("ix_tasks_parent", "tasks", ["parent_task_id"])
    op.create_index(
        "ix_tasks_outbox_pending",
        "tasks",
        ["created_at"],
        postgresql_where=sa.text("outbox_status = 'pending'"),
        sqlite_where=sa.text("outbox_status = 'pending'"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_tasks_tags", "tasks", ["tags"], postgresql_using="gin")


def downgrade() -> None:
    op.drop_table("tasks")
