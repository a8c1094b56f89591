"""The attempt history written by the state aggregator: which events end an attempt and what
each record says; a record is written once however often its event is published."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from taskplatform.errors import StoreError
from taskplatform.events import (
    EventBus,
    TaskCancelled,
    TaskCompleted,
    TaskDeadLettered,
    TaskFailed,
    TaskProgress,
    TaskRequeued,
    TaskRetrying,
    TaskStarted,
    TaskWaiting,
)
from taskplatform.events.aggregator import StateAggregator
from taskplatform.events.attempts import attempt_record
from taskplatform.events.models import Origin, TaskEvent
from taskplatform.metrics.registry import Metrics
from taskplatform.models import BackgroundTask, ErrorInfo, TaskStatus, utcnow
from taskplatform.models.attempt import AttemptOutcome
from taskplatform.store.memory import MemoryTaskStore

NODE = "node-1"
HOST = "host-a"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def parts(metrics: Metrics) -> AsyncIterator[tuple[MemoryTaskStore, EventBus]]:
    store = MemoryTaskStore()
    await store.open()
    bus = EventBus()
    StateAggregator(store, bus, node_id=NODE, host=HOST, metrics=metrics).attach()
    bus.start()
    try:
        yield store, bus
    finally:
        await bus.close()
        await store.close()


async def _running(
    store: MemoryTaskStore, *, attempt: int = 0, node: str = NODE, lease: float = 60
) -> BackgroundTask:
    task = BackgroundTask(task_type="t", parameters={}, retry_count=attempt)
    await store.create(task)
    claimed = await store.try_set_running(
        task.id, attempt=attempt, node_id=node, lease_until=store.now() + timedelta(seconds=lease)
    )
    assert claimed is not None
    return claimed


def _error(kind: str = "Transient", message: str = "flaky") -> ErrorInfo:
    return ErrorInfo(type=kind, message=message)


async def test_a_retried_then_completed_task_has_one_record_per_attempt(parts: Any) -> None:
    store, bus = parts
    task = await _running(store)
    soon = utcnow() + timedelta(seconds=5)
    retry = TaskRetrying(
        task_id=task.id, task_type="t", node_id=NODE, error=_error(), delay_seconds=5, next_attempt_at=soon
    )
    assert (await bus.publish(retry, task)).accepted
    again = await store.try_set_running(
        task.id, attempt=1, node_id=NODE, lease_until=store.now() + timedelta(seconds=60)
    )
    assert again is not None
    done = TaskCompleted(task_id=task.id, task_type="t", node_id=NODE, attempt=1, result={"ok": True})
    assert (await bus.publish(done, again)).accepted
    first, second = await store.list_attempts(task.id)
    assert (first.attempt, first.outcome, first.retried) == (0, AttemptOutcome.FAILED, True)
    assert (first.error_type, first.error_message) == ("Transient", "flaky")
    assert (first.node_id, first.host, first.generation) == (NODE, HOST, 0)
    assert first.started_at == task.started_at and first.ended_at == retry.occurred_at
    assert first.duration_seconds is not None and first.duration_seconds >= 0
    assert (second.attempt, second.outcome, second.error_type, second.retried) == (
        1,
        AttemptOutcome.COMPLETED,
        None,
        False,
    )
    assert second.started_at == again.started_at and first.id == retry.event_id


async def test_an_event_published_again_writes_its_record_once(parts: Any) -> None:
    store, bus = parts
    task = await _running(store)
    failed = TaskFailed(
        task_id=task.id, task_type="t", node_id=NODE, error=_error("TimeoutError", "timed out")
    )
    assert (await bus.publish(failed, task)).accepted
    again = await bus.publish(failed, task)  # the producer retried after a fault
    assert again.duplicate
    [record] = await store.list_attempts(task.id)
    assert record.outcome is AttemptOutcome.TIMED_OUT and not record.retried


async def test_a_refused_event_writes_no_record(parts: Any) -> None:
    store, bus = parts
    task = await _running(store, node="node-2")
    stale = TaskCompleted(task_id=task.id, task_type="t", node_id=NODE, result={})  # not the owner
    assert not (await bus.publish(stale, task)).accepted
    assert await store.list_attempts(task.id) == []


async def test_a_lost_attempt_names_the_node_that_ran_it_not_the_reaper(parts: Any) -> None:
    store, bus = parts
    task = await _running(store, node="vanished", lease=-5)
    lost = TaskFailed(
        task_id=task.id,
        task_type="t",
        origin=Origin.REAPER,
        node_id=NODE,
        error=_error("WorkerLost", "its worker vanished"),
        lapsed_before=store.now(),
    )
    assert (await bus.publish(lost, task)).accepted
    [record] = await store.list_attempts(task.id)
    assert (record.outcome, record.node_id, record.host) == (AttemptOutcome.LOST, "vanished", None)
    assert record.error_type == "WorkerLost"


def _task(**fields: Any) -> BackgroundTask:
    now = utcnow()
    values: dict[str, Any] = {
        "task_type": "t",
        "parameters": {},
        "status": TaskStatus.RUNNING,
        "started_at": now,
    }
    values.update(fields)
    return BackgroundTask(execution_node_id=NODE, **values)


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        (
            TaskWaiting(task_id="x", task_type="t", node_id=NODE, children=2),
            AttemptOutcome.WAITING_FOR_CHILDREN,
        ),
        (TaskCancelled(task_id="x", task_type="t", node_id=NODE), AttemptOutcome.CANCELLED),
        (TaskRequeued(task_id="x", task_type="t", node_id=NODE), AttemptOutcome.GIVEN_BACK),
        (TaskCancelled(task_id="x", task_type="t", origin=Origin.API), None),  # a waiting task
        (TaskCompleted(task_id="x", task_type="t", origin=Origin.CHILDREN, expected_version=3), None),
        (TaskStarted(task_id="x", task_type="t", node_id=NODE), None),
        (TaskProgress(task_id="x", task_type="t", node_id=NODE, progress={}), None),
        (
            TaskDeadLettered(task_id="x", task_type="t", reason="attempts-exhausted"),
            None,
        ),  # after its TaskFailed
    ],
)
def test_which_events_end_an_attempt(event: TaskEvent, outcome: AttemptOutcome | None) -> None:
    task = _task(id="x", replays=2)
    record = attempt_record(event, task, task, node_id=NODE, host=HOST)
    if outcome is None:
        assert record is None
    else:
        assert record is not None and record.outcome is outcome and record.generation == 2


def test_an_attempt_that_ran_elsewhere_names_no_host_and_texts_are_made_storable() -> None:
    task = _task(id="x", started_at=None)
    event = TaskFailed(task_id="x", task_type="t", node_id="node-9", error=_error("E\x00", "m" * 3000))
    record = attempt_record(event, None, task, node_id=NODE, host=HOST)
    assert record is not None and record.node_id == "node-9" and record.host is None
    assert record.started_at is None and record.duration_seconds is None
    assert (
        record.error_type == "E\\u0000"
        and record.error_message is not None
        and len(record.error_message) == 2000
    )


async def test_a_record_the_store_refuses_is_counted_and_the_event_still_takes_effect(
    parts: Any, metrics: Metrics, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, bus = parts
    task = await _running(store)

    async def refuse(records: object) -> None:
        raise StoreError("task_attempts: no such table (a migration not applied)")

    monkeypatch.setattr(store, "add_attempts", refuse)
    failed = TaskFailed(task_id=task.id, task_type="t", node_id=NODE, error=_error("Permanent", "no"))
    delivery = await bus.publish(failed, task)
    assert delivery.accepted and delivery.task is not None and delivery.task.status is TaskStatus.FAILED
    aggregator = next(s for s in bus._critical if isinstance(s, StateAggregator))  # noqa: SLF001
    assert aggregator.attempts_unrecorded == 1
    assert metrics.registry.get_sample_value("taskplatform_history_unstored_total", {"kind": "attempt"}) == 1
    assert metrics.registry.get_sample_value("taskplatform_history_unstored_total", {"kind": "audit"}) == 0
    assert "attempt 0's record not stored" in caplog.text
    # a completion carries its record to the store; the store's refusal leaves the completion
    other = await _running(store)
    done = await bus.publish(TaskCompleted(task_id=other.id, task_type="t", node_id=NODE, result={}), other)
    assert done.accepted and done.task is not None and done.task.status is TaskStatus.COMPLETED
    assert "the records of 1 completed attempt(s) were not stored" in caplog.text
