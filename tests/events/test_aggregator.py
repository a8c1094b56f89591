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


async def test_a_parent_asked_to_stop_while_returning_is_cancelled_not_completed(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    store, bus, _aggregator, _recorder = parts
    parent = BackgroundTask(task_type="test_fanout")
    kid = BackgroundTask(task_type="test_noop", parent_task_id=parent.id)
    await store.create_many([parent, kid])
    running_parent = await _claim(store, parent)
    await bus.publish(TaskSubmitted(task_id=kid.id, task_type=kid.task_type, parent_task_id=parent.id), kid)
    assert await store.flag_cancel(parent.id) is not None  # the cancel request lands meanwhile
    waiting = TaskWaiting(task_id=parent.id, task_type=parent.task_type, node_id=NODE, children=1)
    assert (await bus.publish(waiting, running_parent)).accepted
    after, child = await store.get(parent.id), await store.get(kid.id)
    assert after is not None and after.status is TaskStatus.CANCELLED
    assert child is not None and child.status is TaskStatus.CANCELLED


async def test_a_child_whose_roll_up_was_lost_keeps_its_parent_waiting(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    store, bus, _aggregator, _recorder = parts
    parent = BackgroundTask(task_type="test_fanout")
    counted = BackgroundTask(task_type="test_noop", parent_task_id=parent.id)
    lost = BackgroundTask(task_type="test_noop", parent_task_id=parent.id)  # created, never announced
    await store.create_many([parent, counted, lost])
    running_parent = await _claim(store, parent)
    await bus.publish(
        TaskSubmitted(task_id=counted.id, task_type=counted.task_type, parent_task_id=parent.id), counted
    )
    waiting = TaskWaiting(task_id=parent.id, task_type=parent.task_type, node_id=NODE, children=2)
    await bus.publish(waiting, running_parent)
    claimed = await _claim(store, counted)
    done = TaskCompleted(task_id=counted.id, task_type=counted.task_type, node_id=NODE, result={})
    await bus.publish(done, claimed)
    after = await store.get(parent.id)
    assert after is not None and after.status is TaskStatus.RUNNING  # the lost child still runs
    assert _summary(after) == {"total": 2, "queued": 1, "completed": 1}


async def test_observers_see_a_parents_waiting_before_its_completion(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    store, bus, _aggregator, recorder = parts
    parent = BackgroundTask(task_type="test_fanout")
    kid = BackgroundTask(task_type="test_noop", parent_task_id=parent.id)
    await store.create_many([parent, kid])
    running_parent = await _claim(store, parent)
    await bus.publish(TaskSubmitted(task_id=kid.id, task_type=kid.task_type, parent_task_id=parent.id), kid)
    claimed = await _claim(store, kid)
    done = TaskCompleted(task_id=kid.id, task_type=kid.task_type, node_id=NODE, result={})
    await bus.publish(done, claimed)  # the child finishes first; the parent is still executing
    waiting = TaskWaiting(task_id=parent.id, task_type=parent.task_type, node_id=NODE, children=1)
    await bus.publish(waiting, running_parent)  # ... and finishes the parent at once
    await bus.drain()
    names = [p.event.name for p in recorder.seen if p.event.task_id == parent.id]
    assert names == ["waiting", "completed"]


async def test_a_key_reused_for_another_child_is_refused_and_a_retried_one_is_kept(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    from taskplatform.errors import InvalidInputError
    from taskplatform.submission import PublishedMarker, SubmitRequest, TaskSubmitter
    from taskplatform.tasks.registry import ExecutableRegistry
    from tests.support.executables import EXECUTABLES

    store, bus, aggregator, _recorder = parts

    class Offline:  # the broker is away: children stay in the outbox
        ready = False

        def count_failure(self, reason: str, n: int = 1) -> None:
            pass

    submitter = TaskSubmitter(
        store, ExecutableRegistry(EXECUTABLES), Offline(), PublishedMarker(store), bus, aggregator=aggregator
    )
    parent = BackgroundTask(task_type="test_fanout")
    await store.create(parent)

    def child(value: int) -> BackgroundTask:
        request = SubmitRequest(task_type="test_noop", parameters={"value": value})
        return submitter.prepare(
            request, task_id="00000000-0000-4000-8000-000000000001", parent_task_id=parent.id
        )

    assert len(await submitter.submit_children([child(1)])) == 1
    assert await submitter.submit_children([child(1)]) == []  # a retried parent: kept, not duplicated
    with pytest.raises(InvalidInputError, match="exists with another type or parameters"):
        await submitter.submit_children([child(2)])
    assert _summary(await store.get(parent.id)) == {"total": 1, "queued": 1}


async def test_the_reconcile_sweep_finishes_a_parent_whose_last_roll_up_was_lost(
    parts: tuple[SqlTaskStore, EventBus, StateAggregator, Recorder],
) -> None:
    store, bus, aggregator, _recorder = parts
    parent = BackgroundTask(task_type="test_fanout")
    kid = BackgroundTask(task_type="test_noop", parent_task_id=parent.id)
    await store.create_many([parent, kid])
    running_parent = await _claim(store, parent)
    await bus.publish(TaskSubmitted(task_id=kid.id, task_type=kid.task_type, parent_task_id=parent.id), kid)
    waiting = TaskWaiting(task_id=parent.id, task_type=parent.task_type, node_id=NODE, children=1)
    await bus.publish(waiting, running_parent)
    claimed = await _claim(store, kid)
    # The child completes, but the process dies before its roll-up: write it behind the bus.
    assert await store.record_completion(kid.id, node_id=NODE, attempt=0, result={}) is not None
    assert (await store.get(parent.id)).status is TaskStatus.RUNNING  # type: ignore[union-attr]
    assert claimed.status is TaskStatus.RUNNING
    assert await aggregator.reconcile(idle_for=0) == 1
    after = await store.get(parent.id)
    assert after is not None and after.status is TaskStatus.COMPLETED
    assert _summary(after) == {"total": 1, "completed": 1}
