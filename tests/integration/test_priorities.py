"""Priorities against real RabbitMQ: one quorum queue per level, the worker starts the highest first."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskplatform.models import BackgroundTask, TaskStatus
from taskplatform.runtime import Runtime
from taskplatform.submission import SubmitRequest, Submitted
from tests.support.runtime import eventually, running
from tests.support.services import fresh_postgres_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOW = 1000


@pytest.fixture
def database() -> Iterator[str]:
    """A PostgreSQL database of this test's own: the counts below are over the whole store."""
    with fresh_postgres_database("tp_prio") as url:
        yield url


async def _submit_low(api: Runtime, n: int, *, sleep: float = 0.0) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 100):
        batch = [
            SubmitRequest(task_type="test_noop", parameters={"value": i, "sleep": sleep}, priority=0)
            for i in range(start, min(start + 100, n))
        ]
        ids += [s.task.id for s in await api.submitter.submit_many(batch)]
    return ids


async def _all_done(runtime: Runtime, n: int) -> bool:
    return (await runtime.store.count_by_status()).get(TaskStatus.COMPLETED, 0) >= n


async def _tasks(runtime: Runtime, ids: list[str]) -> list[BackgroundTask]:
    found = [await runtime.store.get(i) for i in ids]
    assert all(t is not None for t in found)
    return [t for t in found if t is not None]


async def _depth(rabbitmq: Any, queue: str) -> int:
    channel = await rabbitmq.channel()
    declared = await channel.declare_queue(queue, passive=True)
    await channel.close()
    return int(declared.declaration_result.message_count)


async def test_a_high_priority_task_submitted_behind_1000_low_ones_starts_first(
    make_runtime: Callable[..., Runtime], database: str, rabbitmq: Any
) -> None:
    store = {"store_url": database}
    api = make_runtime(role="api", consume=False, **store)
    async with running(api):
        low_ids = await _submit_low(api, LOW)
        high = await api.submitter.submit(SubmitRequest(task_type="test_noop", priority=9))
        assert high.published
        # the backlog is in the broker, each priority in its own queue
        assert await _depth(rabbitmq, api.topology.queue_for("test_noop", 0) or "") == LOW
        assert await _depth(rabbitmq, api.topology.queue_for("test_noop", 9) or "") == 1

    worker = make_runtime(prefetch=1, **store)
    async with running(worker):
        await eventually(lambda: _all_done(worker, LOW + 1), timeout=90)
        lows = await _tasks(worker, low_ids)
        (first,) = await _tasks(worker, [high.task.id])
    assert first.started_at is not None and all(t.started_at is not None for t in lows)
    assert first.started_at < min(t.started_at for t in lows if t.started_at)
    assert first.completed_at is not None
    assert sum(1 for t in lows if t.completed_at and t.completed_at < first.completed_at) == 0


async def test_a_busy_worker_starts_a_high_priority_task_at_its_next_free_slot(
    make_runtime: Callable[..., Runtime], database: str, rabbitmq: Any
) -> None:
    prefetch = 4
    store = {"store_url": database}
    api = make_runtime(role="api", consume=False, **store)
    async with running(api):
        low_ids = await _submit_low(api, LOW, sleep=0.01)  # ~2.5 s of work at 4 at a time
    runtime = make_runtime(role="dev", prefetch=prefetch, **store)
    async with running(runtime):

        async def some_done() -> bool:
            return (await runtime.store.count_by_status()).get(TaskStatus.COMPLETED, 0) >= 50

        await eventually(some_done, timeout=30)
        high = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", priority=9))
        await eventually(lambda: _all_done(runtime, LOW + 1), timeout=90)
        lows = await _tasks(runtime, low_ids)
        (first,) = await _tasks(runtime, [high.task.id])
    assert first.started_at is not None
    waiting = [t for t in lows if t.started_at and t.started_at > first.created_at]
    assert len(waiting) >= LOW // 2, "the backlog must still be long when the high one arrives"
    # Only lows taking a slot while the high one was on its way to the worker may start
    # between its submission and its start; without priorities the whole backlog would.
    overtook = [t for t in waiting if t.started_at and t.started_at < first.started_at]
    assert len(overtook) <= 2 * prefetch, f"{len(overtook)} low-priority tasks started first"


