"""Retention in a running platform: finished tasks go once their time is up, nothing else does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from taskplatform.models import TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest
from tests.support.runtime import eventually, running

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_finished_tasks_are_deleted_after_the_retention_and_waiting_ones_stay(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, backend: str, request: pytest.FixtureRequest
) -> None:
    store = {"store_url": request.getfixturevalue("postgres_database_url")} if backend == "postgresql" else {}
    runtime = make_runtime(
        role="dev",
        task_retention_seconds=2.0,
        retention_interval_seconds=0.2,
        reaper_interval_seconds=0.2,
        **store,
    )
    async with running(runtime):
        done = await runtime.submitter.submit_many([SubmitRequest(task_type="test_noop") for _ in range(5)])
        ids = [d.task.id for d in done]

        async def completed() -> bool:
            tasks = [await runtime.store.get(i) for i in ids]
            return all(t is not None and t.status is TaskStatus.COMPLETED for t in tasks)

        await eventually(completed, timeout=10)
        await runtime.consumer.stop(grace=1)  # type: ignore[union-attr]  # this one must wait
        waiting = await runtime.submitter.submit(SubmitRequest(task_type="test_noop"))
        first = await runtime.store.get(ids[0])
        assert first is not None and first.completed_at is not None

        async def purged() -> bool:
            return all([await runtime.store.get(i) is None for i in ids])

        await eventually(purged, timeout=10)
        assert runtime.reaper.purged >= 5
        kept = await runtime.store.get(waiting.task.id)
        assert kept is not None and kept.status is TaskStatus.QUEUED
