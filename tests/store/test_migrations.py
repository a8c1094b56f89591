"""The Alembic migrations and the SQLAlchemy schema describe the same tables."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, bindparam, inspect, text

from taskplatform.models import TaskStatus, utcnow
from taskplatform.models.target import TaskTarget
from taskplatform.models.worker import WorkerRecord, WorkerState
from taskplatform.store.deadletters import DeadLetterFilter
from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.migrate import alembic_config, current_revision
from taskplatform.store.sql.schema import UTCDateTime, metadata
from tests.store.helpers import MIGRATIONS_HEAD, make_dead_letter, make_task, schema_at, sql_url

HEAD = MIGRATIONS_HEAD


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
    url = sql_url(backend, tmp_path, request, "m")
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == HEAD
        async with store.engine.connect() as conn:
            differences = await conn.run_sync(_diff)
        assert differences == []
    finally:
        await store.close()


async def test_upgrading_a_database_with_tasks_keeps_them_and_defaults_the_new_fields(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    async with schema_at(url, "0001") as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, task_type, status, parameters, created_at, updated_at, tags,"
                    " outbox_status) VALUES ('t1', 'generate_summary', 'RUNNING', '{}',"
                    " '2026-01-01 00:00:00', '2026-01-01 00:00:00', '[]', 'published')"
                )
            )
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == HEAD
        got = await store.get("t1")
        assert got is not None and got.awaiting_children is False and got.last_event_id is None
        assert got.version == 1 and got.status.value == "RUNNING" and got.replays == 0
        assert got.metadata == {}
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_upgrading_from_0002_with_tasks_keeps_them_replayable_and_adds_the_dead_letter_tables(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = sql_url(backend, tmp_path, request, "old2")
    async with schema_at(url, "0002") as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, task_type, status, parameters, created_at, updated_at, tags,"
                    " outbox_status, version) VALUES (:id, 'generate_summary', :status, '{}', :at, :at,"
                    " '[]', 'published', 4)"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                [
                    {"id": "dead", "status": "DEAD_LETTER", "at": datetime(2026, 1, 1, tzinfo=UTC)},
                    {"id": "done", "status": "COMPLETED", "at": datetime(2026, 1, 2, tzinfo=UTC)},
                ],
            )
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == HEAD
        done = await store.get("done")
        assert done is not None and done.replays == 0 and done.status is TaskStatus.COMPLETED
        replayed = await store.replay_task("dead", expected_replays=0)
        assert replayed is not None and replayed.replays == 1 and replayed.version == 5
        record, _ = await store.upsert_dead_letter(make_dead_letter(last_seen_at=utcnow()))
        page = await store.list_dead_letters(DeadLetterFilter(task_id=record.task_id))
        assert [r.id for r in page.items] == [record.id]
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_upgrading_from_0005_keeps_dead_letter_bodies_and_stores_new_ones_as_bytes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = sql_url(backend, tmp_path, request, "old5")
    old_record = make_dead_letter(body='{"task_id": "old"}')
    async with schema_at(url, "0005") as engine:
        async with engine.begin() as conn:  # a row as 0005 wrote it: the body inside the JSON
            await conn.execute(
                text(
                    "INSERT INTO dead_letters (id, task_id, task_type, user_id, reason, error_type, status,"
                    " generation, first_seen_at, last_seen_at, version, record) VALUES (:id, :id,"
                    " 'generate_summary', 'alice', 'max_retries', 'ValueError', 'pending', 0, :at, :at, 1,"
                    " :record)"
                ).bindparams(bindparam("at", type_=UTCDateTime())),
                {
                    "id": old_record.id,
                    "at": old_record.last_seen_at,
                    "record": json.dumps(old_record.model_dump(mode="json")),
                },
            )
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == HEAD
        got = await store.get_dead_letter(old_record.id)
        assert got is not None and got.body == '{"task_id": "old"}' and got.body_encoding == "utf-8"
        # a merge rewrites the row: the body moves to the binary column, unchanged
        again, _ = await store.upsert_dead_letter(old_record)
        assert again.times_seen == 2 and again.body == '{"task_id": "old"}'
        async with store.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT body FROM dead_letters WHERE id = :id"), {"id": old_record.id}
                )
            ).first()
        assert row is not None and bytes(row.body) == b'{"task_id": "old"}'
        raw = b"\x00\xff NUL and not UTF-8"
        fresh, _ = await store.upsert_dead_letter(
            make_dead_letter(body=base64.b64encode(raw).decode(), body_encoding="base64")
        )
        stored = await store.get_dead_letter(fresh.id)
        assert stored is not None and stored.body_bytes() == raw
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_0008_adds_the_workers_table_beside_the_tasks_and_its_downgrade_drops_it(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = sql_url(backend, tmp_path, request, "old7")
    async with schema_at(url, "0007") as engine:
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert "workers" not in tables
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == HEAD
        task = make_task()
        await store.create(task)
        now = utcnow()
        record = WorkerRecord(
            node_id="w-1",
            host="h",
            pid=1,
            labels={"role": "db"},
            concurrency=4,
            version="1",
            started_at=now,
            last_seen_at=now,
            heartbeat_seconds=5.0,
            expires_at=now,
        )
        assert await store.beat_worker(record) is None
        assert await store.beat_worker(record) is WorkerState.ONLINE
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0007"))
        async with store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert "workers" not in tables and "tasks" in tables
        async with store.engine.connect() as conn:  # the tasks stay (read raw: the schema is older)
            kept = (await conn.execute(text("SELECT id FROM tasks"))).scalars().all()
        assert kept == [task.id]
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_0009_adds_task_targets_old_tasks_have_none_and_its_downgrade_drops_them(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = sql_url(backend, tmp_path, request, "old8")
    old = make_task()
    async with schema_at(url, "0008") as engine:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, task_type, status, parameters, created_at, updated_at, tags,"
                    " outbox_status) VALUES (:id, 'generate_summary', 'QUEUED', '{}',"
                    " '2026-01-01 00:00:00', '2026-01-01 00:00:00', '[]', 'published')"
                ),
                {"id": old.id},
            )
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == HEAD
        found = await store.get(old.id)
        assert found is not None and found.target is None
        aimed = make_task(target=TaskTarget(node="db-1", target_timeout=5.0))
        await store.create(aimed)
        assert [t.id for t in await store.list_aimed_waiting(limit=10)] == [aimed.id]
        got = await store.get(aimed.id)
        assert got is not None and got.target == aimed.target
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0008"))
        async with store.engine.connect() as conn:
            columns = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("tasks")})
            kept = set((await conn.execute(text("SELECT id FROM tasks"))).scalars().all())
        assert not {"target", "target_key"} & columns and kept == {old.id, aimed.id}
    finally:
        await store.close()
