"""task targets: where a task may run, and its node alone for the fleet sweep's query

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Tasks created before carry no target (NULL): any worker serving their type runs them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("tasks", sa.Column("target", _json(), nullable=True))
    op.add_column("tasks", sa.Column("target_key", sa.String(255), nullable=True))
    op.create_index("ix_tasks_target_key", "tasks", ["target_key", "status"])


def downgrade() -> None:
    op.drop_index("ix_tasks_target_key", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("target_key")
        batch.drop_column("target")
