"""idempotency keys: one task per (user, key)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("idempotency_scope", sa.String(64), nullable=True))
    op.create_index("ux_tasks_idempotency", "tasks", ["idempotency_scope"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_tasks_idempotency", table_name="tasks")
    op.drop_column("tasks", "idempotency_scope")
