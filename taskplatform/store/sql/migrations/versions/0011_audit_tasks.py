"""the audit log covers tasks: which tasks each entry names

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Entries made before name no tasks (they were all dead-letter actions; a replay's dead letter id
is its task's id).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_task_targets",
        sa.Column("audit_id", sa.String(200), primary_key=True),
        sa.Column("task_id", sa.String(200), primary_key=True),
    )
    op.create_index("ix_audit_task_targets_task", "audit_task_targets", ["task_id"])
    op.create_index("ix_dead_letter_audit_actor", "dead_letter_audit", ["actor", "at"])


def downgrade() -> None:
    op.drop_index("ix_dead_letter_audit_actor", table_name="dead_letter_audit")
    op.drop_index("ix_audit_task_targets_task", table_name="audit_task_targets")
    op.drop_table("audit_task_targets")
