"""The state aggregator on a real store: idempotency by event id, roll-up, finishing parents."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from taskplatform.events import (
    EventBus,
    Published,
    TaskCompleted,
    TaskDeadLettered,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskWaiting,
)
from taskplatform.events.aggregator import StateAggregator
from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus, utcnow
from taskplatform.store.sql import SqlTaskStore

NODE = "node-1"


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[Published] = []

    async def observe(self, batch: Sequence[Published]) -> None:
        self.seen.extend(batch)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SqlTaskStore, EventBus, StateAggregator, Recorder]]:
    store = SqlTaskStore(f"sqlite+aiosqlite:///{tmp_path}/tasks.db")
    await store.open()
    bus = EventBus()
    aggregator = StateAggregator(store, bus, node_id=NODE).attach()
    recorder = Recorder()
    bus.add_observer(recorder)
    bus.start()
    try:
        yield store, bus, aggregator, recorder
    finally:
        await bus.close()
        await store.close()


async def _claim(store: SqlTaskStore, task: BackgroundTask) -> BackgroundTask:
    claimed = await store.try_set_running(
        task.id, attempt=task.retry_count, node_id=NODE, lease_until=utcnow() + timedelta(seconds=60)
    )
    assert claimed is not None
    return claimed


def _summary(task: BackgroundTask | None) -> dict[str, int]:
    assert task is not None and task.sub_task_status_summary is not None
    return {k: v for k, v in task.sub_task_status_summary.model_dump().items() if v}


async def test_the_same_event_applied_twice_changes_state_and_counts_once(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    store, bus, _aggregator, recorder = parts
    parent = BackgroundTask(task_type="test_fanout")
    child = BackgroundTask(task_type="test_noop", parent_task_id=parent.id)
    await store.create_many([parent, child])

    submitted = TaskSubmitted(task_id=child.id, task_type=child.task_type, parent_task_id=parent.id)
    for _ in range(2):
        assert (await bus.publish(submitted, child)).accepted
    assert _summary(await store.get(parent.id)) == {"total": 1, "queued": 1}

    claimed = await _claim(store, child)
    started = TaskStarted(task_id=child.id, task_type=child.task_type, node_id=NODE)
    for _ in range(2):
        await bus.publish(started, claimed)
    assert _summary(await store.get(parent.id)) == {"total": 1, "running": 1}

    completed = TaskCompleted(task_id=child.id, task_type=child.task_type, node_id=NODE, result={"value": 1})
    first = await bus.publish(completed, claimed)
    again = await bus.publish(completed, claimed)
    assert first.accepted and not first.duplicate
    assert again.accepted and again.duplicate  # recognised by its event id
    assert _summary(await store.get(parent.id)) == {"total": 1, "completed": 1}
    done = await store.get(child.id)
    assert (
        done is not None and done.status is TaskStatus.COMPLETED and done.last_event_id == completed.event_id
    )

    # Another event for a transition that already happened (a late duplicate) is rejected.
    late = TaskCompleted(task_id=child.id, task_type=child.task_type, node_id=NODE, result={"value": 2})
    rejected = await bus.publish(late, claimed)
    assert not rejected.accepted and rejected.task is not None and rejected.task.result == {"value": 1}
    await bus.drain()
    assert late.event_id not in {p.event.event_id for p in recorder.seen}


async def test_a_waiting_parent_finishes_when_its_last_child_does(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    store, bus, _aggregator, recorder = parts
    parent = BackgroundTask(task_type="test_fanout")
    kids = [BackgroundTask(task_type="test_noop", parent_task_id=parent.id) for _ in range(3)]
    await store.create_many([parent, *kids])
    running_parent = await _claim(store, parent)
    for kid in kids:
        await bus.publish(
            TaskSubmitted(task_id=kid.id, task_type=kid.task_type, parent_task_id=parent.id), kid
        )
    waiting = TaskWaiting(
        task_id=parent.id, task_type=parent.task_type, node_id=NODE, result={"n": 3}, children=3
    )
    delivery = await bus.publish(waiting, running_parent)
    assert delivery.accepted and delivery.task is not None and delivery.task.awaiting_children

    for i, kid in enumerate(kids):
        claimed = await _claim(store, kid)
        if i == 0:
            error = ErrorInfo(type="ValueError", message="no")
            common = {"task_id": kid.id, "task_type": kid.task_type, "node_id": NODE}
            assert (await bus.publish(TaskFailed(**common, error=error), claimed)).accepted
            assert (await bus.publish(TaskDeadLettered(**common, reason="non-retryable"), None)).accepted
        else:
            event = TaskCompleted(task_id=kid.id, task_type=kid.task_type, node_id=NODE, result={})
            assert (await bus.publish(event, claimed)).accepted
        current = await store.get(parent.id)
        assert current is not None
        assert current.status is (TaskStatus.RUNNING if i < 2 else TaskStatus.COMPLETED_WITH_ERRORS)

    final = await store.get(parent.id)
    assert _summary(final) == {"total": 3, "completed": 2, "dead_letter": 1}
    assert final is not None and final.result == {"n": 3} and final.completed_at is not None
    await bus.drain()
    finishes = [
        p for p in recorder.seen if isinstance(p.event, TaskCompleted) and p.event.task_id == parent.id
    ]
    assert len(finishes) == 1 and finishes[0].event.status is TaskStatus.COMPLETED_WITH_ERRORS
