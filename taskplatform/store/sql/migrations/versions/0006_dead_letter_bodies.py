"""dead letters: the body as bytes (a binary column), so any body is storable

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10

Rows written before keep their body in the JSON ``record`` (the column stays NULL) and are
read from there; the next write of such a record moves it to the column.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("body", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # The bodies in the column go with it (a record read after the downgrade shows none).
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("body")
