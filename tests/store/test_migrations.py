"""The Alembic migrations and the SQLAlchemy schema describe the same tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.migrate import current_revision, upgrade
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
        assert await current_revision(store.engine) == "0002"
        async with store.engine.connect() as conn:
            differences = await conn.run_sync(_diff)
        assert differences == []
    finally:
        await store.close()


async def test_upgrading_a_database_with_tasks_keeps_them_and_defaults_the_new_fields(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    old = SqlTaskStore(url, auto_migrate=False)
    await old.open()
    try:
        await upgrade(old.engine, "0001")
        async with old.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, task_type, status, parameters, created_at, updated_at, tags,"
                    " outbox_status) VALUES ('t1', 'generate_summary', 'RUNNING', '{}',"
                    " '2026-01-01 00:00:00', '2026-01-01 00:00:00', '[]', 'published')"
                )
            )
    finally:
        await old.close()
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == "0002"
        got = await store.get("t1")
        assert got is not None and got.awaiting_children is False and got.last_event_id is None
        assert got.version == 1 and got.status.value == "RUNNING"
    finally:
        await store.close()
