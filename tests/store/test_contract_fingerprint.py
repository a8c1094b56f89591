"""The TaskStore contract, idempotency fingerprints: the submission that created a task with an
idempotency key is kept with it, on every backend (a reuse of the key is compared with it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text

from taskplatform.models.task import idempotency_scope, submission_fingerprint
from taskplatform.store import BaseTaskStore
from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.migrate import alembic_config, current_revision
from tests.store.helpers import MIGRATIONS_HEAD, make_task, schema_at, sql_url


async def test_the_fingerprint_is_kept_with_the_task(store: BaseTaskStore) -> None:
    fingerprint = submission_fingerprint({"task_type": "generate_summary", "parameters": {"text": "x"}})
    keyed = make_task(user_id="u1", idempotency_key="order-42", idempotency_fingerprint=fingerprint)
    plain = make_task(user_id="u1")
    await store.create_many([keyed, plain])
    found = await store.find_by_idempotency_key("u1", "order-42")
    assert found is not None and found.id == keyed.id and found.idempotency_fingerprint == fingerprint
    got, got_plain = await store.get(keyed.id), await store.get(plain.id)
    assert got is not None and got.idempotency_fingerprint == fingerprint
    assert got_plain is not None and got_plain.idempotency_fingerprint is None


async def test_changing_a_waiting_task_keeps_its_fingerprint(store: BaseTaskStore) -> None:
    keyed = make_task(user_id="u1", idempotency_key="k", idempotency_fingerprint="f" * 64)
    await store.create(keyed)
    changed = await store.amend_queued(keyed.id, priority=7, tags=["new"], metadata={"a": 1})
    assert changed is not None and changed.priority == 7
    found = await store.find_by_idempotency_key("u1", "k")
    assert found is not None and found.idempotency_fingerprint == "f" * 64


async def test_a_key_without_a_fingerprint_reads_as_none(store: BaseTaskStore) -> None:
    # Tasks created before fingerprints were kept (and by callers that keep none).
    await store.create(make_task(user_id="u1", idempotency_key="old"))
    found = await store.find_by_idempotency_key("u1", "old")
    assert found is not None and found.idempotency_fingerprint is None


def test_the_fingerprint_ignores_key_order_but_not_values() -> None:
    one = submission_fingerprint({"a": 1, "b": {"x": [1, 2], "y": "z"}})
    assert one == submission_fingerprint({"b": {"y": "z", "x": [1, 2]}, "a": 1})
    assert one != submission_fingerprint({"a": 1, "b": {"x": [2, 1], "y": "z"}})
    assert one != submission_fingerprint({"a": 1.5, "b": {"x": [1, 2], "y": "z"}})
    assert len(one) == 64 and int(one, 16) >= 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_upgrading_from_0006_leaves_keyed_tasks_without_a_fingerprint(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = sql_url(backend, tmp_path, request, "old6")
    async with schema_at(url, "0006") as engine:
        row = make_task(user_id="u1", idempotency_key="order-1")
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, user_id, task_type, status, parameters, created_at, updated_at,"
                    " tags, idempotency_key, idempotency_scope, outbox_status) VALUES (:id, 'u1',"
                    " 'generate_summary', 'QUEUED', '{}', '2026-01-01 00:00:00', '2026-01-01 00:00:00',"
                    " '[]', 'order-1', :scope, 'published')"
                ),
                {"id": row.id, "scope": idempotency_scope("u1", "order-1")},
            )
    store = SqlTaskStore(url)
    await store.open()
    try:
        assert await current_revision(store.engine) == MIGRATIONS_HEAD
        found = await store.find_by_idempotency_key("u1", "order-1")
        assert found is not None and found.id == row.id and found.idempotency_fingerprint is None
        fresh = make_task(user_id="u1", idempotency_key="order-2", idempotency_fingerprint="a" * 64)
        await store.create(fresh)
        got = await store.find_by_idempotency_key("u1", "order-2")
        assert got is not None and got.idempotency_fingerprint == "a" * 64
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "0006"))
        async with store.engine.connect() as conn:
            columns = await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns("tasks")})
        assert "idempotency_fingerprint" not in columns and "idempotency_scope" in columns
    finally:
        await store.close()
