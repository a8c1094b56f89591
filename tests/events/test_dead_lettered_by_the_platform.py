"""A TaskDeadLettered from the platform (the DLQ consumer) is applied at the attempt it names,
and never to a task running under a live lease (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from taskplatform.events import EventBus, TaskDeadLettered
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.models import Origin
from taskplatform.models import BackgroundTask, TaskStatus, utcnow
from taskplatform.store.sql import SqlTaskStore


@pytest.fixture(params=["sqlite", "postgresql"])
async def parts(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SqlTaskStore, EventBus]]:
    url = (
        f"sqlite+aiosqlite:///{tmp_path}/tasks.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_database_url")
    )
    store = SqlTaskStore(url)
    await store.open()
    bus = EventBus()
    StateAggregator(store, bus, node_id="node").attach()
    bus.start()
    try:
        yield store, bus
    finally:
        await bus.close()
        await store.close()


def _dead(task: BackgroundTask, attempt: int) -> TaskDeadLettered:
    return TaskDeadLettered(
        task_id=task.id,
        task_type=task.task_type,
        origin=Origin.PLATFORM,
        attempt=attempt,
        node_id="dlq",
        reason="delivery_limit",
    )


async def test_a_running_task_under_a_live_lease_is_not_dead_lettered_by_the_platform(
    parts: tuple[SqlTaskStore, EventBus],
) -> None:
    store, bus = parts
    task = BackgroundTask(task_type="test_noop", parameters={})
    await store.create(task)
    lease = utcnow() + timedelta(seconds=60)
    running = await store.try_set_running(task.id, attempt=0, node_id="owner", lease_until=lease)
    assert running is not None

    delivery = await bus.publish(_dead(task, 0), running)
    assert not delivery.accepted
    after = await store.get(task.id)
    assert after is not None and after.status is TaskStatus.RUNNING and after.version == running.version


async def test_a_waiting_task_is_dead_lettered_by_the_platform_only_at_the_attempt_named(
    parts: tuple[SqlTaskStore, EventBus],
) -> None:
    store, bus = parts
    task = BackgroundTask(task_type="test_noop", parameters={}, retry_count=1)
    await store.create(task)
    assert not (await bus.publish(_dead(task, 0), task)).accepted  # an earlier attempt's message
    assert (await store.get(task.id)).status is TaskStatus.QUEUED  # type: ignore[union-attr]
    delivery = await bus.publish(_dead(task, 1), task)
    assert delivery.accepted and delivery.task is not None and delivery.task.status is TaskStatus.DEAD_LETTER
