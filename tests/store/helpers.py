"""Shared helpers of the store contract suites."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from taskplatform.models import BackgroundTask, DeadLetter, DeathRecord, ErrorInfo, new_task_id, utcnow
from taskplatform.store import BaseTaskStore
from taskplatform.store.sql import SqlTaskStore
from taskplatform.store.sql.migrate import upgrade

NODE = "node-a"


def make_task(**overrides: object) -> BackgroundTask:
    fields: dict[str, object] = {
        "task_type": "generate_summary",
        "parameters": {"text": "x", "max_sentences": 1},
    }
    fields.update(overrides)
    return BackgroundTask.model_validate(fields)


def close_in_time(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) < timedelta(milliseconds=1)  # type: ignore[operator]  # BSON keeps milliseconds


async def claim(
    store: BaseTaskStore, task: BackgroundTask, *, node: str = NODE, lease: float = 60
) -> BackgroundTask | None:
    return await store.try_set_running(
        task.id, attempt=task.retry_count, node_id=node, lease_until=utcnow() + timedelta(seconds=lease)
    )


def make_dead_letter(**overrides: object) -> DeadLetter:
    """A pending dead letter of a fresh task (its id is the task id), seen just now."""
    task_id = str(overrides.pop("task_id", new_task_id()))
    fields: dict[str, object] = {
        "id": task_id,
        "task_id": task_id,
        "task_type": "generate_summary",
        "user_id": "alice",
        "reason": "max_retries",
        "error_type": "ValueError",
        "error_info": ErrorInfo(type="ValueError", message="boom", attempt=2, reason="max_retries"),
        "attempt": 2,
        "exchange": "tasks.exchange",
        "routing_key": "generate_summary",
        "body": '{"task_id": "x"}',
        "properties": {"message_id": f"{task_id}:2", "delivery_mode": 2},
        "headers": {"x-dead-reason": "max_retries", "x-retry-count": 2},
        "x_death": [DeathRecord(reason="rejected", queue="tasks.work.default", count=1, time=utcnow())],
    }
    fields.update(overrides)
    return DeadLetter.model_validate(fields)


def sql_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest, name: str) -> str:
    """A SQLite file of this test, or a fresh PostgreSQL database of its own (never migrated)."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
    return str(request.getfixturevalue("own_postgres_database_url"))


@contextlib.asynccontextmanager
async def schema_at(url: str, revision: str) -> AsyncIterator[AsyncEngine]:
    """The store at ``url`` migrated only as far as ``revision`` (an older schema), to write rows
    as that version wrote them; closed on exit."""
    old = SqlTaskStore(url, auto_migrate=False)
    await old.open()
    try:
        await upgrade(old.engine, revision)
        yield old.engine
    finally:
        await old.close()


#: The newest migration: what a store opened on any older schema upgrades to.
MIGRATIONS_HEAD = "0011"
