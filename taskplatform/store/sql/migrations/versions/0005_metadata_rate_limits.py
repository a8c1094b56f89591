"""task metadata, the completed_at index (retention), rate-limit state

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskplatform.store.sql.schema import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column(
        "tasks", sa.Column("metadata", json_type, nullable=False, server_default=sa.text("'{}'"))
    )
    # if_not_exists: on a large table an operator may have built it CONCURRENTLY beforehand
    op.create_index("ix_tasks_completed", "tasks", ["completed_at"], if_not_exists=True)
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("last_wait", sa.Float(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_limits")
    op.drop_index("ix_tasks_completed", table_name="tasks")
    op.drop_column("tasks", "metadata")
