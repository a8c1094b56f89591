"""Shared helpers of the store contract suites."""

from __future__ import annotations

from datetime import timedelta

from taskplatform.models import BackgroundTask, utcnow
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
