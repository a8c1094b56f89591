"""dead letters: the tasks' replay generation, dead-letter records, the operators' audit log

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from taskplatform.store.sql.schema import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:  # type: ignore[type-arg]
    return sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("tasks", sa.Column("replays", sa.Integer, nullable=False, server_default=sa.text("0")))
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("task_id", sa.String(255), nullable=True),
        sa.Column("task_type", sa.String(255), nullable=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("error_type", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("record", _json(), nullable=False),
    )
    op.create_index("ix_dead_letters_seen", "dead_letters", ["last_seen_at", "id"])
    op.create_index("ix_dead_letters_status_seen", "dead_letters", ["status", "last_seen_at"])
    op.create_index("ix_dead_letters_type_seen", "dead_letters", ["task_type", "last_seen_at"])
    op.create_index("ix_dead_letters_reason_seen", "dead_letters", ["reason", "last_seen_at"])
    op.create_index("ix_dead_letters_user_seen", "dead_letters", ["user_id", "last_seen_at"])
    op.create_index("ix_dead_letters_error_seen", "dead_letters", ["error_type", "last_seen_at"])
    op.create_index("ix_dead_letters_task", "dead_letters", ["task_id"])
    op.create_index("ix_dead_letters_first_seen", "dead_letters", ["first_seen_at"])
    op.create_table(
        "dead_letter_audit",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("entry", _json(), nullable=False),
    )
    op.create_index("ix_dead_letter_audit_at", "dead_letter_audit", ["at", "id"])
    op.create_table(
        "dead_letter_audit_targets",
        sa.Column("audit_id", sa.String(200), primary_key=True),
        sa.Column("dead_letter_id", sa.String(200), primary_key=True),
    )
    op.create_index(
        "ix_dead_letter_audit_targets_dead_letter", "dead_letter_audit_targets", ["dead_letter_id"]
    )


def downgrade() -> None:
    op.drop_table("dead_letter_audit_targets")
    op.drop_table("dead_letter_audit")
    op.drop_table("dead_letters")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("replays")
