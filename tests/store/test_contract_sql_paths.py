"""SQL specifics (SQLite and PostgreSQL): a time without a zone never reaches SQLite, and
migrations run only with the connection the platform hands them (an in-memory SQLite database
included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import StaticPool

from taskplatform.errors import StoreError
from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.migrate import alembic_config, current_revision, upgrade
from taskplatform.store.sql.pg_fast import PgFastPath


@pytest.fixture(params=["sqlite", "postgresql"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlTaskStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/tasks.db"
    else:
        url = request.getfixturevalue("own_postgres_database_url")
    store = SqlTaskStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_time_without_a_zone_is_refused_before_it_reaches_sqlite(sql_store: SqlTaskStore) -> None:
    if sql_store.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL leaves binding times to asyncpg (UTCDateTime.bind_processor)")
    with pytest.raises(StoreError, match="naive datetime given to the store"):
        await sql_store.list_lapsed(before=datetime(2026, 1, 1), limit=1)


def test_migrations_refuse_to_run_without_the_platforms_connection() -> None:
    with pytest.raises(RuntimeError, match="taskplatform db upgrade"):
        command.upgrade(alembic_config(), "head")


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
async def test_an_in_memory_sqlite_database_is_migrated_without_a_lock_file(url: str, tmp_path: Path) -> None:
    engine = create_async_engine(url, poolclass=StaticPool)  # one connection: one in-memory database
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert await current_revision(engine) == head
    finally:
        await engine.dispose()


async def test_a_store_not_opened_refuses_its_operations_and_closes_quietly() -> None:
    store = SqlTaskStore("sqlite+aiosqlite:///never-opened.db")
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    with pytest.raises(StoreError, match="not open"):
        _ = store.engine
    await store.close()  # nothing to release
    assert await store.answers() is False


async def test_opening_an_open_store_again_keeps_its_engine(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db")
    await store.open()
    try:
        engine = store.engine
        await store.open()
        assert store.engine is engine
    finally:
        await store.close()


async def test_a_database_file_that_cannot_be_opened_fails_open_with_a_store_error(tmp_path: Path) -> None:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}")  # a directory, not a file
    with pytest.raises(StoreError, match="cannot open store"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):  # and it is left closed
        _ = store.engine


@pytest.mark.parametrize("auto_migrate", [True, False], ids=["migrating", "not-migrating"])
async def test_a_postgresql_server_that_does_not_answer_fails_open_with_a_store_error(
    auto_migrate: bool,
) -> None:
    store = SqlTaskStore("postgresql+asyncpg://postgres@127.0.0.1:1/none", auto_migrate=auto_migrate)
    with pytest.raises(StoreError, match="cannot reach store|cannot open store|store operation failed"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        _ = store.engine


async def test_an_in_memory_sqlite_store_opens_without_a_directory_to_make() -> None:
    store = SqlTaskStore("sqlite+aiosqlite:///:memory:")
    await store.open()
    try:
        await store.ping()
    finally:
        await store.close()


async def test_the_postgresql_fast_path_closes_quietly_when_never_opened() -> None:
    fast = PgFastPath("postgresql://postgres@127.0.0.1:1/none", max_size=1)
    await fast.close()
    await fast.close()
