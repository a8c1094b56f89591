"""The Alembic migrations and the SQLAlchemy schema describe the same tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.migrate import current_revision
from taskplatform.store.sql.schema import metadata


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return [d for d in compare_metadata(context, metadata) if not _is_backend_only_index(d)]


def _is_backend_only_index(diff: Any) -> bool:
    # The GIN index on tags exists only on PostgreSQL and only in the migration.
    return isinstance(diff, tuple) and diff[0] == "remove_index" and diff[1].name == "ix_tasks_tags"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_migrated_database_matches_the_schema(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite+aiosqlite:///{tmp_path}/m.db"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_database_url")
    )
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == "0001"
        async with store.engine.connect() as conn:
            differences = await conn.run_sync(_diff)
        assert differences == []
    finally:
        await store.close()
