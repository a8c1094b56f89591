"""idempotency keys: the fingerprint of the submission that created the task

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12

A key reused with another submission is refused by comparing fingerprints. Tasks created
before keep the column NULL and are not compared (a reuse of their key returns them, as before).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("idempotency_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("idempotency_fingerprint")