async def _occupy_the_only_slot(runtime: Runtime, seconds: float) -> Submitted:
    """A priority-0 task that runs for ``seconds``, once it runs (the worker has one slot)."""
    slow = await runtime.submitter.submit(
        SubmitRequest(task_type="test_noop", parameters={"sleep": seconds}, priority=0)
    )

    async def slow_runs() -> bool:
        task = await runtime.store.get(slow.task.id)
        return task is not None and task.status is TaskStatus.RUNNING

    await eventually(slow_runs, timeout=10)
    return slow


async def test_when_a_slot_frees_the_highest_waiting_level_takes_it_whatever_came_first(
    make_runtime: Callable[..., Runtime], rabbitmq: Any
) -> None:
    runtime = make_runtime(role="dev", prefetch=1)
    async with running(runtime):
        slow = await _occupy_the_only_slot(runtime, 1.0)
        middle = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", priority=3))
        await asyncio.sleep(0.2)  # the priority-3 task is delivered and waits for the slot first
        top = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", priority=9))
        ids = [slow.task.id, middle.task.id, top.task.id]

        async def finished() -> bool:
            return all(t.status is TaskStatus.COMPLETED for t in await _tasks(runtime, ids))

        await eventually(finished, timeout=20)
        done = {t.id: t for t in await _tasks(runtime, ids)}
    assert done[middle.task.id].created_at < done[top.task.id].created_at
    top_start, middle_start = done[top.task.id].started_at, done[middle.task.id].started_at
    assert top_start is not None and middle_start is not None and top_start < middle_start


async def test_a_delivery_kept_waiting_too_long_or_at_shutdown_is_handed_back_unstarted(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskplatform.worker.consumer")
    runtime = make_runtime(role="dev", prefetch=1, priority_hold_seconds=0.3, shutdown_grace_seconds=5)
    async with running(runtime):
        slow = await _occupy_the_only_slot(runtime, 1.5)
        waiting = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", priority=5))
        await asyncio.sleep(1.0)  # several holds of 0.3 s: handed back, delivered again, ...
        task = await runtime.store.get(waiting.task.id)
        assert task is not None and task.status is TaskStatus.QUEUED
        handed_back = [r for r in caplog.records if "back to its queue unstarted" in r.getMessage()]
        assert len(handed_back) >= 2
        assert all("higher priorities kept it waiting" in r.getMessage() for r in handed_back)
        # Stopping hands back what still waits, at once (the slow task finishes within the grace).
        again = await runtime.submitter.submit(SubmitRequest(task_type="test_noop", priority=5))
        await asyncio.sleep(0.05)
    stopping = [r for r in caplog.records if "the worker is stopping" in r.getMessage()]
    # the delivery waiting at the gate when the worker stopped was handed back at once (the other
    # was never delivered: the level's consumer had no credit left)
    assert [r for r in stopping if waiting.task.id in r.getMessage()]
    queue = runtime.topology.queue_for("test_noop", 5) or ""
    assert await _depth(rabbitmq, queue) == 2  # both, back in their queue, never dead-lettered
    assert await _depth(rabbitmq, runtime.topology.dead_letter_queue) == 0
    async with running(make_runtime(role="api", consume=False)) as reader:
        tasks = {t.id: t.status for t in await _tasks(reader, [slow.task.id, waiting.task.id, again.task.id])}
    assert tasks == {
        slow.task.id: TaskStatus.COMPLETED,
        waiting.task.id: TaskStatus.QUEUED,
        again.task.id: TaskStatus.QUEUED,
    }


@pytest.mark.parametrize("levels", [1, 3])
async def test_fewer_levels_still_run_every_priority(
    make_runtime: Callable[..., Runtime], rabbitmq: Any, levels: int
) -> None:
    runtime = make_runtime(role="dev", priority_levels=levels)
    async with running(runtime):
        done = await runtime.submitter.submit_many(
            [SubmitRequest(task_type="test_noop", parameters={"value": p}, priority=p) for p in range(10)]
        )
        ids = [d.task.id for d in done]

        async def finished() -> bool:
            return all(t.status is TaskStatus.COMPLETED for t in await _tasks(runtime, ids))

        await eventually(finished, timeout=20)
    assert len(runtime.topology.work_queues[0].queues) == levels
