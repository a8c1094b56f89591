"""Shared helpers of the store contract suites."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models import BackgroundTask, DeadLetter, DeathRecord, ErrorInfo, new_task_id, utcnow
from taskplatform.store import BaseTaskStore

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
